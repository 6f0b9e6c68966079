"""The ``prfdn`` command: upscale, eval, models, reparam, prune, train, pipeline, bench.

Every user error ends in one line on stderr (``prfdn: error: ...``) and a non-zero exit, never a
traceback (``PRFDN_DEBUG=1`` shows it); outputs are written atomically, so a failure leaves no file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_ERROR = 1
EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


# ----------------------------------------------------------------------------- helpers
def _progress(items, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr, disable=total <= 1,
                dynamic_ncols=True, leave=False)


def _add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--model", metavar="NAME", help="built-in model (see `prfdn models`)")
    g.add_argument("--weights", metavar="PATH",
                   help="PyTorch .pth state dict, a prfdn-jax .safetensors model, or a training workdir")
    p.add_argument("--scale", type=int, choices=(2, 3, 4), help="upscaling factor (picks the built-in model)")


def _resolve_model(args):
    """(model, label) from --model / --weights / --scale."""
    from prfdn_jax import registry
    from prfdn_jax.checkpoint import load_any

    if args.weights:
        model, label = load_any(args.weights), str(args.weights)
    else:
        label = args.model or registry.for_scale(args.scale)
        model = registry.load(label)
    if args.scale and model.arch.scale != args.scale:
        raise CLIError(f"{label} is an x{model.arch.scale} model but --scale {args.scale} was given")
    return model, label


def _collect_inputs(inputs: list[str]) -> tuple[list[Path], bool]:
    """Image paths from files and folders; second value: whether any input was a folder."""
    from prfdn_jax.imaging import list_images

    paths, had_dir = [], False
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            had_dir = True
            found = list_images(p)
            if not found:
                raise CLIError(f"{p}: folder holds no images (.png, .jpg, .jpeg, .bmp)")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise CLIError(f"{p}: no such file or directory")
    return paths, had_dir


# ----------------------------------------------------------------------------- upscale
def cmd_upscale(args) -> int:
    import numpy as np

    from prfdn_jax.imaging import IMAGE_EXTENSIONS, ImageError, read_image, write_image
    from prfdn_jax.inference import MIN_SIZE, make_apply, upscale_array

    paths, had_dir = _collect_inputs(args.inputs)
    out = Path(args.output)
    single_file = len(paths) == 1 and not had_dir and not out.is_dir()
    if single_file:
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CLIError(f"{out}: output file needs an image extension ({', '.join(IMAGE_EXTENSIONS)})")
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise CLIError(f"{out}: exists and is not a folder (several inputs need an output folder)")
        targets = [out / (p.stem + ".png") for p in paths]
        dup = {t for t in targets if targets.count(t) > 1}
        if dup:
            raise CLIError(f"two inputs would both be written to {sorted(dup)[0]}; upscale them separately")
    model, label = _resolve_model(args)
    scale = model.arch.scale
    apply = make_apply(model)
    failed = 0
    for src, dst in _progress(zip(paths, targets), len(paths), f"x{scale} {label}"):
        try:
            img = read_image(src)
            h, w = img.shape
            if min(h, w) < MIN_SIZE:
                raise ImageError(f"{src}: image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
            sr = upscale_array(apply, img.rgb, scale, tile=args.tile)
            alpha = None
            if img.alpha is not None:
                from PIL import Image as PILImage

                alpha = np.asarray(PILImage.fromarray(img.alpha).resize((w * scale, h * scale), PILImage.BICUBIC))
            if any(n.startswith("grayscale") for n in img.notes):
                # grey in, grey out: BT.601 luma of the (nearly grey) network output
                sr = np.clip(np.round(sr @ np.array([0.299, 0.587, 0.114])), 0, 255).astype(np.uint8)
            write_image(dst, sr, alpha)
            for note in img.notes:
                print(f"note: {src}: {note}", file=sys.stderr)
            if len(paths) == 1:
                print(f"{src} -> {dst} ({w}x{h} -> {w * scale}x{h * scale}, {label})")
        except (ImageError, ValueError, OSError) as e:
            failed += 1
            print(f"prfdn: error: {_one_line(e)}", file=sys.stderr)
    if len(paths) > 1:
        print(f"upscaled {len(paths) - failed}/{len(paths)} images x{scale} with {label} -> {out}")
    return EXIT_ERROR if failed else 0


# ----------------------------------------------------------------------------- eval
def evaluate(model, data: Path, scale: int, degradation: str = "matlab", progress: bool = True) -> dict:
    """Mean PSNR/SSIM (Y with crop=scale; RGB without crop) of ``model`` on ``data/HR``."""
    import numpy as np

    from prfdn_jax.imaging import downscale, list_images, ntire_degrade, read_image
    from prfdn_jax.inference import make_apply, upscale_array
    from prfdn_jax.metrics import evaluate_pair

    hr_dir = data / "HR"
    if not hr_dir.is_dir():
        raise CLIError(f"{data}: no HR/ folder (expected {hr_dir})")
    hrs = list_images(hr_dir)
    if not hrs:
        raise CLIError(f"{hr_dir}: no images")
    apply = make_apply(model)
    rows = []
    for hr_path in _progress(hrs, len(hrs) if progress else 0, "eval"):
        hr = read_image(hr_path).rgb
        lr_path = data / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        if degradation == "matlab" and lr_path.exists():
            lr = read_image(lr_path).rgb
        elif degradation == "ntire":
            lr = ntire_degrade(hr, scale)
        else:
            lr = downscale(hr, scale, "matlab")
        sr = upscale_array(apply, lr, scale)
        rows.append({"image": hr_path.stem, **evaluate_pair(sr, hr, scale)})
    keys = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")
    mean = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    return {"rows": rows, **mean, "images": len(rows)}


def cmd_eval(args) -> int:
    model, label = _resolve_model(args)
    scale = model.arch.scale
    res = evaluate(model, Path(args.data), scale, args.degradation)
    print(f"{'image':<16} {'PSNR-Y':>8} {'SSIM-Y':>8} {'PSNR-RGB':>9} {'SSIM-RGB':>9}")
    for r in res["rows"]:
        print(f"{r['image']:<16} {r['psnr_y']:8.3f} {r['ssim_y']:8.4f} {r['psnr_rgb']:9.3f} {r['ssim_rgb']:9.4f}")
    print(f"{'mean':<16} {res['psnr_y']:8.3f} {res['ssim_y']:8.4f} {res['psnr_rgb']:9.3f} {res['ssim_rgb']:9.4f}"
          f"   ({res['images']} images, x{scale}, {label}, {args.degradation} LR)")
    if args.json:
        print(json.dumps({k: res[k] for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "images")}
                         | {"model": label, "scale": scale}))
    return 0


# ----------------------------------------------------------------------------- models
def _model_row(model, name: str, source: str = "") -> dict:
    from prfdn_jax.macs import summary

    s = summary(model, 1080, 1920)
    a = model.arch
    return {"name": name, "scale": a.scale, "form": a.form, "layout": a.layout, "params": s["params"],
            "gmac_1080p": round(s["gmac"], 4), "gmac_conv_1080p": round(s["gmac_conv"], 4), "source": source}


def cmd_models(args) -> int:
    from prfdn_jax import registry
    from prfdn_jax.checkpoint import load_any

    if args.weights:
        row = _model_row(load_any(args.weights), str(args.weights))
        if args.json:
            print(json.dumps(row))
        else:
            for k, v in row.items():
                if k != "source":
                    print(f"{k:<16} {v}")
        return 0
    rows = [_model_row(registry.load(n), n, i.source) for n, i in registry.MODELS.items()]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'name':<10} {'scale':>5} {'params':>9} {'GMAC@1080p':>11}  source")
    for r in rows:
        print(f"{r['name']:<10} {'x' + str(r['scale']):>5} {r['params']:>9,} {r['gmac_1080p']:>11.2f}  {r['source']}")
    print(f"default: {registry.DEFAULT_MODEL}; GMAC = conv + activation MACs at a 1920x1080 input "
          "(NTIRE 2023 definition)")
    return 0


# ----------------------------------------------------------------------------- reparam / prune
def _check_equal(a, b, size: int = 48) -> float:
    """Max relative difference of two networks' outputs on a random [0, 255] input."""
    import jax
    import numpy as np

    from prfdn_jax.inference import make_apply

    x = np.asarray(jax.random.uniform(jax.random.key(0), (1, size, size, 3))) * 255
    ya, yb = np.asarray(make_apply(a)(x)), np.asarray(make_apply(b)(x))
    return float(np.abs(ya - yb).max() / max(np.abs(ya).max(), 1e-12))


