#!/usr/bin/env python3
"""Copies a GGUF v3 file without one metadata key (standard library only).

llama.cpp cannot load fixtures/tiny-llama-f32.gguf as is: it rejects the
nested-array key `gguftool.fixture.nested` (GGUF type 9 inside an array).
This writes a copy without it; everything else (tensor infos, alignment,
data) is kept, with the tensor data re-aligned after the shorter header.

usage: gguf_drop_key.py IN OUT KEY
"""
import struct
import sys

SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def skip_value(b, o, t):
    if t in SIZES:
        return o + SIZES[t]
    if t == 8:
        (n,) = struct.unpack_from("<Q", b, o)
        return o + 8 + n
    if t == 9:
        et, n = struct.unpack_from("<IQ", b, o)
        o += 12
        for _ in range(n):
            o = skip_value(b, o, et)
        return o
    raise ValueError(f"unknown GGUF value type {t}")


def main():
    src, dst, drop = sys.argv[1], sys.argv[2], sys.argv[3]
    b = open(src, "rb").read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", b, 0)
    assert magic == b"GGUF" and version == 3, "GGUF v3 only"
    o = 24
    kvs = []
    alignment = 32
    for _ in range(n_kv):
        start = o
        (klen,) = struct.unpack_from("<Q", b, o)
        key = b[o + 8 : o + 8 + klen].decode()
        o += 8 + klen
        (t,) = struct.unpack_from("<I", b, o)
        vstart = o + 4
        o = skip_value(b, vstart, t)
        if key == "general.alignment":
            (alignment,) = struct.unpack_from("<I", b, vstart)
        if key != drop:
            kvs.append(b[start:o])
    infos_start = o
    for _ in range(n_tensors):
        (nlen,) = struct.unpack_from("<Q", b, o)
        o += 8 + nlen
        (nd,) = struct.unpack_from("<I", b, o)
        o += 4 + 8 * nd + 4 + 8
    infos = b[infos_start:o]
    data_start = (o + alignment - 1) // alignment * alignment
    head = struct.pack("<4sIQQ", magic, version, n_tensors, len(kvs)) + b"".join(kvs) + infos
    pad = (-len(head)) % alignment
    with open(dst, "wb") as f:
        f.write(head + b"\0" * pad + b[data_start:])


if __name__ == "__main__":
    main()
