"""``prfdn upscale``: images (files, folders) or one video, with a built-in or given model.

Large images are tiled automatically: :func:`prfdn_jax.inference.choose_tile` picks the largest tile
with which the image fits ``--memory-budget`` (whole image when it fits); an explicit ``--tile`` wins.
A video input (``IN.mp4 -o OUT.mp4``) goes to :func:`prfdn_jax.video.upscale_video`, its frames tiled by
the same rule (:func:`tile_for`; whole frames run ``video_batch`` at a time when that many fit).

Transparency (:func:`upscale_rgba`): the network upscales premultiplied colour and the result is divided
by the bicubic-upscaled alpha, so nothing under transparent pixels bleeds into the edges; an output
without an alpha channel (.jpg, .bmp) is flattened onto ``--background`` (default white), with a note.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prfdn_jax.commands.common import (EXIT_ERROR, CLIError, add_memory_budget, add_model_args, auto_tile,
                                       budget_gb, check_model_args, check_writable, one_line,
                                       resolve_model)
from prfdn_jax.fileio import no_such
from prfdn_jax.progress import progress

HELP = "upscale images with a built-in or given model"
TILE_BAR_MIN = 8  # a progress bar over the tiles of one image when it has more than this many


def add_arguments(u) -> None:
    from prfdn_jax.deploy import DTYPES
    from prfdn_jax.folder_jobs import EXTS
    from prfdn_jax.video import DEFAULT_PRESET, PRESETS

    u.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    u.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input image) or folder (several inputs, or a folder input)")
    add_model_args(u)
    u.add_argument("--tile", type=int, default=0, metavar="PX",
                   help="run in PX x PX tiles, batched, overlaps feathered (default 0: the whole image, or "
                        "automatic tiles when it does not fit --memory-budget)")
    u.add_argument("--overlap", type=int, default=None, metavar="PX",
                   help="LR pixels shared by neighbouring tiles (default 16: Urban100 x2 at tile 128 within 0.0012 dB "
                        "of whole images)")
    u.add_argument("--dtype", choices=tuple(DTYPES), default="float32",
                   help="compute dtype (float16/bfloat16: faster on GPUs; the output tail stays float32)")
    add_memory_budget(u)
    u.add_argument("--overwrite", action="store_true", help="allow an output to replace an input image")
    u.add_argument("--crf", type=int, default=18, metavar="N",
                   help="video: x264 quality 0..51, lower is better (default 18, visually lossless)")
    u.add_argument("--lossless", action="store_true", help="video: lossless RGB H.264 (libx264rgb)")
    u.add_argument("--preset", choices=PRESETS, default=DEFAULT_PRESET,
                   help="video: x264 speed, ultrafast .. veryslow (default medium); a faster preset leaves more of "
                        "the CPU to the network and writes a larger file at the same --crf")
    u.add_argument("--background", type=parse_colour, default="white", metavar="COLOUR",
                   help="transparent images written where there is no alpha channel (.jpg, .bmp) are flattened "
                        "onto this colour: white (default), black, #RRGGBB or any CSS colour name")
    u.add_argument("--suffix", default="", metavar="S",
                   help="output names in a folder: the input's stem + S (e.g. _x2: photo.jpg -> photo_x2.png)")
    u.add_argument("--ext", choices=EXTS, default=None,
                   help="format of the outputs in a folder: png (default), jpg, webp, or auto (each input's own)")
    u.add_argument("--quality", type=_quality, default=None, metavar="Q",
                   help="JPEG / WebP quality 1..100 (default 95)")
    u.add_argument("--outscale", type=_positive, default=None, metavar="F",
                   help="final scale: the network, then a Lanczos resize to int(F x input size) (e.g. 3.5 with an "
                        "x4 model; default: the model's scale, no resize)")
    u.add_argument("--skip-existing", action="store_true",
                   help="resume a folder job: an output already there (a complete image) is skipped and counted")
    _add_throughput_args(u)


def _add_throughput_args(u) -> None:
    """``--bucket`` and ``--no-compile-cache`` (:mod:`prfdn_jax.throughput`)."""
    from prfdn_jax.commands.common import add_compile_cache, parse_bucket

    u.add_argument("--bucket", type=parse_bucket, default="auto", metavar="auto|off|PX",
                   help="several images: run them padded to a few shapes, one compile each (exact: the padding "
                        "is masked). auto (default): shapes planned from the images' sizes; PX: sides rounded up "
                        "to multiples of PX; off: one compile per image size")
    add_compile_cache(u)


def parse_colour(text: str) -> tuple[int, int, int]:
    """``--background``: a colour name or ``#RRGGBB`` -> (r, g, b); argparse reports a bad one (exit 2)."""
    import argparse

    from PIL import ImageColor

    try:
        return ImageColor.getrgb(text)[:3]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a colour (white, black, #RRGGBB, ...)") from None


def _positive(text: str) -> float:
    """``--outscale``: a finite number > 0 (argparse reports anything else: exit 2)."""
    import argparse
    import math

    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return v


def _quality(text: str) -> int:
    """``--quality``: an integer 1..100."""
    import argparse

    if not (text.isdigit() and 1 <= int(text) <= 100):
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer in 1..100")
    return int(text)


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


def _luma(rgb):
    """BT.601 luma of an ``(H, W, 3)`` uint8 image as ``(H, W)`` uint8, a few rows at a time."""
    import numpy as np

    out = np.empty(rgb.shape[:2], np.uint8)
    coef = np.array([0.299, 0.587, 0.114])
    for r in range(0, len(rgb), 256):
        out[r:r + 256] = np.clip(np.round(rgb[r:r + 256] @ coef), 0, 255)
    return out


# ----------------------------------------------------------------------------- images
def _collect_inputs(inputs: list[str]) -> tuple[list[Path], bool]:
    """Image paths from files and folders; second value: whether any input was a folder."""
    from prfdn_jax.imaging import IMAGE_EXTENSIONS, list_images

    paths, had_dir = [], False
    for s in inputs:
        p = Path(s)
        if p.is_dir():
            had_dir = True
            found = list_images(p)
            if not found:
                raise CLIError(f"{p}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths.extend(found)
        elif p.exists():
            paths.append(p)
        else:
            raise CLIError(f"{p}: {no_such(p)}")
    return paths, had_dir


def _plan_outputs(paths: list[Path], had_dir: bool, out: Path, args) -> list[Path]:
    """The output file of every input, checked before any work: extensions, folders, writability, inputs;
    in a folder named by :func:`~prfdn_jax.folder_jobs.output_name` (``--suffix``, ``--ext``)."""
    from prfdn_jax.imaging import IMAGE_EXTENSIONS

    if len(paths) == 1 and not had_dir and not out.is_dir():
        if out.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CLIError(f"{out}: output file needs an image extension ({', '.join(IMAGE_EXTENSIONS)})")
        for name in ("suffix", "ext"):
            if getattr(args, name):
                raise CLIError(f"--{name} names the files written into an output folder; {out} is one file (name it "
                               "as you want it)")
        targets = [out]
    else:
        if out.exists() and not out.is_dir():
            raise CLIError(f"{out}: exists and is not a folder (several inputs need an output folder)")
        if not out.exists() and out.suffix.lower() in IMAGE_EXTENSIONS:
            raise CLIError(f"{out}: {len(paths)} images need an output folder; name it without an image "
                           "extension (or upscale one image at a time)")
        from prfdn_jax.folder_jobs import output_name

        targets = [out / output_name(p, args.suffix, args.ext) for p in paths]
        dup = {t for t in targets if targets.count(t) > 1}
        if dup:
            raise CLIError(f"two inputs would both be written to {sorted(dup)[0]}; upscale them separately")
    check_writable(targets[0])
    if not args.overwrite:
        inputs = {os.path.realpath(p): p for p in paths}
        for t in targets:
            if os.path.realpath(t) in inputs:
                raise CLIError(f"{t}: would overwrite the input {inputs[os.path.realpath(t)]} (add --overwrite to "
                               "replace it)")
    return targets


def run(args) -> int:
    from prfdn_jax.deploy import deploy
    from prfdn_jax.imaging import ImageError
    from prfdn_jax.inference import DEFAULT_OVERLAP, MIN_SIZE, NonFiniteOutput

    overlap = DEFAULT_OVERLAP if args.overlap is None else args.overlap
    if args.tile < 0 or 0 < args.tile < MIN_SIZE:
        raise CLIError(f"--tile {args.tile}: a tile needs at least {MIN_SIZE} px (0: whole image, or automatic "
                       "tiles for large images)")
    if overlap < 0 or (args.tile and overlap >= args.tile):
        raise CLIError(f"--overlap {overlap}: need 0 <= overlap" + (f" < tile ({args.tile})" if args.tile else ""))
    budget = budget_gb(args)
    check_model_args(args)
    from prfdn_jax.video import is_video

    if any(is_video(p) for p in args.inputs):
        if len(args.inputs) != 1 or not is_video(args.output):
            raise CLIError("a video is upscaled on its own: prfdn upscale IN.mp4 -o OUT.mp4")
        if not Path(args.inputs[0]).is_file():
            raise CLIError(f"{args.inputs[0]}: {no_such(args.inputs[0], 'file')}")
        for name in ("suffix", "ext", "quality", "outscale", "skip_existing"):
            if getattr(args, name):
                raise CLIError(f"--{name.replace('_', '-')} applies to images, not to a video")
        return _upscale_video(args, Path(args.inputs[0]), budget, overlap)
    paths, had_dir = _collect_inputs(args.inputs)
    out = Path(args.output)
    todo, skipped = _still_to_do(list(zip(paths, _plan_outputs(paths, had_dir, out, args))), args.skip_existing)
    if not todo:
        what = f"{out} is" if len(paths) == 1 else f"all {len(paths)} outputs are"
        print(f"nothing to upscale: {what} already there (--skip-existing)")
        return 0
    model, label = resolve_model(args)
    apply = deploy(model, dtype=args.dtype)
    apply, order = _bucketed(args, apply, model, [src for src, _ in todo], budget, overlap)
    todo = [todo[i] for i in order]
    failed = 0
    for src, dst in progress(todo, len(todo), f"x{model.arch.scale} {label}", unit="img", final=True):
        try:
            (w, h), (ow, oh) = _upscale_image(args, apply, model, src, dst, budget, overlap)
            if len(paths) == 1:
                print(f"{src} -> {dst} ({w}x{h} -> {ow}x{oh}, {label})")
        except NonFiniteOutput as e:  # the weights: every other image would fail too
            raise CLIError(f"{src}: {e}; {dst} not written") from None
        except (ImageError, ValueError, OSError) as e:
            failed += 1
            print(f"prfdn: error: {one_line(e)}", file=sys.stderr)
    if len(paths) > 1:
        skip = f", {skipped} skipped: already there (--skip-existing)" if skipped else ""
        print(f"upscaled {len(todo) - failed}/{len(paths)} images x{model.arch.scale} with {label} -> {out}{skip}")
    return EXIT_ERROR if failed else 0


def _still_to_do(pairs: list, skip_existing: bool) -> tuple[list, int]:
    """The (input, output) pairs to run and how many ``--skip-existing`` skips (outputs already there)."""
    if not skip_existing:
        return pairs, 0
    from prfdn_jax.folder_jobs import still_to_do

    todo, skipped, notes = still_to_do(pairs)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    return todo, skipped


def _bucketed(args, deployed, model, paths: list[Path], budget: float, overlap: int):
    """``(apply, order)`` of ``--bucket`` (:func:`prfdn_jax.throughput.for_images`): images that run whole
    (within ``--tile``, else within the budget) are planned; tiled ones keep their tile shape."""
    from prfdn_jax.throughput import for_images

    def whole(h: int, w: int) -> bool:
        if args.tile:
            return max(h, w) <= args.tile
        try:
            return auto_tile(model, h, w, budget, overlap) == 0
        except CLIError:
            return False

    return for_images(deployed, paths, args.bucket, model.arch.scale, whole)


def tile_for(args, model, what: str, w: int, h: int, budget: float, overlap: int, alpha: bool = False) -> int:
    """The LR tile of an image or of a video's frames (one rule for both): ``--tile``, else the automatic tile
    within ``--memory-budget`` (:func:`~prfdn_jax.commands.common.auto_tile`; 0: whole), with a note."""
    if args.tile:
        return args.tile
    tile = auto_tile(model, h, w, budget, overlap, alpha)
    if tile:
        print(f"note: {what} {w}x{h}: upscaling in {tile}x{tile} tiles to stay within {budget:g} GB (--tile to "
              "choose)", file=sys.stderr)
    return tile


def _upscale_image(args, apply, model, src: Path, dst: Path, budget: float, overlap: int):
    """Read ``src``, upscale it (tiled within the budget; then to ``--outscale``), write ``dst``, print the notes;
    ``((w, h) of src, (w, h) of dst)``."""
    from prfdn_jax.folder_jobs import outscale
    from prfdn_jax.imaging import ALPHA_EXTENSIONS, DEFAULT_QUALITY, ImageError, read_image, write_image
    from prfdn_jax.inference import MIN_SIZE

    img = read_image(src)
    h, w = img.shape
    if min(h, w) < MIN_SIZE:
        raise ImageError(f"{src}: image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    try:
        tile = tile_for(args, model, f"{src} is", w, h, budget, overlap, img.alpha is not None)
    except CLIError as e:
        raise ImageError(f"{src}: {e}") from None
    flatten = img.alpha is not None and dst.suffix.lower() not in ALPHA_EXTENSIONS
    bar = _TileBar(src.name)
    try:
        sr, alpha = upscale_rgba(apply, img.rgb, img.alpha, model.arch.scale, tile, overlap, bar,
                                 args.background if flatten else None)
    finally:
        bar.close()
    sr, alpha = outscale(sr, alpha, w, h, args.outscale, src)
    if any(n.startswith("grayscale") for n in img.notes):
        sr = _luma(sr)  # grey in, grey out: BT.601 luma of the (nearly grey) network output
    write_image(dst, sr, alpha, quality=args.quality or DEFAULT_QUALITY)
    notes = img.notes
    if flatten:
        hexa = "#{:02X}{:02X}{:02X}".format(*args.background)
        notes = [n for n in notes if "alpha channel upscaled" not in n]
        notes.append(f"transparency flattened onto {hexa} (--background): {dst.suffix} has no alpha channel")
    for note in notes:
        print(f"note: {src}: {note}", file=sys.stderr)
    return (w, h), (sr.shape[1], sr.shape[0])


# ----------------------------------------------------------------------------- alpha
def upscale_rgba(apply, rgb, alpha, scale: int, tile: int, overlap: int, progress=None, background=None):
    """``(rgb, alpha)`` upscaled: the colour by the network (tiled as :func:`~prfdn_jax.inference.upscale_array`),
    the alpha with bicubic. Where the alpha is not fully opaque the network sees premultiplied colour (what
    lies under transparent pixels cannot bleed into the edges: no dark fringe) and the result is divided
    by the upscaled alpha; a fully opaque image runs as an RGB one (bit-identical). ``background``
    ``(r, g, b)``: the result composited onto it, returned without alpha."""
    import numpy as np
    from PIL import Image as PILImage

    from prfdn_jax.inference import upscale_array

    if alpha is None:
        return upscale_array(apply, rgb, scale, tile=tile, overlap=overlap, progress=progress), None
    h, w = alpha.shape
    a_up = np.asarray(PILImage.fromarray(alpha).resize((w * scale, h * scale), PILImage.BICUBIC))
    if alpha.min() == 255:
        return upscale_array(apply, rgb, scale, tile=tile, overlap=overlap, progress=progress), (
            a_up if background is None else None)
    premultiplied = rgb * (alpha[..., None] / np.float32(255))
    sr = upscale_array(apply, premultiplied, scale, tile=tile, overlap=overlap, progress=progress)
    del premultiplied
    bg = None if background is None else np.asarray(background, np.float32)
    for r in range(0, len(sr), 256):  # a few rows at a time: no full-size float temporaries
        c, a = sr[r:r + 256].astype(np.float32), a_up[r:r + 256, :, None].astype(np.float32)
        if bg is None:
            c = np.where(a > 0, c * 255 / np.maximum(a, 1), 0)
        else:
            c += bg * (1 - a / 255)
        sr[r:r + 256] = np.clip(np.rint(c), 0, 255)
    return sr, (a_up if background is None else None)


# ----------------------------------------------------------------------------- video
def _upscale_video(args, src: Path, budget: float, overlap: int) -> int:
    """``prfdn upscale IN.mp4 -o OUT.mp4``: one video in, one video out, frames tiled as images are."""
    from prfdn_jax.deploy import deploy
    from prfdn_jax.inference import GB
    from prfdn_jax.video import upscale_video

    out = Path(args.output)
    if out.resolve() == src.resolve():
        raise CLIError(f"{out}: would overwrite the input video")
    check_writable(out)
    model, label = resolve_model(args)
    scale = model.arch.scale

    def frame_tile(w: int, h: int, batch: int) -> int:
        """0 (whole frames, ``batch`` at a time: their network and the pending batch's float output fit the
        budget), else one frame at a time in the tile an image of that size gets (whole: its size)."""
        if args.tile:
            return args.tile
        pending = batch * w * h * scale * scale * 3 * 4 / GB
        try:
            if budget > pending and auto_tile(model, h * batch, w, budget - pending, overlap) == 0:
                return 0
        except CLIError:
            pass
        return tile_for(args, model, f"{src}: frames are", w, h, budget, overlap) or max(w, h)

    bar = progress(None, None, f"x{scale} {src.name}", unit="frame")  # a bar, or plain lines in a log

    def frame_progress(done: int, total: int | None, fps: float) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        res = upscale_video(deploy(model, dtype=args.dtype), scale, src, out, crf=args.crf, lossless=args.lossless,
                            progress=frame_progress, tile=frame_tile, overlap=overlap, preset=args.preset)
    finally:
        bar.close()
    for note in res.notes:
        print(f"note: {src}: {note}", file=sys.stderr)
    for warning in res.warnings:
        print(f"prfdn: warning: {src}: {warning}", file=sys.stderr)
    (w, h), (ow, oh) = res.in_size, res.out_size
    print(f"{src} -> {out} ({res.frames} frames {w}x{h} -> {ow}x{oh} at {float(res.frame_rate):g} fps, audio "
          f"{res.audio}; {res.fps:.1f} frames/s, {label})")
    return 0
