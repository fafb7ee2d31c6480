#!/usr/bin/env python3
"""Fails when two top-level modules of a crate use each other, directly or through others.

A module is a file `src/NAME.rs` or a directory `src/NAME/` (with its submodules: a
module and what it contains are one unit). An edge A -> B is any `crate::B` path in A's
code (`use` or a path in an expression); comments and doc links do not count.
Usage: module-cycles.py CRATE_SRC_DIR...
"""
import re
import sys
from pathlib import Path

PATH = re.compile(r"\bcrate::([a-z_][a-z0-9_]*)")
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def modules(src: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for f in sorted(src.glob("*.rs")):
        if f.stem not in ("lib", "main"):
            found.setdefault(f.stem, []).append(f)
    for d in sorted(p for p in src.iterdir() if p.is_dir()):
        found.setdefault(d.name, []).extend(sorted(d.rglob("*.rs")))
    return found


def edges(files: list[Path], names: set[str]) -> set[str]:
    out: set[str] = set()
    for f in files:
        text = "\n".join(
            line for line in f.read_text().splitlines() if not line.lstrip().startswith("//")
        )
        used = set(PATH.findall(text))
        for group in GROUP.findall(text):
            used.update(re.findall(r"(?:^|,)\s*([a-z_][a-z0-9_]*)", group))
        out |= used & names
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    failed = False
    for arg in sys.argv[1:]:
        src = Path(arg)
        mods = modules(src)
        names = set(mods)
        graph = {m: edges(files, names) - {m} for m, files in mods.items()}
        for component in cycles(graph):
            failed = True
            inner = {m: sorted(graph[m] & set(component)) for m in component}
            detail = "; ".join(f"{m} -> {', '.join(t)}" for m, t in inner.items())
            print(f"module cycle in {src}: {' <-> '.join(component)} ({detail})")
    if not failed:
        print(f"module-cycles: no cycles in {' '.join(sys.argv[1:])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