def cmd_reparam(args) -> int:
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params
    from prfdn_jax.reparam import reparam, wide_to_merged

    src = load_any(args.src)
    if src.arch.form == "merged":
        raise CLIError(f"{args.src}: already a merged network; reparam takes a branch network")
    if src.arch.layout == "rfdn":
        raise CLIError(f"{args.src}: an RFDN has no branches to merge (branch it first)")
    out = wide_to_merged(src) if args.merged else reparam(src)
    diff = _check_equal(src, out)
    save_model(args.dst, out)
    print(f"{args.src} ({src.arch.form} {src.arch.layout}, {params(src):,} params) -> {args.dst} "
          f"({out.arch.form}, {params(out):,} params); max relative output difference {diff:.2e}")
    return 0


def _finetune_callback(args):
    """``f(model, step) -> model``: finetune for ``--finetune-steps`` on ``--data`` between pruning steps."""
    from prfdn_jax.train import finetune, load_config

    config = load_config(args.config)
    return lambda m, step: finetune(m, config, args.data, args.finetune_steps)


def _val_callback(val_dir: Path):
    """``f(model) -> PSNR-Y`` on a validation folder with ``HR/``."""
    return lambda m: evaluate(m, val_dir, m.arch.scale, progress=False)["psnr_y"]


