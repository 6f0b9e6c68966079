"""``prfdn eval``: PSNR/SSIM of a model on a folder with ``HR/`` (and optional ``LR_bicubic/X{S}/``).

An image over ``--memory-budget`` is upscaled in tiles (with a note: its scores then differ slightly).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prfdn_jax.commands.common import (CLIError, add_memory_budget, add_model_args, auto_tile,
                                       budget_gb, check_model_args, eval_set, resolve_model)
from prfdn_jax.progress import progress

HELP = "PSNR/SSIM on a folder with HR/ (and optional LR_bicubic/X{S}/)"


def add_arguments(e) -> None:
    from prfdn_jax.resize import DEGRADATIONS
    from prfdn_jax.deploy import DTYPES

    add_model_args(e, required=True, scale_help="the scale to evaluate: checks that the model is xS (LR images "
                                                "are taken from LR_bicubic/XS/ or made from HR at that scale)")
    e.add_argument("--data", required=True, metavar="DIR",
                   help="evaluation set: a folder with HR/ images and optional LR_bicubic/X{S}/{name}x{S}.png")
    e.add_argument("--degradation", choices=DEGRADATIONS, default="matlab",
                   help="LR when made from HR: MATLAB bicubic (default; shipped LR used when present) "
                        "or NTIRE (PIL bicubic + JPEG 90, always made from HR)")
    e.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="compute dtype (default float32)")
    e.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    add_memory_budget(e)


def _tiled_forward(apply, model, budget: float, names: list[str]):
    """``apply`` for :func:`prfdn_jax.evaluate.evaluate`, tiling an image that does not fit ``budget`` GB
    (with a note naming it: its scores then differ slightly from whole-image inference)."""
    import numpy as np

    from prfdn_jax.inference import DEFAULT_OVERLAP, upscale_array

    seen = iter(names)

    def f(x):
        name = next(seen, "image")
        h, w = x.shape[1:3]
        try:
            tile = auto_tile(model, h, w, budget, DEFAULT_OVERLAP)
        except CLIError as e:
            raise CLIError(f"{name}: {e}") from None
        if not tile:
            return apply(x)
        print(f"note: {name} is {w}x{h}: upscaling in {tile}x{tile} tiles to stay within {budget:g} GB "
              "(scores differ slightly from whole-image inference; --memory-budget to change)", file=sys.stderr)
        img = np.clip(np.asarray(x[0]), 0, 255).astype(np.uint8)
        return upscale_array(apply, img, model.arch.scale, tile=tile)[None].astype(np.float32)

    return f


def run(args) -> int:
    from prfdn_jax.deploy import deploy
    from prfdn_jax.evaluate import evaluate

    budget = budget_gb(args)
    check_model_args(args)
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data}: no such folder")
    model, label = resolve_model(args)
    scale = model.arch.scale
    items = eval_set(Path(args.data), scale, args.degradation)
    bar = progress(None, len(items), "eval", unit="img", final=True)
    f = _tiled_forward(deploy(model, dtype=args.dtype), model, budget, [name for name, _, _ in items])
    try:
        res = evaluate(f, items, scale, progress=lambda done, total: bar.update(1))
    finally:
        bar.close()
    print(f"{'image':<16} {'PSNR-Y':>8} {'SSIM-Y':>8} {'PSNR-RGB':>9} {'SSIM-RGB':>9}")
    for r in res["rows"]:
        print(f"{r['image']:<16} {r['psnr_y']:8.3f} {r['ssim_y']:8.4f} {r['psnr_rgb']:9.3f} {r['ssim_rgb']:9.4f}")
    print(f"{'mean':<16} {res['psnr_y']:8.3f} {res['ssim_y']:8.4f} {res['psnr_rgb']:9.3f} {res['ssim_rgb']:9.4f}"
          f"   ({res['images']} images, x{scale}, {label}, {args.degradation} LR)")
    if args.json:
        print(json.dumps({k: res[k] for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "images")}
                         | {"model": label, "scale": scale, "dtype": args.dtype}))
    return 0
