#!/usr/bin/env bash
# Fuzzes line mode's framing (tests/fuzz/fuzz_line.c) with libFuzzer under
# ASan+UBSan, starting from the committed seed corpus, for a bounded time.
# Exits non-zero on any crash, sanitizer report or reference mismatch.
# Usage: ci/fuzz.sh [SECONDS]   (default 60; needs clang: apt-get install clang)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
out="build/fuzz"
mkdir -p "$out/corpus"
if ! command -v clang >/dev/null; then
    echo "ci/fuzz.sh: clang is required (apt-get install clang)" >&2
    exit 2
fi
clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Isrc/fastecho/csrc src/fastecho/csrc/fe_line.c src/fastecho/csrc/fe_buf.c \
    tests/fuzz/fuzz_line.c -o "$out/fuzz_line"
# New inputs go to build/fuzz/corpus; the committed seeds are only read.
"$out/fuzz_line" -max_total_time="$seconds" -timeout=5 -print_final_stats=1 \
    -artifact_prefix="$out/" "$out/corpus" tests/fuzz/corpus/line
echo "fuzz: no crash in ${seconds}s"