def cmd_prune(args) -> int:
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params as params_of
    from prfdn_jax.prune import prune_model

    model = load_any(args.src)
    if args.uniform and args.free:
        raise CLIError("--uniform and --free exclude each other")
    if args.uniform and model.arch.form == "merged":
        raise CLIError(f"{args.src}: a merged network has no branches left to keep uniform; drop --uniform")
    # Default: a branch/wide network stays grouped (uniform); a merged one is pruned freely. Free
    # pruning of a wide network first densifies its block-diagonal convs (N times the parameters).
    uniform = args.uniform or (not args.free and model.arch.form != "merged")
    print(f"mode: {'uniform (every branch the same width; stays a wide grouped network)' if uniform else 'free (any width per layer; dense merged layout)'}")
    if args.finetune_steps and not args.data:
        raise CLIError("--finetune-steps needs --data DIR with training images")
    finetune_fn = _finetune_callback(args) if args.finetune_steps else None
    val_fn = _val_callback(Path(args.val)) if args.val else None
    pruned, history = prune_model(model, ratio=args.ratio, steps=args.steps, uniform=uniform,
                                  importance=args.importance, finetune=finetune_fn, val=val_fn)
    print(f"{'step':>4} {'params':>10} {'GMAC@1080p':>11} {'PSNR-Y':>8}")
    for h in history:
        p = h.get("psnr")
        print(f"{h['step']:>4} {h['params']:>10,} {h['gmac_1080p']:>11.2f} {'-' if p is None else format(p, '.3f'):>8}")
    n0, n1 = params_of(model), history[-1]["params"]
    print(f"parameters {n0:,} -> {n1:,} ({100 * (n1 - n0) / n0:+.1f}% against {args.src})")
    if not finetune_fn:
        print("note: pruned without finetuning (no --finetune-steps/--data): quality is not recovered")
    save_model(args.dst, pruned)
    print(f"wrote {args.dst} ({pruned.arch.form})")
    return 0


