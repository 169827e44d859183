#!/usr/bin/env bash
# Builds the C core and its test programs (tests/c, through CMake) with
# ASan+UBSan, and separately with TSan, and runs them under each with ctest.
# Any sanitizer report fails the run (non-zero exit).
# Usage: ci/sanitize.sh [asan|tsan|all]
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-all}"
# cmake comes with this kind of machine (pip); a bare one gets it the same way.
command -v cmake >/dev/null || python3 -m pip install -q cmake

# build_and_test NAME SANITIZERS CFLAGS [LAUNCHER...]: configure
# build/sanitize/NAME with only the C targets, build, and run ctest (under
# LAUNCHER, if given).
build_and_test() {
    local name="$1" sanitizers="$2" cflags="$3"
    shift 3
    local dir="build/sanitize/$name"
    echo "== $name ($sanitizers)"
    cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS="-Werror $cflags" \
        -DFASTECHO_PYTHON=OFF -DFASTECHO_TESTS=ON -DFASTECHO_SANITIZE="$sanitizers" >/dev/null
    cmake --build "$dir" --parallel 2 >/dev/null
    "$@" ctest --test-dir "$dir" --output-on-failure
}

run_asan() {
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        build_and_test asan address,undefined -fno-sanitize-recover=all
}

run_tsan() {
    # setarch -R: TSan's shadow memory needs a predictable address layout on
    # kernels with high mmap randomization.
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        build_and_test tsan thread "" setarch "$(uname -m)" -R
}

case "$which" in
    asan) run_asan ;;
    tsan) run_tsan ;;
    all) run_asan; run_tsan ;;
    *) echo "usage: $0 [asan|tsan|all]" >&2; exit 2 ;;
esac
echo "sanitizers: clean"
