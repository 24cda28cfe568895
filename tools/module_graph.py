#!/usr/bin/env python3
"""covf's module graph: for each top-level module of src/, the modules its code names (`crate::x`, `crate::{x, ..}`,
and `covf::x` in the binary), test modules and comments left out; then its cycles (Tarjan). docs/architecture.md
prints the table this writes. Usage: python3 tools/module_graph.py (exit 1 if there is a cycle)."""
import os
import re
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def top(path):
    parts = os.path.relpath(path, ROOT).split(os.sep)
    if parts[0] in ("lib.rs", "main.rs"):
        return None
    return "cli" if parts[0] == "cli" else parts[0].removesuffix(".rs")


mods = {}
for dirpath, _, files in os.walk(ROOT):
    for f in files:
        if not f.endswith(".rs"):
            continue
        path = os.path.join(dirpath, f)
        t = top(path)
        if t is None:
            continue
        text = open(path, encoding="utf-8").read()
        text = text.split("#[cfg(test)]")[0]
        text = "\n".join(l for l in text.split("\n") if not l.strip().startswith("//"))
        deps = mods.setdefault(t, set())
        for m in re.finditer(r"crate::\{([^}]*)\}", text):
            deps.update(x.strip().split("::")[0] for x in m.group(1).split(",") if x.strip())
        deps.update(re.findall(r"crate::([a-z_]+)", text))
        if t == "cli":
            deps.update(re.findall(r"covf::([a-z_]+)", text))
for t, deps in mods.items():
    mods[t] = {d for d in deps if d != t and d in mods}

index, low, stack, on, cycles = {}, {}, [], set(), []


def connect(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in mods[v]:
        if w not in index:
            connect(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            cycles.append(sorted(comp))


for v in sorted(mods):
    if v not in index:
        connect(v)
print("| module | uses |\n|---|---|")
for t in sorted(mods):
    if t != "cli" and mods[t]:
        print(f"| {t} | {', '.join(sorted(mods[t]))} |")
print("cycles:", cycles if cycles else "none")
sys.exit(1 if cycles else 0)
