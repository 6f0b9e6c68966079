"""Evaluation: loading an evaluation set, and PSNR/SSIM of a network on it.

Used by ``prfdn eval``, training validation and the pipeline report, so all three give the same numbers.

An evaluation set is built from entries (:func:`load_eval_set`):

* a set folder holding ``HR/`` and optionally ``LR_bicubic/X{s}/{stem}x{s}.png`` (Set5, Set14, ...);
  an LR image that is not there is made from the HR;
* a folder of HR images (every LR made from the HR);
* an ``(HR folder, LR folder)`` pair: the LR of ``a.png`` is ``a x{s}.png`` or ``a.png`` there (required).

HR images are modcropped to a multiple of the scale. LR made from HR: MATLAB bicubic (``'matlab'``,
the benchmarks' LR) or the NTIRE 2023 degradation (``'ntire'``: PIL bicubic + JPEG 90; always made
from HR, shipped LR ignored). ``crop`` centre-crops the HR (smoke runs) and makes its LR.

:func:`evaluate` upscales every LR whole (no tiles) and scores it with
:func:`prfdn_jax.metrics.evaluate_pair`: PSNR/SSIM on Y with ``scale`` border pixels cropped (papers)
and on RGB without crop (NTIRE). The forward is jitted once per network structure and input shape on
one device (:func:`device_forward`), shared by every caller in the process.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax import imaging, resize
from prfdn_jax.inference import NonFiniteOutput, upscale_array
from prfdn_jax.metrics import evaluate_pair
from prfdn_jax.resize import DEGRADATIONS
from prfdn_jax.workdir import host_tree

METRICS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")

EvalItem = tuple[str, np.ndarray, np.ndarray]  # (name, LR uint8, HR uint8)


class EvalSetError(ValueError):
    """An evaluation set that cannot be loaded; the message is one line naming the folder or image."""


# ----------------------------------------------------------------------------- sets
def load_eval_set(entries, scale: int, *, limit: int = 0, crop: int = 0,
                  degradation: str = "matlab") -> list[EvalItem]:
    """``[(name, lr, hr)]`` (uint8) of ``entries``: one entry or a sequence of them (see the module doc).

    limit: first N images per entry (0: all). crop: centre-crop every HR to ``crop x crop`` (rounded
    down to the scale) and make its LR. Names are the image stems.
    """
    if degradation not in DEGRADATIONS:
        raise EvalSetError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")
    if isinstance(entries, (str, os.PathLike)):
        entries = [entries]
    out: list[EvalItem] = []
    for e in entries:
        if isinstance(e, (str, os.PathLike)):
            root = Path(e)
            if (root / "HR").is_dir():  # a set folder: shipped LR where present
                hr_dir, lr_dir, required = root / "HR", root / "LR_bicubic" / f"X{scale}", False
            else:
                hr_dir, lr_dir, required = root, None, False
        else:
            hr_dir, lr_dir, required = Path(e[0]), Path(e[1]), True
        try:
            files = imaging.list_images(hr_dir)
        except imaging.ImageError as err:
            raise EvalSetError(str(err)) from None
        for p in files[: limit or None]:
            out.append((p.stem, *_pair(p, lr_dir, required, scale, crop, degradation)))
    return out


def _pair(p: Path, lr_dir: Path | None, required: bool, scale: int, crop: int, degradation: str):
    hr = resize.modcrop(imaging.read_image(p).rgb, scale)
    if crop:
        c = crop - crop % scale
        h, w = hr.shape[:2]
        y, x = max((h - c) // 2, 0), max((w - c) // 2, 0)
        hr = resize.modcrop(hr[y:y + c, x:x + c], scale)
    if degradation == "ntire":
        return resize.ntire_degrade(hr, scale), hr
    if lr_dir is not None and not crop:
        names = (f"{p.stem}x{scale}{p.suffix}", p.name) if required else (f"{p.stem}x{scale}.png",)
        for name in names:
            if (lr_dir / name).is_file():
                return imaging.read_image(lr_dir / name).rgb, hr
        if required:
            raise EvalSetError(f"no LR image for {p.name} in {lr_dir}")
    return resize.downscale(hr, scale, "matlab"), hr


# ----------------------------------------------------------------------------- forward
FWD_CACHE_SIZE = 8  # jitted forwards kept per process (pruning evaluates many networks)
_FWD_CACHE: OrderedDict = OrderedDict()  # network structure (the apply path is part of it) -> forward, LRU


def cached_forward(graphdef, rest):
    """Jitted ``fwd(params, x)``: ``(B, H, W, 3)`` float -> SR, memoised per network structure (the
    :data:`FWD_CACHE_SIZE` most recently used)."""
    key = (graphdef, jax.tree.structure(rest))
    if key in _FWD_CACHE:
        _FWD_CACHE.move_to_end(key)
        return _FWD_CACHE[key]
    fwd = _FWD_CACHE[key] = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))
    while len(_FWD_CACHE) > FWD_CACHE_SIZE:
        _FWD_CACHE.popitem(last=False)
    return fwd


def device_forward(graphdef, rest, params, device=None) -> Callable:
    """``f(x)``: ``(B, H, W, 3)`` float -> SR on one ``device`` (default: the first local one).

    Parameters and input are committed to that device, so every caller with the same network and
    input shape shares one compiled executable (training validation, pipeline PSNR and latency, eval).
    """
    device = device or jax.local_devices()[0]
    fwd = cached_forward(graphdef, rest)
    p = jax.device_put(host_tree(params), device)

    def f(x):
        x = x if isinstance(x, jax.Array) and x.dtype == jnp.float32 else np.asarray(x, np.float32)
        return fwd(p, jax.device_put(x, device))

    return f


def forward(model: nnx.Module, device=None) -> Callable:
    """:func:`device_forward` of a network (its current parameters)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return device_forward(graphdef, rest, params, device)


# ----------------------------------------------------------------------------- metrics
def evaluate(model, items: Sequence[EvalItem], scale: int, *, with_ssim: bool = True,
             progress: Callable[[int, int], object] | None = None) -> dict:
    """Upscale every ``(name, lr, hr)`` of ``items`` and score it.

    model: a network, or a forward ``f(x)`` (e.g. :func:`device_forward`). with_ssim=False skips the
    SSIMs (training validation needs PSNR-Y only). progress: called as ``progress(done, total)`` after
    each image. Returns ``{'rows': [{'image', 'psnr_y', ...}], 'images': n, 'psnr_y': mean, ...}``
    (means of every metric computed; none for an empty set). An output holding NaN or Inf raises
    :class:`~prfdn_jax.inference.NonFiniteOutput` naming the image.
    """
    f = forward(model) if isinstance(model, nnx.Module) else model
    rows = []
    for i, (name, lr, hr) in enumerate(items):
        try:
            sr = upscale_array(f, lr, scale)
        except NonFiniteOutput as e:  # no score of garbage: one line naming the image
            raise NonFiniteOutput(f"{name}: {e}") from None
        rows.append({"image": name, **evaluate_pair(sr, hr, scale, with_ssim=with_ssim)})
        if progress is not None:
            progress(i + 1, len(items))
    means = {k: float(np.mean([r[k] for r in rows])) for k in METRICS if rows and k in rows[0]}
    return {"rows": rows, "images": len(rows), **means}
