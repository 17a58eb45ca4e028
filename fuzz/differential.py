#!/usr/bin/env python3
"""Differential check of gguftool's reader against gguf-py (PyPI gguf==0.19.0).

For every file given (directories are walked), both readers parse it. Where
both accept, the metadata keys, value types and values, and the tensor infos
(name, type, element count, byte size, absolute data offset) must agree.
Where only one accepts, the file is listed with both verdicts; the policy for
each such class is written down in docs/SECURITY.md.

  python3 fuzz/differential.py fixtures fuzz/corpus/gguf_parse
Needs `cargo build --release -p gguftool` and `pip install gguf==0.19.0`.
"""
import json
import math
import os
import resource
import subprocess
import sys
from collections import Counter

import numpy as np
from gguf import GGUFReader, GGUFValueType

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "gguftool")
# gguf-py's value type names mapped to gguftool's.
TYPE_NAMES = {
    t.value: {"UINT8": "u8", "INT8": "i8", "UINT16": "u16", "INT16": "i16", "UINT32": "u32", "INT32": "i32",
              "FLOAT32": "f32", "BOOL": "bool", "STRING": "string", "ARRAY": "array", "UINT64": "u64",
              "INT64": "i64", "FLOAT64": "f64"}[t.name]
    for t in GGUFValueType
}


def files(args):
    for a in args:
        if os.path.isdir(a):
            for d, _, fs in os.walk(a):
                for f in sorted(fs):
                    yield os.path.join(d, f)
        else:
            yield a


def norm(v):
    """Comparable form of a value (floats by value, NaN as a string)."""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else v
    if isinstance(v, list):
        return [norm(x) for x in v]
    return v


def flatten(v):
    return [y for x in v for y in (flatten(x) if isinstance(x, list) else [x])]


def ours(path):
    p = subprocess.run([BIN, "inspect", "--json", "--full", path], capture_output=True, text=True)
    if p.returncode != 0:
        return None, p.stderr.strip()
    return json.loads(p.stdout), None


def theirs_in_process(path):
    r = GGUFReader(path)
    md = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        md[k] = (TYPE_NAMES[f.types[0]], norm(f.contents()), f.types.count(GGUFValueType.ARRAY) > 1)
    tensors = [(t.name, int(t.tensor_type), int(t.n_elements), int(t.n_bytes), int(t.data_offset)) for t in r.tensors]
    return md, tensors


def limit_memory():
    # gguf-py trusts declared counts; cap its address space at 2 GiB.
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def theirs(path):
    """gguf-py's view, parsed in a child process with a memory and time cap."""
    code = "import json,sys; sys.path.insert(0, %r); import differential as d; " \
           "m, t = d.theirs_in_process(sys.argv[1]); print(json.dumps([m, t], default=str))" % os.path.dirname(__file__)
    try:
        p = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True, timeout=30,
                           preexec_fn=limit_memory)
    except subprocess.TimeoutExpired:
        return None, "gguf-py timed out (30 s)"
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["killed"])[-1]
        return None, ("gguf-py: " + last)[:200]
    m, t = json.loads(p.stdout)
    return ({k: tuple(v) for k, v in m.items()}, [tuple(x) for x in t]), None


def main():
    verdicts = Counter()
    disagreements = []
    for path in files(sys.argv[1:]):
        o, oerr = ours(path)
        t, terr = theirs(path)
        if o is None and t is None:
            verdicts["both reject"] += 1
            continue
        if o is None or t is None:
            key = "only gguftool accepts" if t is None else "only gguf-py accepts"
            verdicts[key] += 1
            disagreements.append((key, path, oerr or terr))
            if t is None and terr:
                verdicts["gguf-py failures: " + terr.split(":")[1].strip()[:40]] += 1
            continue
        md, tensors = t
        # gguf-py's contents() flattens nested arrays; compare those flattened.
        omd = {
            k: (v["type"], flatten(norm(v["value"])) if md.get(k, (0, 0, False))[2] else norm(v["value"]))
            for k, v in o["metadata"].items()
        }
        md = {k: v[:2] for k, v in md.items()}
        ot = [(x["name"], x["type_id"], x["elements"], x["bytes"], x["offset"]) for x in o["tensors"]]
        if omd != md or ot != tensors:
            verdicts["both accept, differ"] += 1
            diff = [k for k in set(md) | set(omd) if md.get(k) != omd.get(k)][:5]
            disagreements.append(("both accept, differ", path, f"keys {diff}; tensors equal: {ot == tensors}"))
        else:
            verdicts["both accept, agree"] += 1
    for k, n in sorted(verdicts.items()):
        print(f"{k}: {n}")
    for kind, path, why in disagreements[:40]:
        print(f"  [{kind}] {path}: {why}")


if __name__ == "__main__":
    main()
