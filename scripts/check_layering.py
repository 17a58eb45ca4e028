#!/usr/bin/env python3
"""Layering checks run by CI.

1. No module cycles inside any crate: for each crate under core/, formats/,
   tools/ and benches/, a graph of its top-level modules is built from the
   `crate::<module>` paths each file names (use statements and inline
   paths), and any cycle is reported.
2. The container crate stays standalone: `cargo tree -p gguftool-gguf -e
   normal` names none of the forbidden crates.
3. Crate dependencies point one way: format plugins depend on gguftool-quant
   and gguftool-gguf only (among our crates).
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORBIDDEN_IN_CONTAINER = ["gguftool-quant", "regex", "toml", "serde_json", "tempfile", "linkme"]
failed = False


def fail(msg):
    global failed
    failed = True
    print("layering: " + msg)


def module_of(src_dir, path):
    rel = os.path.relpath(path, src_dir)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".rs") else first


def crate_cycles(src_dir):
    graph = {}
    for dirpath, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            m = module_of(src_dir, path)
            if m in ("lib", "main"):
                continue
            # Code only: doc links and comments are not dependencies.
            text = "\n".join(
                line.split("//")[0] for line in open(path, encoding="utf-8").read().splitlines()
            )
            # `use crate::{a, b::c}` and `crate::a::...`
            names = set(re.findall(r"crate::([a-z_][a-z0-9_]*)", text))
            for group in re.findall(r"crate::\{([^}]*)\}", text):
                names |= set(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
            graph.setdefault(m, set()).update(n for n in names if n != m)
    # DFS cycle detection on module names that exist as modules.
    mods = set(graph)
    color = {}
    stack = []

    def dfs(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if v not in mods:
                continue
            if color.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in color:
                c = dfs(v)
                if c:
                    return c
        stack.pop()
        color[u] = 2
        return None

    for u in sorted(mods):
        if u not in color:
            c = dfs(u)
            if c:
                return c
    return None


meta = json.loads(
    subprocess.check_output(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=ROOT
    )
)
for pkg in meta["packages"]:
    src = os.path.join(os.path.dirname(pkg["manifest_path"]), "src")
    cycle = crate_cycles(src)
    if cycle:
        fail(f"{pkg['name']}: module cycle {' -> '.join(cycle)}")
    ours = [d["name"] for d in pkg["dependencies"] if d["name"].startswith("gguftool") and d["kind"] is None]
    manifest = pkg["manifest_path"]
    if "/formats/" in manifest and "/formats/all/" not in manifest:
        bad = [d for d in ours if d not in ("gguftool-quant", "gguftool-gguf")]
        if bad:
            fail(f"{pkg['name']} (a format plugin) depends on {bad}")

tree = subprocess.check_output(
    ["cargo", "tree", "-p", "gguftool-gguf", "-e", "normal", "--prefix", "none"], cwd=ROOT, text=True
)
names = {line.split()[0] for line in tree.splitlines() if line.strip()}
for bad in FORBIDDEN_IN_CONTAINER:
    if bad in names:
        fail(f"gguftool-gguf depends on {bad}")

if failed:
    sys.exit(1)
print("layering: no module cycles; gguftool-gguf depends on " + ", ".join(sorted(names - {"gguftool-gguf"})))
