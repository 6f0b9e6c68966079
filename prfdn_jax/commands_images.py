"""The image commands of ``prfdn``: upscale, eval, models (see :mod:`prfdn_jax.commands` for the others).

Large images are tiled automatically: :func:`prfdn_jax.inference.choose_tile` picks the largest tile
with which the image fits ``--memory-budget`` (whole image when it fits); an explicit ``--tile`` wins.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from prfdn_jax.commands import (EXIT_ERROR, CLIError, _progress, check_model_args, check_writable, eval_set,
                                one_line, resolve_model)

TILE_BAR_MIN = 8  # a progress bar over the tiles of one image when it has more than this many


# ----------------------------------------------------------------------------- shared
def _budget_gb(args) -> float:
    from prfdn_jax.inference import default_budget_gb

    if args.memory_budget is None:
        return default_budget_gb()
    if not args.memory_budget > 0:
        raise CLIError(f"--memory-budget must be more than 0 GB, got {args.memory_budget}")
    return args.memory_budget


class _TileBar:
    """``progress(done, total)`` for :func:`~prfdn_jax.inference.upscale_array`: a tqdm bar over the tiles
    on stderr (a terminal only) when an image has more than :data:`TILE_BAR_MIN` tiles."""

    def __init__(self, desc: str):
        self.desc, self.bar = desc, None

    def __call__(self, done: int, total: int) -> None:
        if total <= TILE_BAR_MIN:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=self.desc, unit="tile", file=sys.stderr, disable=None, leave=False,
                            dynamic_ncols=True)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _auto_tile(model, h: int, w: int, budget_gb: float, overlap: int, alpha: bool = False) -> int:
    """The tile for an ``h x w`` image within ``budget_gb`` (0: whole image); MemoryError's text when none fits."""
    from prfdn_jax.inference import GB, choose_tile, device_memory

    try:
        return choose_tile(model.arch, h, w, budget_gb * GB, overlap, device_bytes=device_memory(), alpha=alpha)
    except MemoryError as e:
        raise CLIError(f"{w}x{h} x{model.arch.scale} {e}, more than the {budget_gb:g} GB memory budget "
                       "(raise --memory-budget)") from None


def _luma(rgb):
    """BT.601 luma of an ``(H, W, 3)`` uint8 image as ``(H, W)`` uint8, a few rows at a time."""
    import numpy as np

    out = np.empty(rgb.shape[:2], np.uint8)
    coef = np.array([0.299, 0.587, 0.114])
    for r in range(0, len(rgb), 256):
        out[r:r + 256] = np.clip(np.round(rgb[r:r + 256] @ coef), 0, 255)
    return out


# ----------------------------------------------------------------------------- upscale
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


def _plan_outputs(paths: list[Path], had_dir: bool, out: Path, overwrite: bool) -> list[Path]:
    """The output file of every input, checked before any work: extensions, folders, writability, inputs."""
    from prfdn_jax.imaging import IMAGE_EXTENSIONS

    if len(paths) == 1 and not had_dir and not out.is_dir():
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CLIError(f"{out}: output file needs an image extension ({', '.join(IMAGE_EXTENSIONS)})")
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise CLIError(f"{out}: exists and is not a folder (several inputs need an output folder)")
        if not out.exists() and out.suffix.lower() in IMAGE_EXTENSIONS:
            raise CLIError(f"{out}: {len(paths)} images need an output folder; name it without an image "
                           "extension (or upscale one image at a time)")
        targets = [out / (p.stem + ".png") for p in paths]
        dup = {t for t in targets if targets.count(t) > 1}
        if dup:
            raise CLIError(f"two inputs would both be written to {sorted(dup)[0]}; upscale them separately")
    check_writable(targets[0])
    if not overwrite:
        inputs = {os.path.realpath(p): p for p in paths}
        for t in targets:
            if os.path.realpath(t) in inputs:
                raise CLIError(f"{t}: would overwrite the input {inputs[os.path.realpath(t)]} (add --overwrite to "
                               "replace it)")
    return targets


