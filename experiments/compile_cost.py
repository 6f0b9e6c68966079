"""What a new image size costs: the deploy passes (once per model), then per input shape the trace, the
lowering to StableHLO, the XLA compile and the first run, against a second run of a compiled shape; then
the same sizes in a second process, from JAX's persistent compilation cache (a second ``prfdn upscale``).

    python experiments/compile_cost.py --model prfdn-x2 --sizes 100x120,150x230,277x311,400x390

Prints one markdown table (BENCHMARKS.md, "Throughput"). Each size is new to the process; the cache is
a temporary folder, empty at the start of the first process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


def _new_shape(d, x, per: dict) -> None:
    """Trace, lower, compile and run ``x``'s shape with a new jit of ``d`` (nothing reused in memory)."""
    f = d.jit()
    t0 = time.perf_counter()
    traced = f.trace(x)
    per["trace"].append(_ms(t0))
    t0 = time.perf_counter()
    lowered = traced.lower()
    per["lower"].append(_ms(t0))
    t0 = time.perf_counter()
    compiled = lowered.compile()
    per["compile"].append(_ms(t0))
    t0 = time.perf_counter()
    compiled(x).block_until_ready()
    per["first run"].append(_ms(t0))
    t0 = time.perf_counter()
    compiled(x).block_until_ready()
    per["run (compiled)"].append(_ms(t0))


def measure(name: str, sizes: list[tuple[int, int]]) -> list[dict]:
    import jax
    import numpy as np

    from prfdn_jax import registry
    from prfdn_jax.deploy import deploy

    model = registry.load(name)
    t0 = time.perf_counter()
    d = deploy(model)
    rows = [{"stage": "deploy passes (once per model)", "ms": _ms(t0)}]
    per = {k: [] for k in ("trace", "lower", "compile", "first run", "run (compiled)")}
    for h, w in sizes:
        x = jax.numpy.asarray(np.random.default_rng(0).uniform(0, 255, (1, h, w, 3)).astype(np.float32))
        _new_shape(d, x, per)
    return rows + [{"stage": f"{k} (median of {len(v)} sizes)", "ms": statistics.median(v)} for k, v in per.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="prfdn-x2")
    ap.add_argument("--sizes", default="100x120,150x230,277x311,400x390,333x180")
    ap.add_argument("--cache", help=argparse.SUPPRESS)  # a measuring process: its cache, JSON out
    a = ap.parse_args(argv)
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    if a.cache:
        from prfdn_jax.backends import configure_xla_flags
        from prfdn_jax.throughput import enable_compile_cache

        configure_xla_flags()
        enable_compile_cache(env={"PRFDN_CACHE_DIR": a.cache})
        print(json.dumps(measure(a.model, sizes)))
        return 0
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with tempfile.TemporaryDirectory() as cache:
        runs = [json.loads(subprocess.run([sys.executable, __file__, "--model", a.model, "--sizes", a.sizes,
                                           "--cache", cache], env=env, check=True, capture_output=True,
                                          text=True).stdout.strip().splitlines()[-1]) for _ in range(2)]
    print(f"| {a.model}: stage | new size (ms) | same size, persistent cache warm, new process (ms) |")
    print("|---|---|---|")
    for r0, r1 in zip(*runs):
        print(f"| {r0['stage']} | {r0['ms']:.1f} | {r1['ms']:.1f} |")
    total = [sum(r["ms"] for r in rows[1:5]) - rows[5]["ms"] for rows in runs]
    print(f"| a size in all (trace + lower + compile + first run - compiled run) | {total[0]:.1f} | {total[1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
