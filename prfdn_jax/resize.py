"""Bicubic resizing and the benchmark degradations (numpy + Pillow only).

Two bicubic downscalers are provided and are never mixed silently; pick one by name:

* ``'matlab'`` -- an exact reimplementation of MATLAB ``imresize(img, 1/s, 'bicubic')`` (antialiased).
  This made the LR images of the classic benchmarks (Set5, Set14, B100, Urban100, DIV2K ``LR_bicubic``).
* ``'pil'`` -- ``PIL.Image.resize((w // s, h // s), BICUBIC)``, the NTIRE 2023 real-time SR degradation
  (followed by a JPEG quality-90 round trip in :func:`ntire_degrade`).
"""

from __future__ import annotations

import io
from functools import lru_cache

import numpy as np
from PIL import Image as _PILImage

__all__ = ["DEGRADATIONS", "FLAVOURS", "modcrop", "imresize_matlab", "downscale", "ntire_degrade", "degrade",
           "resize_lanczos"]

#: Names accepted by :func:`downscale`.
FLAVOURS: tuple[str, ...] = ("matlab", "pil")
#: How an LR image is made from its HR (:func:`degrade`): MATLAB bicubic, or the NTIRE 2023 degradation.
DEGRADATIONS: tuple[str, ...] = ("matlab", "ntire")


# --------------------------------------------------------------------------------------------------
# Geometry and resizing
# --------------------------------------------------------------------------------------------------


def _check_scale(scale) -> int:
    if isinstance(scale, (bool, np.bool_)) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale!r}")
    return int(scale)


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop (H, W[, C]) top-left to H and W multiples of ``scale`` (a view, same dtype)."""
    s = _check_scale(scale)
    img = np.asarray(img)
    if img.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    h, w = img.shape[0] - img.shape[0] % s, img.shape[1] - img.shape[1] % s
    return img[:h, :w]


def _cubic(x: np.ndarray) -> np.ndarray:
    """MATLAB's bicubic kernel (Keys, a = -0.5)."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    return (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1) + (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * (
        (ax > 1) & (ax <= 2)
    )


