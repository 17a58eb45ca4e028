#!/bin/sh
# Regenerates fixtures/runtime/tiny-llama.logits: llama.cpp's own logits
# file (llama-perplexity --kl-divergence-base) for fixtures/tiny-llama-f32.gguf
# on fixtures/runtime/tiny.txt, -c 32, 4 chunks, one thread. The Rust tests
# (core/eval/tests/golden.rs) run our forward on the tokens stored in that
# file and hold the KL divergence to llama.cpp's distributions near zero.
#
# usage: scripts/runtime_golden.sh [LLAMA_CPP_BIN_DIR]
#   (default /work/ref/llama.cpp/build/bin; llama.cpp commit 0c1e570)
set -eu
BIN=${1:-/work/ref/llama.cpp/build/bin}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# llama.cpp rejects the fixture's nested-array test key; drop it.
python3 "$HERE/scripts/gguf_drop_key.py" "$HERE/fixtures/tiny-llama-f32.gguf" "$TMP/tiny.gguf" gguftool.fixture.nested
LD_LIBRARY_PATH="$BIN" "$BIN/llama-perplexity" -m "$TMP/tiny.gguf" -f "$HERE/fixtures/runtime/tiny.txt" \
  -c 32 -b 32 --chunks 4 -t 1 -nr --kl-divergence-base "$HERE/fixtures/runtime/tiny-llama.logits" \
  > "$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
grep "Final estimate" "$TMP/log"
