"""The project's layers: no import cycle (function-local imports included), torch only in converters/,
a pure-Python topology spec, one definition of each topology table, no oversized module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

PACKAGES = ("prfdn_jax", "converters", "experiments")
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = f
    return mods


def _imports(name: str, path: Path, mods) -> list[tuple[str, bool]]:
    """``[(project module, at module level)]`` imported anywhere in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    top = {id(n) for n in tree.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in mods:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.append((t, id(node) in top))
    return out


def _graph():
    mods = _modules()
    return mods, {m: {t for t, _ in _imports(m, f, mods)} for m, f in mods.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (iterative Tarjan)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        work = [(v, iter(sorted(edges[v])))]
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
            elif nxt not in index:
                index[nxt] = low[nxt] = counter[0]
                counter[0] += 1
                stack.append(nxt)
                on.add(nxt)
                work.append((nxt, iter(sorted(edges[nxt]))))
            elif nxt in on:
                low[node] = min(low[node], index[nxt])

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    _, edges = _graph()
    assert _cycles(edges) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_spec_is_the_bottom_layer():
    """spec imports nothing of the project but itself, and neither jax nor torch."""
    mods, edges = _graph()
    for m in (m for m in mods if m.startswith("prfdn_jax.spec")):
        assert all(t.startswith("prfdn_jax.spec") for t in edges[m]), (m, edges[m])
        text = mods[m].read_text()
        assert not re.search(r"^\s*(import|from)\s+(jax|torch|flax)\b", text, re.M), m


def test_torch_only_in_converters_and_never_at_module_level_of_the_library():
    for m, f in _modules().items():
        tree = ast.parse(f.read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        if m.startswith("prfdn_jax"):
            assert not any(x.split(".")[0] in ("torch", "torch_pruning") for x in names), m
            # the library reaches converters/ (which imports torch) only inside functions
            assert not any(x.startswith("converters") for x in names), m


def test_importing_the_library_does_not_import_torch():
    code = ("import sys, prfdn_jax.cli, prfdn_jax.networks, prfdn_jax.checkpoint, prfdn_jax.train, "
            "prfdn_jax.pipeline, prfdn_jax.inference; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"


def test_one_definition_of_each_topology_table():
    """The conv geometry, the layouts and the standard widths are defined once, in prfdn_jax/spec."""
    patterns = {
        "geometry table": r"^\s*_?[A-Z_]*(GEOMETRY|KERNEL)\w*\s*(:[^=]*)?=\s*\{",
        "layout table": r"^\s*_?[A-Z_]*LAYOUTS\w*\s*(:[^=]*)?=\s*\{",
        "rfdb widths": r"^def rfdb_widths\(",
        "esa widths": r"^def esa_widths\(",
        "coupling checker": r"^def width_errors\(",
        "minimum size": r"^\s*MIN_SIZE\s*=",
    }
    for what, pat in patterns.items():
        hits = [str(f.relative_to(ROOT)) for f in _modules().values() if re.search(pat, f.read_text(), re.M)]
        assert len(hits) == 1 and hits[0].startswith("prfdn_jax/spec/"), (what, hits)
    stray = [str(f.relative_to(ROOT)) for f in _modules().values() if re.search(r"^\s*_?DEPTH\s*=", f.read_text(), re.M)]
    assert not stray, stray  # depth is part of spec.LAYOUTS


def test_no_module_over_the_limit():
    big = {str(f.relative_to(ROOT)): n for f in _modules().values()
           if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not big, big