@lru_cache(maxsize=256)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """MATLAB ``contributions``: weights (out_len, taps) float64 and 0-based indices (out_len, taps).

    The kernel is widened by 1/scale when downscaling (antialiasing); out-of-range taps are mirrored
    (symmetric padding); weights are normalised per output sample; all-zero tap columns are dropped.
    """
    kernel_width = 4.0
    if scale < 1:

        def h(x):
            return scale * _cubic(scale * x)

        kernel_width = kernel_width / scale
    else:
        h = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    taps = int(np.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    weights = h(u[:, None] - idx)
    weights = weights / np.sum(weights, axis=1, keepdims=True)
    aux = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    idx = aux[np.mod(idx.astype(np.int64) - 1, aux.size)]
    keep = np.any(weights != 0, axis=0)
    weights = np.ascontiguousarray(weights[:, keep])
    idx = np.ascontiguousarray(idx[:, keep])
    weights.flags.writeable = False
    idx.flags.writeable = False
    return weights, idx


def _round_to(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round half away from zero, clip to the integer dtype's range, cast."""
    info = np.iinfo(dtype)
    r = np.sign(x) * np.floor(np.abs(x) + 0.5)
    return np.clip(r, info.min, info.max).astype(dtype)


def _resize_axis(a: np.ndarray, axis: int, out_len: int, scale: float, out_dtype) -> np.ndarray:
    """One 1-D MATLAB bicubic pass along ``axis`` (0 or 1) of a float64 array."""
    weights, idx = _contributions(a.shape[axis], out_len, float(scale))
    a = np.moveaxis(a, axis, 0)
    bshape = (out_len,) + (1,) * (a.ndim - 1)
    # Accumulate tap by tap, in MATLAB's order (vectorised over output samples and other axes).
    acc = weights[:, 0].reshape(bshape) * a[idx[:, 0]]
    for t in range(1, weights.shape[1]):
        acc += weights[:, t].reshape(bshape) * a[idx[:, t]]
    acc = np.moveaxis(acc, 0, axis)
    if out_dtype is not None:
        return _round_to(acc, out_dtype)
    return acc


def imresize_matlab(
    img: np.ndarray, scale: float | None = None, output_shape: tuple[int, int] | None = None
) -> np.ndarray:
    """MATLAB ``imresize(img, scale, 'bicubic')`` (antialiasing on), bit-exact for uint8.

    ``img``: (H, W) or (H, W, C), uint8 (or another integer dtype) or float. ``scale``: output/input
    size factor, e.g. ``1/4`` for a x4 downscale or ``2`` for a x2 upscale; the output size is
    ``ceil(scale * size)``. Alternatively ``output_shape=(H_out, W_out)`` (one of the two, not both).
    The dimension with the smaller factor is resized first (rows first when equal). Integer inputs are
    rounded (half away from zero) and clipped to their dtype after each 1-D pass, as MATLAB does, and
    keep their dtype; float inputs give float64 with no rounding or clipping.
    """
    a = np.asarray(img)
    if a.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) array, got shape {a.shape}")
    if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"unsupported dtype {a.dtype}")
    in_shape = a.shape[:2]
    if min(in_shape) < 1:
        raise ValueError(f"empty image, shape {a.shape}")
    if (scale is None) == (output_shape is None):
        raise ValueError("give exactly one of scale and output_shape")
    if scale is not None:
        scale = float(scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        scales = (scale, scale)
        out_shape = tuple(int(np.ceil(scale * n)) for n in in_shape)
    else:
        out_shape = tuple(int(v) for v in output_shape)
        if len(out_shape) != 2 or min(out_shape) < 1:
            raise ValueError(f"output_shape must be two positive ints, got {output_shape!r}")
        scales = tuple(o / i for o, i in zip(out_shape, in_shape))
    out_dtype = a.dtype if np.issubdtype(a.dtype, np.integer) else None
    order = sorted((0, 1), key=lambda d: scales[d])  # stable: rows first on ties
    x = a
    for d in order:
        x = _resize_axis(x.astype(np.float64, copy=False), d, out_shape[d], scales[d], out_dtype)
    return x


def _pil_bicubic(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """PIL BICUBIC resize of a uint8 (H, W) / (H, W, 3) or float (per-channel 'F') array."""
    if img.dtype == np.uint8:
        if img.ndim == 2:
            return np.asarray(_PILImage.fromarray(img, "L").resize(size_wh, _PILImage.BICUBIC))
        if img.shape[2] == 3:
            return np.asarray(_PILImage.fromarray(np.ascontiguousarray(img), "RGB").resize(size_wh, _PILImage.BICUBIC))
        chans = [_pil_bicubic(np.ascontiguousarray(img[:, :, c]), size_wh) for c in range(img.shape[2])]
        return np.stack(chans, axis=2)
    if np.issubdtype(img.dtype, np.floating):
        if img.ndim == 2:
            f = _PILImage.fromarray(img.astype(np.float32), "F").resize(size_wh, _PILImage.BICUBIC)
            return np.asarray(f).astype(np.float64)
        return np.stack([_pil_bicubic(img[:, :, c], size_wh) for c in range(img.shape[2])], axis=2)
    raise ValueError(f"PIL flavour supports uint8 or float arrays, got {img.dtype}")


def resize_lanczos(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """PIL LANCZOS (a = 3) resize of a uint8 (H, W) or (H, W, 3) image to ``size_wh`` = (W', H'): what
    ``prfdn upscale --outscale`` does after the network (Real-ESRGAN's ``--outscale``, with cv2's Lanczos)."""
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"resize_lanczos takes a uint8 (H, W) or (H, W, 3) image, got {img.dtype} {img.shape}")
    mode = "L" if img.ndim == 2 else "RGB"
    return np.asarray(_PILImage.fromarray(np.ascontiguousarray(img), mode).resize(size_wh, _PILImage.LANCZOS))


def downscale(img: np.ndarray, scale: int, flavour: str = "matlab") -> np.ndarray:
    """Bicubic x``scale`` downscale of (H, W[, C]) by a named flavour; output (H//s, W//s[, C]).

    Both flavours first :func:`modcrop` the input so the LR size is exactly HR/scale:

    * ``'matlab'``: ``imresize_matlab(modcrop(img, s), 1/s)`` -- the classic benchmark LR (uint8 in,
      uint8 out, bit-exact with MATLAB; float in, float64 out).
    * ``'pil'``: ``PIL.Image.resize((w//s, h//s), BICUBIC)`` of the modcropped image (NTIRE protocol;
      uint8 in/out, or float in, float64 out via PIL mode 'F').

    An unknown flavour raises ValueError.
    """
    s = _check_scale(scale)
    if flavour not in FLAVOURS:
        raise ValueError(f"unknown downscale flavour {flavour!r}; expected one of {FLAVOURS}")
    a = modcrop(np.asarray(img), s)
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"image of shape {np.shape(img)} is smaller than the scale {s}")
    if flavour == "matlab":
        return imresize_matlab(a, 1.0 / s)
    return _pil_bicubic(a, (a.shape[1] // s, a.shape[0] // s))


def ntire_degrade(img: np.ndarray, scale: int, quality: int = 90) -> np.ndarray:
    """NTIRE 2023 RTSR degradation: ``downscale(img, scale, 'pil')`` then an in-memory JPEG round trip.

    ``img``: (H, W, 3) or (H, W) uint8. Returns uint8 of shape (H//s, W//s[, 3]). JPEG uses Pillow's
    defaults apart from ``quality`` (90, as the organisers saved their LR inputs).
    """
    a = np.asarray(img)
    if a.dtype != np.uint8 or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"ntire_degrade expects (H, W, 3) or (H, W) uint8, got {a.dtype} {a.shape}")
    lr = downscale(a, scale, "pil")
    buf = io.BytesIO()
    _PILImage.fromarray(lr, "L" if lr.ndim == 2 else "RGB").save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    with _PILImage.open(buf) as im:
        return np.asarray(im.convert("L" if lr.ndim == 2 else "RGB")).copy()


def degrade(hr: np.ndarray, scale: int, degradation: str = "matlab") -> np.ndarray:
    """The LR of an HR uint8 image (sides multiples of ``scale``) by the named degradation (:data:`DEGRADATIONS`)."""
    if degradation == "matlab":
        return downscale(hr, scale, "matlab")
    return ntire_degrade(hr, scale)
