#!/usr/bin/env bash
# Fuzzes the pure parsers with libFuzzer under ASan+UBSan, each for a bounded
# time, starting from its committed seed corpus:
#   line   line mode's framing (tests/fuzz/fuzz_line.c), checked against a
#          whole-input reference model;
#   proxy  the PROXY protocol v1/v2 header parser (tests/fuzz/fuzz_proxy.c),
#          checked against its contract (prefixes, finality, built headers).
# Exits non-zero on any crash, sanitizer report or invariant violation.
# Usage: ci/fuzz.sh [SECONDS]   (per target; default 60; needs clang: apt-get install clang)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
out="build/fuzz"
if ! command -v clang >/dev/null; then
    echo "ci/fuzz.sh: clang is required (apt-get install clang)" >&2
    exit 2
fi
csrc=src/fastecho/csrc

# name, then the core sources it needs
fuzz_one() {
    local name="$1"
    shift
    echo "== fuzz_$name (${seconds}s)"
    mkdir -p "$out/corpus/$name"
    clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
        -I"$csrc" "$@" "tests/fuzz/fuzz_$name.c" -o "$out/fuzz_$name"
    # New inputs go to build/fuzz/corpus/NAME; the committed seeds are only read.
    "$out/fuzz_$name" -max_total_time="$seconds" -timeout=5 -print_final_stats=1 \
        -artifact_prefix="$out/$name-" "$out/corpus/$name" "tests/fuzz/corpus/$name"
}

fuzz_one line "$csrc/fe_line.c" "$csrc/fe_buf.c"
fuzz_one proxy "$csrc/fe_proxy.c"
echo "fuzz: no crash in ${seconds}s per target"
