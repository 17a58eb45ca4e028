#!/usr/bin/env python3
"""Compare gguftool's TQ1_0/TQ2_0 tensors with gguf-py's quantizer.

usage: tq_gguf_py_check.py SOURCE_F32.gguf QUANTIZED.gguf

For every TQ1_0/TQ2_0 tensor of QUANTIZED, quantizes the same-named F32
tensor of SOURCE with gguf-py (`gguf.quants.quantize`) and compares bytes.
Exit status 1 on any difference. Needs `pip install gguf numpy`.
"""
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType
from gguf.quants import quantize

TQ = {GGMLQuantizationType.TQ1_0, GGMLQuantizationType.TQ2_0}


def main() -> int:
    src, qf = GGUFReader(sys.argv[1]), GGUFReader(sys.argv[2])
    srcs = {t.name: t for t in src.tensors}
    checked = differ = 0
    total_bytes = 0
    for t in qf.tensors:
        if t.tensor_type not in TQ:
            continue
        s = srcs[t.name]
        if s.tensor_type != GGMLQuantizationType.F32:
            print(f"{t.name}: source is {s.tensor_type.name}, need F32", file=sys.stderr)
            return 2
        rows = np.asarray(s.data, dtype=np.float32).reshape(-1, int(s.shape[0]))
        ref = quantize(rows, t.tensor_type).tobytes()
        ours = np.asarray(t.data).tobytes()
        checked += 1
        total_bytes += len(ours)
        if ref != ours:
            differ += 1
            print(f"{t.name} ({t.tensor_type.name}): bytes differ", file=sys.stderr)
    print(f"{checked} TQ tensors, {total_bytes} bytes compared, {differ} differ")
    return 1 if differ or not checked else 0


if __name__ == "__main__":
    sys.exit(main())