# ----------------------------------------------------------------------------- main
DELEGATED = {"train": "prfdn_jax.train", "pipeline": "prfdn_jax.pipeline", "bench": "prfdn_jax.bench"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prfdn", description="PRFDN real-time super-resolution in JAX")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    u = sub.add_parser("upscale", help="upscale images with a built-in or given model")
    u.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    u.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input image) or folder (several inputs, or a folder input)")
    _add_model_args(u)
    u.add_argument("--tile", type=int, default=0, metavar="PX",
                   help="run in overlapping PX x PX tiles (large images; 0 = whole image)")
    u.set_defaults(func=cmd_upscale)

    e = sub.add_parser("eval", help="PSNR/SSIM on a folder with HR/ (and optional LR_bicubic/X{S}/)")
    _add_model_args(e, required=True)
    e.add_argument("--data", required=True, metavar="DIR")
    e.add_argument("--degradation", choices=("matlab", "ntire"), default="matlab",
                   help="LR when made from HR: MATLAB bicubic (default; shipped LR used when present) "
                        "or NTIRE (PIL bicubic + JPEG 90, always made from HR)")
    e.add_argument("--json", action="store_true", help="last stdout line: one JSON object")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("models", help="list built-in models, or describe a weights file")
    m.add_argument("--weights", metavar="PATH")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    r = sub.add_parser("reparam", help="merge a branch network's branches into one wide network (exact)")
    r.add_argument("src", metavar="SRC", help="branch checkpoint (.pth or ours)")
    r.add_argument("dst", metavar="DST", help="output model file (.safetensors)")
    r.add_argument("--merged", action="store_true",
                   help="write the dense merged layout (concat/split as 1x1 convs) instead of the grouped wide one")
    r.set_defaults(func=cmd_reparam)

    q = sub.add_parser("prune", help="prune a wide/merged network with Torch-Pruning (finetuning between steps)")
    q.add_argument("src", metavar="SRC")
    q.add_argument("dst", metavar="DST")
    q.add_argument("--ratio", type=float, required=True, help="channel pruning ratio (0..1)")
    q.add_argument("--steps", type=int, default=1, help="iterative pruning steps")
    q.add_argument("--uniform", action="store_true",
                   help="keep every branch the same width: the result stays a wide (grouped) network "
                        "(default for a branch/wide input)")
    q.add_argument("--free", action="store_true",
                   help="any width per layer: merge into the dense layout first, then prune "
                        "(default for a merged input; merging multiplies a wide net's parameters by ~N)")
    q.add_argument("--importance", default="magnitude", choices=("magnitude", "l1", "l2", "random", "taylor"))
    q.add_argument("--finetune-steps", type=int, default=0)
    q.add_argument("--data", nargs="+", metavar="DIR", help="training images for finetuning")
    q.add_argument("--config", default="experiments/smoke_x2.py", help="training config for finetuning")
    q.add_argument("--val", metavar="DIR", help="validation folder with HR/ (PSNR per step)")
    q.set_defaults(func=cmd_prune)

    for name, help_ in (("train", "train a network (see experiments/)"),
                        ("pipeline", "the four-stage PRFDN recipe with a report"),
                        ("bench", "latency benchmarks (prints tables)")):
        sub.add_parser(name, help=help_, add_help=False)
    return p


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.strip("'\"") if isinstance(e, KeyError) else msg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] in DELEGATED:
            import importlib

            return importlib.import_module(DELEGATED[argv[0]]).main(argv[1:])
        args = build_parser().parse_args(argv)
        if getattr(args, "ratio", None) is not None and not 0 < args.ratio < 1:
            raise CLIError(f"--ratio must be between 0 and 1, got {args.ratio}")
        return args.func(args)
    except KeyboardInterrupt:
        print("prfdn: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - the one place that turns errors into one line
        if os.environ.get("PRFDN_DEBUG"):
            raise
        from prfdn_jax.checkpoint import WeightsError
        from prfdn_jax.imaging import ImageError
        from prfdn_jax.registry import UnknownModelError

        known = (CLIError, WeightsError, ImageError, UnknownModelError, ValueError, OSError)
        prefix = "error" if isinstance(e, known) else f"internal error ({type(e).__name__})"
        print(f"prfdn: {prefix}: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
