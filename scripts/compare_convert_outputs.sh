#!/usr/bin/env bash
# Byte-identical check of `convert` between two gguftool binaries: converts
# each MODEL with every encodable format (and mixed at 3 bpw), unsealed, with
# both binaries, and compares SHA-256 of the outputs.
#   scripts/compare_convert_outputs.sh OLD_BIN NEW_BIN MODEL [IMATRIX] [MODEL2 [IMATRIX2]]...
# Pass "-" for no imatrix. Prints one line per (model, format) and exits 1
# on any difference.
set -euo pipefail
old=$1 new=$2; shift 2
formats="f32 f16 bf16 q4_0 q8_0 tq1_0 tq2_0 piq3 piq2 q2_quip q2_quip_lite ternary ternary_mse"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
status=0
while [ $# -gt 0 ]; do
  model=$1; im=${2:--}; shift; [ $# -gt 0 ] && shift
  imargs=(); [ "$im" != "-" ] && imargs=(--imatrix "$im")
  for f in $formats mixed; do
    extra=(--format "$f"); [ "$f" = mixed ] && extra=(--format mixed --bpw 3)
    "$old" convert "$model" -o "$tmp/old.gguf" "${extra[@]}" "${imargs[@]}" --no-seal --force >/dev/null 2>"$tmp/old.err" || { echo "old failed: $f: $(tail -1 "$tmp/old.err")"; continue; }
    "$new" convert "$model" -o "$tmp/new.gguf" "${extra[@]}" "${imargs[@]}" --no-seal --force >/dev/null 2>"$tmp/new.err" || { echo "new failed: $f: $(tail -1 "$tmp/new.err")"; status=1; continue; }
    a=$(sha256sum < "$tmp/old.gguf" | cut -c1-16); b=$(sha256sum < "$tmp/new.gguf" | cut -c1-16)
    if [ "$a" = "$b" ]; then echo "same      $(basename "$model") $f $a"; else echo "DIFFERENT $(basename "$model") $f $a $b"; status=1; fi
  done
done
exit $status
