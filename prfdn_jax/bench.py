"""Benchmarks behind ``prfdn bench`` (which prints them as tables, ratios against a baseline of the same run).

    prfdn bench paths [--size 128] [--nf 50] [--layout b4s] [--repeats 5]
    prfdn bench (--model NAME | --weights PATH) [--size HxW] [--batch B] [--dtype D] [--backend jax|torch|both] [--json]
    prfdn bench train [--layout b4s|b2s|rfdn] [--nf 50] [--scale 2] [--batch B] [--patch P] [--json]

``paths``: the apply paths of one branch/wide network (same parameters): vmapped branches, one
grouped conv per layer, a loop of per-branch convs, a dense block-diagonal conv; forward and
forward+backward (the training step's gradient), jitted, median of ``repeats`` after a warm-up.
The inference benchmark: the deployed JAX network (:func:`prfdn_jax.deploy.deploy`) against the PyTorch
reference with the same weights in every mode (:mod:`converters.torch_bench`), NTIRE protocol (random
input, warm-up, synchronised timings, median and mean, compile time apart).
``train`` (:func:`bench_train`): one training step (Adam, L1 / 255, uint8 LR/HR patches as ``prfdn train``
feeds them) of the step ``prfdn train`` compiles (:func:`prfdn_jax.train_step.make_train_step`), for every
apply path and compute dtype, against the PyTorch reference's training step in every mode.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.backends import WIDE_IMPLS, backend_name, choices
from prfdn_jax.extras import require_torch
from prfdn_jax.networks import build, default_arch, set_impl, with_impl


def _time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` (which must block until done) after one warm-up call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_paths(layout="b4s", nf=50, size=128, batch=1, repeats=5, impls=None) -> list[dict]:
    model = build(default_arch(layout, nf=nf, scale=2, form="wide"))
    x = jax.random.uniform(jax.random.key(0), (batch, size, size, 3)) * 255
    y = jax.random.uniform(jax.random.key(1), (batch, 2 * size, 2 * size, 3)) * 255
    rows = []
    for impl in impls or ("vmap", *WIDE_IMPLS):
        graphdef, state = nnx.split(set_impl(model, impl))
        fwd = jax.jit(lambda s, x, graphdef=graphdef: nnx.merge(graphdef, s)(x))

        def loss(s, x, y, graphdef=graphdef):
            return jnp.abs(nnx.merge(graphdef, s)(x) - y).mean()

        grad = jax.jit(jax.value_and_grad(loss))
        t_f = _time(lambda: fwd(state, x).block_until_ready(), repeats)
        t_b = _time(lambda: jax.block_until_ready(grad(state, x, y)), repeats)
        rows.append({"impl": impl, "forward_ms": t_f * 1e3, "fwd_bwd_ms": t_b * 1e3})
    return rows


def _device() -> str:
    d = jax.devices()[0]
    return d.device_kind if backend_name(d.platform) != "cpu" else f"cpu ({jax.local_device_count()} device, XLA CPU)"


def _compiled_network(model: nnx.Module, x: np.ndarray, dtype: str):
    """The network itself (no deploy), jitted with its parameters as arguments, cast to ``dtype``."""
    from prfdn_jax.deploy import DTYPES

    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda a: a.astype(DTYPES[dtype]), state)
    f = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v.astype(DTYPES[dtype])).astype(jnp.float32))
    compiled = f.lower(state, jax.ShapeDtypeStruct(x.shape, jnp.float32)).compile()
    return lambda v: compiled(state, v), compiled.as_text()


def bench_jax(model: nnx.Module, x: np.ndarray, dtype: str = "float32", warmup: int = 2, runs: int = 5,
              deployed: bool = True) -> dict:
    """The deployed network (or, ``deployed=False``, the network as built) on ``x``:
    ``{'median_ms', 'mean_ms', 'compile_s', 'kernels', 'convs'}`` (NTIRE protocol: warm-up passes, then
    timed passes each ending in a device synchronisation)."""
    from prfdn_jax.deploy import deploy

    t = time.perf_counter()
    if deployed:
        d = deploy(model, dtype=dtype)
        compiled = d._fn.lower(jax.ShapeDtypeStruct(x.shape, jnp.float32)).compile()
        text, convs = compiled.as_text(), len(d.program.convs())
    else:
        compiled, text = _compiled_network(model, x, dtype)
        convs = text.count("convolution(")
    compile_s = time.perf_counter() - t
    xj = jax.device_put(jnp.asarray(x, jnp.float32))
    for _ in range(warmup):
        compiled(xj).block_until_ready()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        compiled(xj).block_until_ready()
        times.append((time.perf_counter() - t) * 1e3)
    return {"median_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "compile_s": compile_s,
            "kernels": count_kernels(text), "convs": convs}


def count_kernels(hlo_text: str) -> int:
    """Kernels (fusions, library calls, copies) launched per call by a compiled program: the
    instructions of its entry computation that do work."""
    entry = hlo_text[hlo_text.index("ENTRY"):]
    body = entry[entry.index("{") + 1:entry.index("\n}")]
    skip = ("parameter(", "constant(", "get-tuple-element(", "tuple(", "bitcast(")
    return sum(1 for ln in body.splitlines() if "=" in ln and not any(k in ln for k in skip))


def bench_inference(model: nnx.Module, size=(540, 960), batch: int = 1, dtype: str = "float32",
                    backend: str = "both", warmup: int | None = None, runs: int | None = None,
                    torch_modes=None, baseline: bool = False) -> dict:
    """JAX (deployed) and/or the PyTorch reference on the same weights and a random input.

    Returns ``{'jax': {...}, 'torch': [{mode...}], 'jax_ms', 'torch_ms', 'torch_mode', 'ratio', 'device', ...}``.
    """
    c = choices()
    warmup = c.bench_warmup if warmup is None else warmup
    runs = c.bench_runs if runs is None else runs
    h, w = size
    x = np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)
    out = {"size": f"{h}x{w}", "batch": batch, "dtype": dtype, "warmup": warmup, "runs": runs, "device": _device()}
    if backend in ("jax", "both"):
        out["jax"] = bench_jax(model, x, dtype, warmup, runs)
        out["jax_ms"] = out["jax"]["median_ms"]
        if baseline:
            out["jax_network"] = bench_jax(model, x, dtype, warmup, runs, deployed=False)
    if backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench")
        from converters.torch_bench import bench_torch
        from prfdn_jax.prune import to_torch

        out["torch"] = bench_torch(to_torch(model), x, dtype, torch_modes, warmup, runs)
        best = min(out["torch"], key=lambda r: r["median_ms"])
        out["torch_ms"], out["torch_mode"] = best["median_ms"], best["mode"]
    if "jax_ms" in out and "torch_ms" in out:
        out["ratio"] = out["jax_ms"] / out["torch_ms"]
    return out


def print_paths(rows: list[dict], layout: str, nf: int, size: int, batch: int, repeats: int) -> None:
    base = next(r for r in rows if r["impl"] == "grouped")
    print(f"apply paths, {layout} nf={nf}, {batch}x{size}x{size}x3 -> x2, {_device()}, median of {repeats}")
    print("| path | forward ms | vs grouped | fwd+bwd ms | vs grouped |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['impl']} | {r['forward_ms']:.1f} | {r['forward_ms'] / base['forward_ms']:.2f} | "
              f"{r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms'] / base['fwd_bwd_ms']:.2f} |")


def print_inference(res: dict, label: str) -> None:
    """The benchmark table: every row's median/mean ms and its ratio to the best PyTorch mode."""
    print(f"{label}, {res['batch']}x{res['size']}x3, {res['dtype']}, {res['device']}; "
          f"{res['warmup']} warm-up + {res['runs']} timed runs")
    base = res.get("torch_ms")
    print("| implementation | median ms | mean ms | compile s | vs best PyTorch |\n|---|---|---|---|---|")
    rows = []
    if "jax" in res:
        j = res["jax"]
        rows.append((f"JAX deployed ({j['convs']} convs, {j['kernels']} kernels)", j))
    if "jax_network" in res:
        j = res["jax_network"]
        rows.append((f"JAX network, not deployed ({j['kernels']} kernels)", j))
    rows += [(f"PyTorch {r['mode']}", r) for r in res.get("torch", [])]
    for name, r in rows:
        vs = f"{r['median_ms'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['median_ms']:.2f} | {r['mean_ms']:.2f} | {r['compile_s']:.1f} | {vs} |")
    if "ratio" in res:
        print(f"JAX / best PyTorch ({res['torch_mode']}): {res['ratio']:.2f}")


