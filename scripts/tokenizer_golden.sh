#!/usr/bin/env bash
# Golden token ids from llama.cpp's llama-tokenize (commit 0c1e570, built by
# ../shared/reference/setup.sh) for the tokenizer tests.
#
# Usage: scripts/tokenizer_golden.sh [REF_DIR]   (default: $REF or $HOME/reference)
#   REF_DIR/llama.cpp/build/bin/llama-tokenize
#   REF_DIR/models/{SmolLM2-135M-Instruct.Q4_1.gguf, gemma-3-270m-q4_k_m.gguf}
#   REF_DIR/text/{sotu_40k.txt, brown_100k.txt}
#
# Writes, for every text fixtures/tokenizer/texts/NAME.txt and MODEL in {smollm2, gemma3}:
#   fixtures/tokenizer/MODEL_NAME.ids        defaults (parse special tokens, BOS per the model)
#   fixtures/tokenizer/MODEL_NAME.nps.ids    --no-parse-special
#   fixtures/tokenizer/MODEL_NAME.nobos.ids  --no-bos
# and for the full SOTU 40k and Brown 100k texts (too large to commit):
#   target/tokenizer-golden/MODEL_{sotu_40k,brown_100k}{,.nps}.ids
# Texts are passed verbatim (-f with --no-escape); output is llama-tokenize --ids.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
ref=${1:-${REF:-$HOME/reference}}
bin=$ref/llama.cpp/build/bin/llama-tokenize
[ -x "$bin" ] || { echo "llama-tokenize not found at $bin" >&2; exit 1; }
declare -A models=(
  [smollm2]=$ref/models/SmolLM2-135M-Instruct.Q4_1.gguf
  [gemma3]=$ref/models/gemma-3-270m-q4_k_m.gguf
)
out=$root/fixtures/tokenizer
big=$root/target/tokenizer-golden
mkdir -p "$out" "$big"

tok() { "$bin" -m "$1" -f "$2" --ids --log-disable --no-escape "${@:3}" 2>/dev/null; }

for m in "${!models[@]}"; do
  gguf=${models[$m]}
  [ -f "$gguf" ] || { echo "model missing: $gguf" >&2; exit 1; }
  for t in "$out"/texts/*.txt; do
    name=$(basename "$t" .txt)
    tok "$gguf" "$t" > "$out/${m}_$name.ids"
    tok "$gguf" "$t" --no-parse-special > "$out/${m}_$name.nps.ids"
    tok "$gguf" "$t" --no-bos > "$out/${m}_$name.nobos.ids"
  done
  for name in sotu_40k brown_100k; do
    cp "$ref/text/$name.txt" "$big/$name.txt"
    tok "$gguf" "$big/$name.txt" > "$big/${m}_$name.ids"
    tok "$gguf" "$big/$name.txt" --no-parse-special > "$big/${m}_$name.nps.ids"
  done
done
echo "golden ids written to $out and $big"
