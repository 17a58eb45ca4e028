#!/usr/bin/env python3
"""Reference bytes for gguftool's Q4_1/Q5_0/Q5_1/IQ4_NL/Q2_K..Q6_K encoders.

  ggml_gguf_py_check.py golden OUT_DIR
      writes OUT_DIR/encode-<type>.gguf per type: `input` (F32 rows of 512),
      `quantized` (reference encoding without importance), `importance`
      (F32, one value per element) and `quantized_imatrix` (ggml's
      imatrix-aware quantize_<type>(..., quant_weights)).
  ggml_gguf_py_check.py check SOURCE_F32.gguf QUANTIZED.gguf
      re-encodes every tensor of those types in QUANTIZED from the
      same-named F32 tensor of SOURCE and compares bytes; exit 1 on any
      difference.

References: gguf-py (`gguf.quants.quantize`) for Q4_1, Q5_0, Q5_1 (checked
against ggml too); ggml's `quantize_row_<type>_ref` otherwise, and
`quantize_<type>` with quant_weights for the weighted encodings, called
through ctypes from libggml-base.so (env GGML_BASE_LIB, default
/work/ref/llama.cpp/build/bin/libggml-base.so). Needs `pip install
gguf==0.19.0 numpy`. The Rust tests read only the files written here.
"""
import ctypes
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import quantize as py_quantize

LIB = ctypes.CDLL(os.environ.get("GGML_BASE_LIB", "/work/ref/llama.cpp/build/bin/libggml-base.so"))
TYPES = {T.Q4_1: "q4_1", T.Q5_0: "q5_0", T.Q5_1: "q5_1", T.IQ4_NL: "iq4_nl", T.Q2_K: "q2_K",
         T.Q3_K: "q3_K", T.Q4_K: "q4_K", T.Q5_K: "q5_K", T.Q6_K: "q6_K"}
PY = {T.Q4_1, T.Q5_0, T.Q5_1}
F32P = ctypes.POINTER(ctypes.c_float)


def ggml_ref(x: np.ndarray, qtype) -> bytes:
    """quantize_row_<type>_ref over the whole array (rows of whole blocks)."""
    x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(x.size // bs * ts, dtype=np.uint8)
    fn = getattr(LIB, f"quantize_row_{TYPES[qtype]}_ref")
    fn.argtypes = [F32P, ctypes.c_void_p, ctypes.c_int64]
    fn(x.ctypes.data_as(F32P), out.ctypes.data, x.size)
    return out.tobytes()


def ggml_weighted(x: np.ndarray, qw: np.ndarray, qtype) -> bytes:
    """quantize_<type>(rows, quant_weights): qw has one value per column."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    qw = np.ascontiguousarray(qw, dtype=np.float32)
    nrow, n_per_row = x.shape
    bs, ts = gguf.GGML_QUANT_SIZES[qtype]
    out = np.zeros(x.size // bs * ts, dtype=np.uint8)
    fn = getattr(LIB, f"quantize_{TYPES[qtype]}")
    fn.restype = ctypes.c_size_t
    fn.argtypes = [F32P, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, F32P]
    fn(x.ctypes.data_as(F32P), out.ctypes.data, nrow, n_per_row, qw.ctypes.data_as(F32P))
    return out.tobytes()


def reference(x: np.ndarray, qtype) -> bytes:
    ref = ggml_ref(x, qtype)
    if qtype in PY:
        py = py_quantize(x.reshape(1, -1), qtype).tobytes()
        if py != ref:
            raise SystemExit(f"{qtype.name}: gguf-py and ggml reference disagree")
    return ref


def inputs(rng, qtype, rows=8, n=512):
    """Normal data, a zero row, ramps, tiny values, quarter-step ties,
    outliers, all-negative and large values (as fixtures/generate.py)."""
    x = rng.standard_normal((rows, n)).astype(np.float32)
    # ggml's IQ4_NL leaves an all-zero block's levels unset; keep it out.
    x[0] = 0.0 if qtype != T.IQ4_NL else 1e-3
    x[1] = np.linspace(-1, 1, n, dtype=np.float32)
    x[2] *= 1e-6
    x[3] = np.round(x[3] * 4) / 4
    x[4, ::7] *= 50.0
    x[5] = -np.abs(x[5])
    x[6] *= 3e2
    return x


def golden(out_dir: str) -> int:
    rng = np.random.default_rng(20261201)
    os.makedirs(out_dir, exist_ok=True)
    for qtype, name in TYPES.items():
        x = inputs(rng, qtype)
        # per-column importance, strongly skewed (as an imatrix is)
        qw = (rng.exponential(1.0, x.shape[1]) ** 3).astype(np.float32)
        if qtype in (T.Q4_1, T.Q5_0, T.Q5_1):
            # ggml's legacy weighted quantizers take the variance term over
            # the whole row; gguftool's over the block: compare on rows of 32.
            xw = x.reshape(-1, 32)
            qwe = np.tile(qw[:32], x.size // 32)
            weighted = ggml_weighted(xw, qw[:32], qtype)
        else:
            qwe = np.tile(qw, x.shape[0])
            weighted = ggml_weighted(x, qw, qtype)
        q = reference(x, qtype)
        path = os.path.join(out_dir, f"encode-{name.lower()}.gguf")
        w = gguf.GGUFWriter(path, "gguftool-golden")
        w.add_string("gguftool.golden.type", qtype.name)
        w.add_tensor("input", x.reshape(-1))
        w.add_tensor("importance", qwe.astype(np.float32))
        w.add_tensor("quantized", np.frombuffer(q, dtype=np.uint8).reshape(1, -1), raw_dtype=qtype)
        w.add_tensor("quantized_imatrix", np.frombuffer(weighted, dtype=np.uint8).reshape(1, -1),
                     raw_dtype=qtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        print(f"wrote {path}")
    return 0


def check(src_path: str, q_path: str) -> int:
    src, qf = GGUFReader(src_path), GGUFReader(q_path)
    srcs = {t.name: t for t in src.tensors}
    per_type = {}
    differ = 0
    for t in qf.tensors:
        if t.tensor_type not in TYPES:
            continue
        s = srcs[t.name]
        if s.tensor_type != T.F32:
            print(f"{t.name}: source is {s.tensor_type.name}, need F32", file=sys.stderr)
            return 2
        rows = np.asarray(s.data, dtype=np.float32).reshape(-1, int(s.shape[0]))
        ref = reference(rows, t.tensor_type)
        ours = np.asarray(t.data).tobytes()
        n, b = per_type.get(t.tensor_type.name, (0, 0))
        per_type[t.tensor_type.name] = (n + 1, b + len(ours))
        if ref != ours:
            differ += 1
            first = next(i for i, (a, c) in enumerate(zip(ref, ours)) if a != c)
            print(f"{t.name} ({t.tensor_type.name}): bytes differ from byte {first}", file=sys.stderr)
    for k, (n, b) in sorted(per_type.items()):
        ref = "gguf-py and ggml" if T[k] in PY else "ggml"
        print(f"{k}: {n} tensors, {b} bytes compared with {ref}")
    print(f"{differ} differ")
    return 1 if differ or not per_type else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "golden":
        sys.exit(golden(sys.argv[2]))
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
