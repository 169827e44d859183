#!/usr/bin/env bash
# Builds the C core with ASan+UBSan, and separately with TSan, and runs the
# core stress driver (tests/c/stress_core.c) under each. Any sanitizer report
# fails the run (non-zero exit). Usage: ci/sanitize.sh [asan|tsan|all]
set -euo pipefail
cd "$(dirname "$0")/.."

which="${1:-all}"
out="build/sanitize"
mkdir -p "$out"
CC="${CC:-cc}"
common=(-std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -O1 -g -fno-omit-frame-pointer
        -Isrc/fastecho/csrc src/fastecho/csrc/*.c tests/c/stress_core.c -lpthread)

run_asan() {
    echo "== ASan + UBSan"
    "$CC" "${common[@]}" -fsanitize=address,undefined -fno-sanitize-recover=all -o "$out/stress-asan"
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:halt_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        timeout 300 "$out/stress-asan"
}

run_tsan() {
    echo "== TSan"
    "$CC" "${common[@]}" -fsanitize=thread -o "$out/stress-tsan"
    # setarch -R: TSan's shadow memory needs a predictable address layout on
    # kernels with high mmap randomization.
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        timeout 600 setarch "$(uname -m)" -R "$out/stress-tsan"
}

case "$which" in
    asan) run_asan ;;
    tsan) run_tsan ;;
    all) run_asan; run_tsan ;;
    *) echo "usage: $0 [asan|tsan|all]" >&2; exit 2 ;;
esac
echo "sanitizers: clean"
