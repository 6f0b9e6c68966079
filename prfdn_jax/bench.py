"""Benchmarks behind ``prfdn bench`` (which prints them as tables, ratios against a baseline of the same run).

    prfdn bench paths   [--size 128] [--nf 50] [--layout b4s] [--repeats 5]
    prfdn bench latency [--model prfdn-x2] [--size 256] [--repeats 10] [--fp16]     # needs PyTorch

``paths``: the apply paths of one branch/wide network (same parameters): vmapped branches, one
grouped conv per layer, a loop of per-branch convs, a dense block-diagonal conv; forward and
forward+backward (the training step's gradient), jitted, median of ``repeats`` after a warm-up.
``latency``: a built-in model in JAX (jit) against the PyTorch reference with the same weights,
NTIRE protocol (random input, warm-up, synchronised timings; on GPU, cudnn.benchmark and optional fp16).
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax import registry
from prfdn_jax.checkpoint import flat_params, load_any
from prfdn_jax.extras import require_torch
from prfdn_jax.inference import make_apply
from prfdn_jax.networks import build, default_arch, set_impl


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
    for impl in impls or ("vmap", "grouped", "loop", "dense"):
        graphdef, state = nnx.split(set_impl(model, impl))
        fwd = jax.jit(lambda s, x, graphdef=graphdef: nnx.merge(graphdef, s)(x))

        def loss(s, x, y, graphdef=graphdef):
            return jnp.abs(nnx.merge(graphdef, s)(x) - y).mean()

        grad = jax.jit(jax.value_and_grad(loss))
        t_f = _time(lambda: fwd(state, x).block_until_ready(), repeats)
        t_b = _time(lambda: jax.block_until_ready(grad(state, x, y)), repeats)
        rows.append({"impl": impl, "forward_ms": t_f * 1e3, "fwd_bwd_ms": t_b * 1e3})
    return rows


def bench_latency(name="prfdn-x2", size=256, repeats=10, fp16=False) -> list[dict]:
    torch = require_torch("the PyTorch latency benchmark")
    from converters.state_dict import state_dict_from_flat_params
    from converters.torch_modules import build_from_state_dict  # imports torch

    model = registry.load(name) if name in registry.MODELS else load_any(name)
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
