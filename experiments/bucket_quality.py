"""Shape buckets against whole images: Y-PSNR on Set14 and the 20 Urban100 images (LR by MATLAB bicubic),
each image upscaled at its own size, in the padded shapes of ``--bucket auto`` and ``--bucket 128`` (the
padding masked: the program's exact mode) and, for comparison, padded by edge values without the mask.

    python experiments/bucket_quality.py [--model prfdn-x2] [--sets Set14,Urban100]

Prints one markdown table (BENCHMARKS.md, "Throughput"): the mean Y-PSNR of each way, its difference from
whole images, and how many output pixels differ from the whole-image output (uint8).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _edge_padded(deployed, plan, scale):
    """The plain program on edge-padded images, cropped (no mask: ESA and the border convs see the padding)."""
    def f(x):
        h, w = x.shape[1:3]
        hp, wp = plan.get((h, w), (h, w))
        xp = np.pad(np.asarray(x, np.float32), ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), mode="edge")
        return np.asarray(deployed(xp))[:, :h * scale, :w * scale]

    return f


def main(argv=None) -> int:
    import os

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="prfdn-x2")
    ap.add_argument("--sets", default="Set14,Urban100")
    a = ap.parse_args(argv)
    from prfdn_jax.backends import configure_xla_flags

    configure_xla_flags()
    from prfdn_jax import registry, throughput
    from prfdn_jax.deploy import deploy
    from prfdn_jax.evaluate import load_eval_set
    from prfdn_jax.inference import upscale_array
    from prfdn_jax.metrics import psnr

    shared = Path(os.environ.get("PRFDN_SHARED", SHARED))
    model = registry.load(a.model)
    s = model.arch.scale
    d = deploy(model)
    items = []
    for name in a.sets.split(","):
        items += load_eval_set(shared / "data" / name, s)
    sizes = [lr.shape[:2] for _, lr, _ in items]
    plans = {"auto": throughput.plan_buckets(sizes, d.compile_px()),
             "128": throughput.plan_buckets(sizes, multiple=128)}
    ways = {"whole images (one compile per size)": d}
    for k, plan in plans.items():
        ways[f"--bucket {k} ({len(set(plan.values()))} shapes), masked"] = throughput.Bucketed(d, plan, s)
    ways["--bucket 128, edge padding, no mask"] = _edge_padded(d, plans["128"], s)
    ref, rows = None, []
    for label, f in ways.items():
        srs = [upscale_array(f, lr, s) for _, lr, _ in items]
        score = float(np.mean([psnr(sr, hr, crop=s, y_channel=True) for sr, (_, _, hr) in zip(srs, items)]))
        ref = ref or (score, srs)
        differ = sum(int((sr != r).sum()) for sr, r in zip(srs, ref[1]))
        total = sum(r.size for r in ref[1])
        rows.append((label, score, score - ref[0], differ, total))
    print(f"| {a.model}, {a.sets} ({len(items)} images) | Y-PSNR dB | vs whole | uint8 values differing |")
    print("|---|---|---|---|")
    for label, score, diff, differ, total in rows:
        print(f"| {label} | {score:.4f} | {diff:+.4f} | {differ} of {total} ({differ / total:.2e}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
