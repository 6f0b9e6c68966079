"""The project's layers: no import cycle (function-local imports included), torch only in converters/,
a pure-Python topology spec, one definition of each topology table, no oversized module."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from helpers import ROOT

PACKAGES = ("prfdn_jax", "converters", "experiments")
MAX_LINES = 450
MAX_FUNCTION_LINES = 80  # argparse tables (add_arguments) excepted

# Every module's layer: a module imports only from layers below its own (or from its own package:
# spec/, deploy/, commands/, converters/, whose inner imports test_no_import_cycle checks). The README's
# layer table is this map in words. A new module gets a row here.
LAYERS = {
    0: ("prfdn_jax", "prfdn_jax.spec", "prfdn_jax.backends", "prfdn_jax.extras", "prfdn_jax.fileio",
        "prfdn_jax.metrics", "prfdn_jax.progress", "prfdn_jax.resize", "prfdn_jax.throughput"),
    1: ("prfdn_jax.blocks", "prfdn_jax.crops", "prfdn_jax.imaging", "prfdn_jax.state_dict"),
    2: ("prfdn_jax.networks", "prfdn_jax.data", "prfdn_jax.folder_jobs"),
    3: ("prfdn_jax.config", "prfdn_jax.inference", "prfdn_jax.macs", "prfdn_jax.prepare", "prfdn_jax.workdir"),
    4: ("converters", "prfdn_jax.checkpoint", "prfdn_jax.configs", "prfdn_jax.evaluate", "prfdn_jax.runlog",
        "prfdn_jax.train_step", "prfdn_jax.video"),
    5: ("prfdn_jax.registry", "prfdn_jax.reparam", "prfdn_jax.train", "prfdn_jax.widen"),
    6: ("prfdn_jax.deploy", "prfdn_jax.prune"),
    7: ("prfdn_jax.export", "prfdn_jax.pipeline"),
    8: ("prfdn_jax.bench", "prfdn_jax.bench_folder", "prfdn_jax.verify"),
    9: ("prfdn_jax.pareto",),
    10: ("prfdn_jax.commands",),
    11: ("prfdn_jax.cli",),
    12: ("experiments",),
}


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


def _group(module: str) -> str:
    """The entry of :data:`LAYERS` that ``module`` belongs to (its longest listed prefix)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        g = ".".join(parts[:n])
        if any(g in names for names in LAYERS.values()):
            return g
    raise AssertionError(f"{module}: not in tests/test_layers.py LAYERS; give it a layer")


def _layer(module: str) -> int:
    g = _group(module)
    return next(k for k, names in LAYERS.items() if g in names)


def test_every_import_goes_down_a_layer():
    """No module imports from its own layer or above (function-local imports included), except inside
    its own package."""
    _, edges = _graph()
    up = sorted(f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})" for m, ts in edges.items()
                for t in ts if _group(m) != _group(t) and _layer(t) >= _layer(m))
    assert not up, up


def test_layer_check_finds_an_upward_import(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "_graph", lambda: (None, {"prfdn_jax.checkpoint": {"converters.x"}}))
    try:
        test_every_import_goes_down_a_layer()
    except AssertionError as e:
        assert "prfdn_jax.checkpoint (layer 4) imports converters.x (layer 4)" in str(e)
    else:
        raise AssertionError("an import within one layer was not reported")


def test_no_function_over_the_limit():
    """No function or method over MAX_FUNCTION_LINES lines; argparse tables (``add_arguments``) excepted."""
    long = []
    for f in _modules().values():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name != "add_arguments":
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, long


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
