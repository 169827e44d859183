#!/usr/bin/env bash
# Fuzzes the pure parsers with libFuzzer under ASan+UBSan, each for a bounded
# time, starting from its committed seed corpus (the targets are CMake
# targets in tests/c, run through ctest):
#   fuzz_line   line mode's framing (tests/fuzz/fuzz_line.c), checked against
#               a whole-input reference model;
#   fuzz_proxy  the PROXY protocol v1/v2 header parser (tests/fuzz/fuzz_proxy.c),
#               checked against its contract (prefixes, finality, built headers);
#   fuzz_ws_frame  the WebSocket frame codec (tests/fuzz/fuzz_ws_frame.c), fed
#               in pieces and checked against a whole-input reference decoder
#               (output, close codes, counts, the output bound, held memory);
#   fuzz_ws_http   the WebSocket handshake parser and its answers
#               (tests/fuzz/fuzz_ws_http.c): split invariance, finality and
#               invariants of each answer.
# Exits non-zero on any crash, sanitizer report or invariant violation; new
# inputs and crash artifacts go to build/fuzz/tests/c.
# Usage: ci/fuzz.sh [SECONDS]   (per target; default 60; needs clang: apt-get install clang)
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! command -v clang >/dev/null; then
    echo "ci/fuzz.sh: clang is required (apt-get install clang)" >&2
    exit 2
fi
dir=build/fuzz
cmake -S . -B "$dir" -DCMAKE_C_COMPILER=clang -DFASTECHO_PYTHON=OFF -DFASTECHO_FUZZ=ON \
    -DFASTECHO_FUZZ_SECONDS="$seconds" >/dev/null
cmake --build "$dir" --parallel 2 >/dev/null
ctest --test-dir "$dir" -L fuzz --output-on-failure
echo "fuzz: no crash in ${seconds}s per target"
