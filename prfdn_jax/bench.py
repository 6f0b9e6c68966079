"""Benchmarks that print tables. Ratios against a baseline measured in the same run.

    python -m prfdn_jax.bench paths   [--size 128] [--nf 50] [--layout b4s] [--repeats 5]
    python -m prfdn_jax.bench latency [--model prfdn-x2] [--size 256] [--repeats 10] [--fp16]

``paths``: the apply paths of one branch/wide network (same parameters): vmapped branches, one
grouped conv per layer, a loop of per-branch convs, a dense block-diagonal conv; forward and
forward+backward (the training step's gradient), jitted, median of ``repeats`` after a warm-up.
``latency``: a built-in model in JAX (jit) against the PyTorch reference with the same weights,
NTIRE protocol (random input, warm-up, synchronised timings; on GPU, cudnn.benchmark and optional fp16).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


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
    from prfdn_jax.networks import build, default_arch

    model = build(default_arch(layout, nf=nf, scale=2, form="wide"))
    graphdef, state = nnx.split(model)
    x = jax.random.uniform(jax.random.key(0), (batch, size, size, 3)) * 255
    y = jax.random.uniform(jax.random.key(1), (batch, 2 * size, 2 * size, 3)) * 255
    rows = []
    for impl in impls or ("vmap", "grouped", "loop", "dense"):
        fwd = jax.jit(lambda s, x, impl=impl: nnx.merge(graphdef, s)(x, impl))

        def loss(s, x, y, impl=impl):
            return jnp.abs(nnx.merge(graphdef, s)(x, impl) - y).mean()

        grad = jax.jit(jax.value_and_grad(loss))
        t_f = _time(lambda: fwd(state, x).block_until_ready(), repeats)
        t_b = _time(lambda: jax.block_until_ready(grad(state, x, y)), repeats)
        rows.append({"impl": impl, "forward_ms": t_f * 1e3, "fwd_bwd_ms": t_b * 1e3})
    return rows


def bench_latency(name="prfdn-x2", size=256, repeats=10, fp16=False) -> list[dict]:
    import torch

    from converters.state_dict import state_dict_from_flat_params
    from converters.torch_modules import build_from_state_dict
    from prfdn_jax import registry
    from prfdn_jax.checkpoint import flat_params
    from prfdn_jax.inference import make_apply

    model = registry.load(name) if name in registry.MODELS else __import__(
        "prfdn_jax.checkpoint", fromlist=["load_any"]).load_any(name)
    h, w = (size, size) if isinstance(size, int) else size
    x = np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32)
    rows = []
    dtype = jnp.float16 if fp16 else jnp.float32
    if fp16:
        model_h = nnx.merge(*_cast(nnx.split(model), dtype))
        apply = make_apply(model_h)
    else:
        apply = make_apply(model)
    xj = jnp.asarray(x, dtype)
    t = _time(lambda: apply(xj).block_until_ready(), repeats)
    rows.append({"impl": f"jax ({jax.default_backend()})", "ms": t * 1e3})

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    sd = state_dict_from_flat_params(flat_params(model), model.arch)
    tm = build_from_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}).to(dev).eval()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(dev)
    if fp16:
        tm, xt = tm.half(), xt.half()

    def run_torch():
        with torch.no_grad():
            tm(xt)
        if dev == "cuda":
            torch.cuda.synchronize()

    t = _time(run_torch, repeats)
    rows.append({"impl": f"torch ({dev})", "ms": t * 1e3})
    return rows


def _cast(split, dtype):
    graphdef, state = split
    return graphdef, jax.tree.map(lambda a: a.astype(dtype), state)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="prfdn bench", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("paths", help="vmap / grouped / loop / dense apply paths of a wide network")
    a.add_argument("--layout", default="b4s", choices=("b4s", "b2s", "b2"))
    a.add_argument("--nf", type=int, default=50)
    a.add_argument("--size", type=int, default=128)
    a.add_argument("--batch", type=int, default=1)
    a.add_argument("--repeats", type=int, default=5)
    b = sub.add_parser("latency", help="JAX vs the PyTorch reference on the same weights")
    b.add_argument("--model", default="prfdn-x2")
    b.add_argument("--size", type=int, default=256)
    b.add_argument("--repeats", type=int, default=10)
    b.add_argument("--fp16", action="store_true")
    args = p.parse_args(argv)
    dev = jax.devices()[0].device_kind
    if args.what == "paths":
        rows = bench_paths(args.layout, args.nf, args.size, args.batch, args.repeats)
        base = next(r for r in rows if r["impl"] == "grouped")
        print(f"apply paths, {args.layout} nf={args.nf}, {args.batch}x{args.size}x{args.size}x3 -> x2, "
              f"{dev}, median of {args.repeats}")
        print("| path | forward ms | vs grouped | fwd+bwd ms | vs grouped |\n|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['impl']} | {r['forward_ms']:.1f} | {r['forward_ms'] / base['forward_ms']:.2f} | "
                  f"{r['fwd_bwd_ms']:.1f} | {r['fwd_bwd_ms'] / base['fwd_bwd_ms']:.2f} |")
    else:
        rows = bench_latency(args.model, args.size, args.repeats, args.fp16)
        base = rows[1]["ms"]
        print(f"latency, {args.model}, 1x{args.size}x{args.size}x3, {'fp16' if args.fp16 else 'fp32'}, {dev}, "
              f"median of {args.repeats}")
        print("| framework | ms | vs torch |\n|---|---|---|")
        for r in rows:
            print(f"| {r['impl']} | {r['ms']:.2f} | {r['ms'] / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
