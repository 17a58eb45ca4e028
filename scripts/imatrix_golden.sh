#!/bin/sh
# Regenerates fixtures/runtime/tiny-llama.imatrix: llama-imatrix's GGUF
# imatrix for fixtures/tiny-llama-f32.gguf on fixtures/runtime/tiny.txt,
# -c 32, 4 chunks, one thread, with --process-output. The Rust test
# (tools/gguftool/tests/calibrate.rs) runs `gguftool imatrix` with the same
# settings and holds every entry's cosine similarity to llama.cpp's above 0.999.
#
# usage: scripts/imatrix_golden.sh [LLAMA_CPP_BIN_DIR]
#   (default /work/ref/llama.cpp/build/bin; llama.cpp commit 0c1e570)
set -eu
BIN=${1:-/work/ref/llama.cpp/build/bin}
HERE=$(cd "$(dirname "$0")/.." && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# llama.cpp rejects the fixture's nested-array test key; drop it.
python3 "$HERE/scripts/gguf_drop_key.py" "$HERE/fixtures/tiny-llama-f32.gguf" "$TMP/tiny.gguf" gguftool.fixture.nested
LD_LIBRARY_PATH="$BIN" "$BIN/llama-imatrix" -m "$TMP/tiny.gguf" -f "$HERE/fixtures/runtime/tiny.txt" \
  -c 32 -b 32 --chunks 4 -t 1 --process-output -o "$HERE/fixtures/runtime/tiny-llama.imatrix" \
  > "$TMP/log" 2>&1 || { cat "$TMP/log"; exit 1; }
tail -n 3 "$TMP/log"
