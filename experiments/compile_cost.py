"""What a new image size costs: the deploy passes (once per model), then per input shape the trace, the
lowering to StableHLO, the XLA compile and the first run, against a second run of a compiled shape.

    python experiments/compile_cost.py --model prfdn-x2 --sizes 16x16,17x23,40x31,75x64

Prints one markdown table (BENCHMARKS.md, "Throughput"). Each size is new to the process (no cache).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1e3


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
        t0 = time.perf_counter()
        traced = d._fn.trace(x)
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
    rows += [{"stage": f"{k} (median of {len(v)} sizes)", "ms": statistics.median(v)} for k, v in per.items()]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="prfdn-x2")
    ap.add_argument("--sizes", default="16x16,17x23,40x31,75x64,100x120")
    a = ap.parse_args(argv)
    from prfdn_jax.backends import configure_xla_flags

    configure_xla_flags()
    sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
    rows = measure(a.model, sizes)
    new = sum(r["ms"] for r in rows[1:5])
    print(f"| {a.model}: stage | ms |\n|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['ms']:.1f} |")
    print(f"| a new size in all (trace + lower + compile + first run) | {new:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