# ----------------------------------------------------------------------------- training step
def _train_jax(model, impl: str, dtype: str, lr: np.ndarray, hr: np.ndarray, warmup: int, runs: int) -> dict:
    """Median/mean ms of ``prfdn train``'s jitted step (Adam lr 5e-4, L1) on one device, state carried over."""
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from prfdn_jax.config import TrainConfig
    from prfdn_jax.train_step import init_state, make_optimizer, make_train_step

    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
    graphdef, params, rest = nnx.split(with_impl(model, impl), nnx.Param, ...)
    tx, _ = make_optimizer(TrainConfig(lr=5e-4, schedule="constant"))
    step = make_train_step(graphdef, rest, tx, 255.0, repl, shard, dtype=dtype)
    state = [init_state(params, tx, repl)]
    batch = {"lr": jax.device_put(lr, shard), "hr": jax.device_put(hr, shard)}
    t = time.perf_counter()
    step = step.lower(state[0], batch).compile()
    compile_s = time.perf_counter() - t

    def one():
        state[0], metrics = step(state[0], batch)
        metrics["loss"].block_until_ready()

    for _ in range(warmup):
        one()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        one()
        times.append((time.perf_counter() - t) * 1e3)
    return {"impl": impl, "dtype": dtype, "median_ms": statistics.median(times), "mean_ms": statistics.fmean(times),
            "compile_s": compile_s}


