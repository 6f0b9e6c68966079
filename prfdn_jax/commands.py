"""The bodies of the ``prfdn`` commands; :mod:`prfdn_jax.cli` parses the command line and reports errors.

Each ``cmd_*(args)`` takes the parsed arguments and returns an exit status; bad input raises
:class:`CLIError` (or another one-line error the CLI reports). Heavy modules are imported by the
command that needs them, so ``prfdn --help`` and ``prfdn models`` start fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from prfdn_jax.extras import require_torch

EXIT_ERROR = 1


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg.strip("'\"") if isinstance(e, KeyError) else msg


# ----------------------------------------------------------------------------- helpers
def _progress(items, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(items, total=total, desc=desc, unit="img", file=sys.stderr, disable=total <= 1,
                dynamic_ncols=True, leave=False)


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
    from prfdn_jax.deploy import deploy
    from prfdn_jax.inference import DEFAULT_OVERLAP, MIN_SIZE, upscale_array

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
    overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if args.tile and not (MIN_SIZE <= args.tile and 0 <= overlap < args.tile):
        raise CLIError(f"--tile {args.tile} --overlap {overlap}: need a tile of at least {MIN_SIZE} px and "
                       "0 <= overlap < tile")
    model, label = _resolve_model(args)
    scale = model.arch.scale
    apply = deploy(model, dtype=args.dtype)
    failed = 0
    for src, dst in _progress(zip(paths, targets), len(paths), f"x{scale} {label}"):
        try:
            img = read_image(src)
            h, w = img.shape
            if min(h, w) < MIN_SIZE:
                raise ImageError(f"{src}: image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
            sr = upscale_array(apply, img.rgb, scale, tile=args.tile, overlap=overlap)
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
            print(f"prfdn: error: {one_line(e)}", file=sys.stderr)
    if len(paths) > 1:
        print(f"upscaled {len(paths) - failed}/{len(paths)} images x{scale} with {label} -> {out}")
    return EXIT_ERROR if failed else 0


# ----------------------------------------------------------------------------- eval
def _eval_set(data: Path, scale: int, degradation: str = "matlab") -> list:
    """The images of a folder with ``HR/`` (and optional ``LR_bicubic/X{s}/``); see :mod:`prfdn_jax.evaluate`."""
    from prfdn_jax.evaluate import load_eval_set

    hr_dir = data / "HR"
    if not hr_dir.is_dir():
        raise CLIError(f"{data}: no HR/ folder (expected {hr_dir})")
    items = load_eval_set(data, scale, degradation=degradation)
    if not items:
        raise CLIError(f"{hr_dir}: no images")
    return items


def cmd_eval(args) -> int:
    from prfdn_jax.deploy import deploy
    from prfdn_jax.evaluate import evaluate

    model, label = _resolve_model(args)
    scale = model.arch.scale
    items = _eval_set(Path(args.data), scale, args.degradation)
    bar = _progress(None, len(items), "eval")
    try:
        res = evaluate(deploy(model, dtype=args.dtype), items, scale, progress=lambda done, total: bar.update(1))
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
    from prfdn_jax.config import load_config
    from prfdn_jax.train import finetune

    config = load_config(args.config)
    return lambda m, step: finetune(m, config, args.data, args.finetune_steps)


def _val_callback(val_dir: Path, scale: int):
    """``f(model) -> PSNR-Y`` on a validation folder with ``HR/`` (loaded once)."""
    from prfdn_jax.evaluate import evaluate

    items = _eval_set(val_dir, scale)
    return lambda m: evaluate(m, items, scale, with_ssim=False)["psnr_y"]


def cmd_prune(args) -> int:
    require_torch("prfdn prune", pruning=True)
    from prfdn_jax.checkpoint import load_any, save_model
    from prfdn_jax.macs import params as params_of
    from prfdn_jax.prune import prune_model

    if not 0 < args.ratio < 1:
        raise CLIError(f"--ratio must be between 0 and 1, got {args.ratio}")
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
    val_fn = _val_callback(Path(args.val), model.arch.scale) if args.val else None
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


# ----------------------------------------------------------------------------- train / pipeline
def cmd_train(args) -> int:
    from prfdn_jax.config import ConfigError, TrainConfig, load_config, override
    from prfdn_jax.train import train

    config = load_config(args.config)
    if not isinstance(config, TrainConfig):
        stages = getattr(config, "train_stages", ())
        if args.stage not in stages:
            raise ConfigError(f"{args.config} is a pipeline config: pass --stage {{{','.join(stages)}}}")
        config = getattr(config, args.stage)
    if args.set:
        config = override(config, args.set)
    if args.init:
        config = config.replace(init_weights=args.init)
    train(config, args.workdir, data_dirs=args.data, steps=args.steps, val_dirs=args.val)
    return 0


def cmd_pipeline(args) -> int:
    from prfdn_jax.config import ConfigError, PipelineConfig, load_config
    from prfdn_jax.pipeline import run_pipeline

    config = load_config(args.config)
    if not isinstance(config, PipelineConfig):
        raise ConfigError(f"{args.config}: not a pipeline config (use prfdn train for a TrainConfig)")
    if args.stages:
        config = config.replace(stages=tuple(args.stages))
    run_pipeline(config, args.data, args.workdir, val_dirs=args.val)
    return 0


# ----------------------------------------------------------------------------- bench
def _size(text: str, what: str = "--size") -> tuple[int, int]:
    """``'540x960'`` -> (540, 960); ``'256'`` -> (256, 256); each side at least MIN_SIZE."""
    from prfdn_jax.spec import MIN_SIZE

    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < MIN_SIZE:
        raise CLIError(f"{what} {text!r}: expected HxW (or one number) with both sides >= {MIN_SIZE}")
    return parts[0], parts[1]


def cmd_bench(args) -> int:
    """``prfdn bench paths`` or the inference benchmark (JAX deployed vs every PyTorch mode)."""
    from prfdn_jax import bench

    if args.what == "paths":
        size = _size(args.size or "128")[0]
        bench.print_paths(bench.bench_paths(args.layout, args.nf, size, args.batch, args.repeats), args.layout,
                          args.nf, size, args.batch, args.repeats)
        return 0
    if args.backend in ("torch", "both"):
        require_torch("the PyTorch side of prfdn bench (use --backend jax without it)")
    for name, v in (("--batch", args.batch), ("--runs", args.runs), ("--warmup", args.warmup)):
        if v is not None and v < (0 if name == "--warmup" else 1):
            raise CLIError(f"{name} must be {'>= 0' if name == '--warmup' else '>= 1'}, got {v}")
    model, label = _resolve_model(args)
    modes = args.torch_modes.split(",") if args.torch_modes else None
    res = bench.bench_inference(model, _size(args.size or "540x960"), args.batch, args.dtype, args.backend,
                                args.warmup, args.runs, modes, baseline=args.baseline)
    bench.print_inference(res, label)
    if args.json:
        keys = ("jax_ms", "torch_ms", "torch_mode", "ratio", "device", "size", "batch", "dtype")
        print(json.dumps({k: res.get(k) for k in keys}))
    return 0