def cmd_upscale(args) -> int:
    from prfdn_jax.deploy import deploy
    from prfdn_jax.imaging import ImageError, read_image, write_image
    from prfdn_jax.inference import DEFAULT_OVERLAP, MIN_SIZE, upscale_array

    overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if args.tile < 0 or 0 < args.tile < MIN_SIZE:
        raise CLIError(f"--tile {args.tile}: a tile needs at least {MIN_SIZE} px (0: whole image, or automatic "
                       "tiles for large images)")
    if overlap < 0 or (args.tile and overlap >= args.tile):
        raise CLIError(f"--overlap {overlap}: need 0 <= overlap" + (f" < tile ({args.tile})" if args.tile else ""))
    budget = _budget_gb(args)
    check_model_args(args)
    from prfdn_jax.video import is_video

    if any(is_video(p) for p in args.inputs):
        if len(args.inputs) != 1 or not is_video(args.output):
            raise CLIError("a video is upscaled on its own: prfdn upscale IN.mp4 -o OUT.mp4")
        if not Path(args.inputs[0]).is_file():
            raise CLIError(f"{args.inputs[0]}: no such file")
        from prfdn_jax.commands_export import upscale_video_command

        return upscale_video_command(args, Path(args.inputs[0]))
    paths, had_dir = _collect_inputs(args.inputs)
    out = Path(args.output)
    targets = _plan_outputs(paths, had_dir, out, args.overwrite)
    model, label = resolve_model(args)
    scale = model.arch.scale
    apply = deploy(model, dtype=args.dtype)
    failed = 0
    for src, dst in _progress(zip(paths, targets), len(paths), f"x{scale} {label}"):
        bar = _TileBar(src.name)
        try:
            img = read_image(src)
            h, w = img.shape
            if min(h, w) < MIN_SIZE:
                raise ImageError(f"{src}: image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
            tile = args.tile
            if not tile:
                try:
                    tile = _auto_tile(model, h, w, budget, overlap, img.alpha is not None)
                except CLIError as e:
                    raise ImageError(f"{src}: {e}") from None
                if tile:
                    print(f"note: {src} is {w}x{h}: upscaling in {tile}x{tile} tiles to stay within {budget:g} GB "
                          "(--tile to choose)", file=sys.stderr)
            sr = upscale_array(apply, img.rgb, scale, tile=tile, overlap=overlap, progress=bar)
            bar.close()
            alpha = None
            if img.alpha is not None:
                import numpy as np
                from PIL import Image as PILImage

                alpha = np.asarray(PILImage.fromarray(img.alpha).resize((w * scale, h * scale), PILImage.BICUBIC))
            if any(n.startswith("grayscale") for n in img.notes):
                sr = _luma(sr)  # grey in, grey out: BT.601 luma of the (nearly grey) network output
            write_image(dst, sr, alpha)
            del sr, alpha
            for note in img.notes:
                print(f"note: {src}: {note}", file=sys.stderr)
            if len(paths) == 1:
                print(f"{src} -> {dst} ({w}x{h} -> {w * scale}x{h * scale}, {label})")
        except (ImageError, ValueError, OSError) as e:
            failed += 1
            print(f"prfdn: error: {one_line(e)}", file=sys.stderr)
        finally:
            bar.close()
    if len(paths) > 1:
        print(f"upscaled {len(paths) - failed}/{len(paths)} images x{scale} with {label} -> {out}")
    return EXIT_ERROR if failed else 0


# ----------------------------------------------------------------------------- eval
def _tiled_forward(apply, model, budget_gb: float, names: list[str]):
    """``apply`` for :func:`prfdn_jax.evaluate.evaluate`, tiling an image that does not fit ``budget_gb``
    (with a note naming it: its scores then differ slightly from whole-image inference)."""
    import numpy as np

    from prfdn_jax.inference import DEFAULT_OVERLAP, upscale_array

    seen = iter(names)

    def f(x):
        name = next(seen, "image")
        h, w = x.shape[1:3]
        try:
            tile = _auto_tile(model, h, w, budget_gb, DEFAULT_OVERLAP)
        except CLIError as e:
            raise CLIError(f"{name}: {e}") from None
        if not tile:
            return apply(x)
        print(f"note: {name} is {w}x{h}: upscaling in {tile}x{tile} tiles to stay within {budget_gb:g} GB "
              "(scores differ slightly from whole-image inference; --memory-budget to change)", file=sys.stderr)
        img = np.clip(np.asarray(x[0]), 0, 255).astype(np.uint8)
        return upscale_array(apply, img, model.arch.scale, tile=tile)[None].astype(np.float32)

    return f


def cmd_eval(args) -> int:
    from prfdn_jax.deploy import deploy
    from prfdn_jax.evaluate import evaluate

    budget = _budget_gb(args)
    check_model_args(args)
    if not Path(args.data).is_dir():
        raise CLIError(f"--data {args.data}: no such folder")
    model, label = resolve_model(args)
    scale = model.arch.scale
    items = eval_set(Path(args.data), scale, args.degradation)
    bar = _progress(None, len(items), "eval")
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