def bench_train(layout: str = "b4s", nf: int = 50, scale: int = 2, batch: int = 16, patch: int = 64, impls=None,
                dtypes=("float32", "bfloat16"), backend: str = "both", warmup: int | None = None,
                runs: int | None = None, torch_modes=None, seed: int = 0, model: nnx.Module | None = None) -> dict:
    """One training step of a ``layout`` net (branch form; ``rfdn``: RFDN, 4 blocks), or of ``model`` (any
    form: its layout, widths and scale), on ``batch`` random ``patch`` x ``patch`` HR patches (LR
    ``patch / scale``), JAX per apply path x dtype, PyTorch per mode.

    Returns ``{'jax': [rows], 'torch': [rows], 'jax_ms'`` (the default: the backend table's path and
    ``compute_dtype='auto'``), ``'jax_impl', 'jax_dtype', 'torch_ms'`` (best mode), ``'torch_mode', 'ratio'``
    (jax_ms / torch_ms), ``'device', ...}``. Rows: ``{'impl' or 'mode', 'dtype', 'median_ms', 'mean_ms',
    'compile_s'}``; a PyTorch mode that fails has ``'error'`` instead of times.
    """
    from prfdn_jax.train_step import resolve_dtype, resolve_impl

    if patch % scale:
        raise ValueError(f"patch {patch} is not a multiple of the scale {scale}")
    c = choices()
    warmup = c.train_warmup if warmup is None else warmup
    runs = c.train_runs if runs is None else runs
    if model is None:
        model = build(default_arch(layout, nf=nf, scale=scale, form="branch"), nnx.Rngs(seed))
    arch = model.arch
    layout, scale, nf = arch.layout, arch.scale, arch.w["LR_conv"][1]
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8)
    lr = rng.integers(0, 256, (batch, patch // scale, patch // scale, 3), dtype=np.uint8)
    default = (resolve_impl(None), resolve_dtype("auto"))
    n_params = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    out = {"layout": layout, "form": arch.form, "nf": nf, "scale": scale, "batch": batch, "patch": patch,
           "params": n_params,
           "warmup": warmup, "runs": runs, "device": _device(), "jax_impl": default[0], "jax_dtype": default[1]}
    if backend in ("jax", "both"):
        if impls is None:  # vmap is a path of the branch form only; merged and RFDN nets have one
            impls = {"branch": ("vmap", *WIDE_IMPLS), "wide": WIDE_IMPLS}.get(arch.form, (default[0],))
            impls = impls if layout != "rfdn" else (default[0],)
        combos = [(i, d) for i in impls for d in dtypes]
        if default not in combos:
            combos.append(default)
        out["jax"] = [_train_jax(model, i, d, lr, hr, warmup, runs) for i, d in combos]
        out["jax_ms"] = next(r["median_ms"] for r in out["jax"] if (r["impl"], r["dtype"]) == default)
    if backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench train")
        from converters.torch_bench import bench_torch_train
        from prfdn_jax.prune import to_torch

        out["torch"] = bench_torch_train(to_torch(model), lr, hr, torch_modes, warmup, runs)
        ok = [r for r in out["torch"] if "median_ms" in r]
        if ok:
            best = min(ok, key=lambda r: r["median_ms"])
            out["torch_ms"], out["torch_mode"] = best["median_ms"], best["mode"]
    if "jax_ms" in out and "torch_ms" in out:
        out["ratio"] = out["jax_ms"] / out["torch_ms"]
    return out


def print_train(res: dict) -> None:
    """The training-step table: every JAX path x dtype and PyTorch mode, ms, images/s, ratio to the best PyTorch."""
    print(f"train step, {res['layout']} {res.get('form', 'branch')} nf={res['nf']} x{res['scale']} "
          f"({res['params']:,} params), batch "
          f"{res['batch']} x {res['patch']}x{res['patch']} HR patches, Adam + L1, {res['device']}; "
          f"{res['warmup']} warm-up + {res['runs']} timed steps")
    base = res.get("torch_ms")
    print("| implementation | dtype | median ms | mean ms | images/s | compile s | vs best PyTorch |\n"
          "|---|---|---|---|---|---|---|")
    default = (res["jax_impl"], res["jax_dtype"])
    rows = [(f"JAX {r['impl']}" + (" (default)" if (r["impl"], r["dtype"]) == default else ""), r)
            for r in res.get("jax", [])]
    rows += [(f"PyTorch {r['mode']}", r) for r in res.get("torch", [])]
    for name, r in rows:
        if "median_ms" not in r:
            print(f"| {name} | {r['dtype']} | - | - | - | - | failed: {r['error']} |")
            continue
        vs = f"{r['median_ms'] / base:.2f}" if base else "-"
        print(f"| {name} | {r['dtype']} | {r['median_ms']:.1f} | {r['mean_ms']:.1f} | "
              f"{res['batch'] * 1e3 / r['median_ms']:.1f} | {r['compile_s']:.1f} | {vs} |")
    if "ratio" in res:
        print(f"JAX default ({res['jax_impl']}, {res['jax_dtype']}) / best PyTorch ({res['torch_mode']}): "
              f"{res['ratio']:.2f}")
