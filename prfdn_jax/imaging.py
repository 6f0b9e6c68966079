"""Image I/O and bicubic degradations (numpy + Pillow only).

Conventions: images are numpy arrays, ``(H, W, 3)`` RGB or ``(H, W)`` grayscale, ``uint8`` unless a
function says otherwise.

Two bicubic downscalers are provided and are never mixed silently; pick one by name:

* ``'matlab'`` -- an exact reimplementation of MATLAB ``imresize(img, 1/s, 'bicubic')`` (antialiased).
  This made the LR images of the classic benchmarks (Set5, Set14, B100, Urban100, DIV2K ``LR_bicubic``).
* ``'pil'`` -- ``PIL.Image.resize((w // s, h // s), BICUBIC)``, the NTIRE 2023 real-time SR degradation
  (followed by a JPEG quality-90 round trip in :func:`ntire_degrade`).
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image as _PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FLAVOURS",
    "Image",
    "ImageError",
    "read_image",
    "write_image",
    "list_images",
    "modcrop",
    "imresize_matlab",
    "downscale",
    "ntire_degrade",
]

#: File extensions (lower case) that :func:`list_images` picks up and :func:`write_image` can write.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp")

#: Names accepted by :func:`downscale`.
FLAVOURS: tuple[str, ...] = ("matlab", "pil")

_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}
_JPEG_QUALITY = 95


class ImageError(ValueError):
    """A bad image file or image argument; the message is one line and names the file."""


@dataclass
class Image:
    """A decoded image.

    ``rgb``: (H, W, 3) uint8. ``alpha``: (H, W) uint8 or None. ``notes``: human-readable remarks on
    conversions applied while reading (grayscale replicated, 16-bit reduced, ...).
    """

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W)."""
        return self.rgb.shape[0], self.rgb.shape[1]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


@contextlib.contextmanager
def _strict_pillow():
    """Force full, strict decoding (no silently padded truncated images) for the duration."""
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _sixteen_to_eight(a: np.ndarray) -> np.ndarray:
    """Scale 0..65535 integers to 0..255 uint8 with round(v * 255 / 65535) (exact integer arithmetic)."""
    v = a.astype(np.int64)
    # round half up of v*255/65535 == floor((2*v*255 + 65535) / (2*65535)); v >= 0 here.
    return ((2 * 255 * v + 65535) // (2 * 65535)).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    return np.repeat(g[:, :, None], 3, axis=2)


def read_image(path: str | os.PathLike) -> Image:
    """Read an image file into an :class:`Image` (rgb (H, W, 3) uint8, optional alpha (H, W) uint8).

    Any format Pillow decodes is accepted (PNG, JPEG, BMP, ...). Grayscale / 1-bit / palette / CMYK
    inputs are converted to RGB; 16-bit grayscale samples are scaled to 8 bits with
    round(v * 255 / 65535) (16-bit-per-channel colour PNGs are reduced by Pillow itself, which keeps
    the high byte: within 1 level of that; a note says so);
    an alpha channel (RGBA, LA, palette or tRNS transparency) is returned separately; JPEG EXIF
    orientation is applied; for multi-frame files the first frame is used. Every conversion adds a
    line to ``notes``. Raises :class:`ImageError` for a missing file, a directory, an empty, non-image,
    truncated or corrupt file, or an unsupported pixel format.
    """
    p = Path(path)
    if not p.exists():
        raise ImageError(f"{p}: no such file")
    if p.is_dir():
        raise ImageError(f"{p}: is a directory, not an image file")
    if not p.is_file():
        raise ImageError(f"{p}: not a regular file")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise ImageError(f"{p}: cannot read ({_one_line(e)})") from e
    if size == 0:
        raise ImageError(f"{p}: empty file (0 bytes)")

    notes: list[str] = []
    try:
        with _strict_pillow(), _PILImage.open(p) as im:
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"multi-frame input ({im.n_frames} frames): first frame used")
            # Pillow reduces 16-bit-per-channel colour PNG/TIFF to 8 bits itself (keeping the high byte).
            wide_colour = im.mode in ("RGB", "RGBA") and any(
                ";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in im.tile
            )
            im.load()  # force a full decode now: truncated/corrupt data raises here
            fmt = im.format
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb, alpha = _to_rgb_alpha(im, p, notes)
    except ImageError:
        raise
    except _PILImage.DecompressionBombError as e:
        raise ImageError(f"{p}: image too large for Pillow's safety limit ({_one_line(e)})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{p}: not a recognised image file") from e
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        raise ImageError(f"{p}: corrupt or truncated image ({_one_line(e)})") from e
    if fmt is None:
        raise ImageError(f"{p}: not a recognised image file")
    if wide_colour:
        notes.append("16-bit input: converted to 8-bit (by Pillow, keeping the high byte of each sample)")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{p}: image has zero width or height")
    return Image(rgb=np.ascontiguousarray(rgb), alpha=alpha, notes=notes)


def _to_rgb_alpha(im, p: Path, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert a loaded PIL image to (rgb (H, W, 3) uint8, alpha (H, W) uint8 | None)."""
    mode = im.mode
    has_trns = "transparency" in im.info
    if mode == "RGB":
        if has_trns:
            a = np.asarray(im.convert("RGBA"))
            notes.append("RGB input with transparent colour: alpha channel upscaled separately with bicubic")
            return a[:, :, :3].copy(), a[:, :, 3].copy()
        return np.asarray(im), None
    if mode == "RGBA":
        a = np.asarray(im)
        notes.append("RGBA input: alpha channel upscaled separately with bicubic")
        return a[:, :, :3].copy(), a[:, :, 3].copy()
    if mode in ("RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "RGBa":
            a = np.asarray(im.convert("RGBA"))
            notes.append("RGBA input: alpha channel upscaled separately with bicubic")
            return a[:, :, :3].copy(), a[:, :, 3].copy()
        if mode != "RGBX":
            notes.append(f"{mode} input: converted to RGB")
        return np.asarray(im.convert("RGB")), None
    if mode in ("L", "1", "La", "LA"):
        if mode == "1":
            notes.append("1-bit input: converted to 8-bit (0/255)")
        notes.append("grayscale input: replicated to RGB")
        if mode in ("LA", "La") or has_trns:
            a = np.asarray(im.convert("LA"))
            notes.append("LA input: alpha channel upscaled separately with bicubic")
            return _gray_to_rgb(a[:, :, 0]), a[:, :, 1].copy()
        return _gray_to_rgb(np.asarray(im.convert("L"))), None
    if mode in ("P", "PA"):
        notes.append("palette input: converted to RGB")
        if mode == "PA" or has_trns:
            a = np.asarray(im.convert("RGBA"))
            notes.append("palette transparency: alpha channel upscaled separately with bicubic")
            return a[:, :, :3].copy(), a[:, :, 3].copy()
        return np.asarray(im.convert("RGB")), None
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(im)
        if v.ndim != 2:
            raise ImageError(f"{p}: unsupported pixel layout for mode {mode}")
        v = v.astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise ImageError(
                f"{p}: {mode} image with values outside 0..65535 ({v.min()}..{v.max()}) is not supported"
            )
        notes.append("16-bit input: converted to 8-bit")
        notes.append("grayscale input: replicated to RGB")
        return _gray_to_rgb(_sixteen_to_eight(v)), None
    raise ImageError(f"{p}: unsupported pixel format (Pillow mode {mode!r})")


# --------------------------------------------------------------------------------------------------
# Writing and listing
# --------------------------------------------------------------------------------------------------


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None) -> Path:
    """Write ``rgb`` ((H, W, 3) or (H, W) uint8) and optional ``alpha`` ((H, W) uint8) atomically.

    The format comes from the extension: .png, .jpg/.jpeg (quality 95), .bmp; the alpha channel is
    kept only for PNG (dropped otherwise). The data go to a temporary file in the target folder that
    is then renamed over ``path`` (``os.replace``); on any failure the temporary file is removed, so
    no partial file is left. Parent folders are created. Returns the path written.
    """
    p = Path(path)
    fmt = _WRITE_FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ImageError(
            f"{p}: unknown image extension {p.suffix!r} (use one of {', '.join(_WRITE_FORMATS)})"
        )
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise ImageError(f"{p}: image array must be uint8, got {rgb.dtype}")
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] in (1, 3))):
        raise ImageError(f"{p}: image array must be (H, W, 3) or (H, W), got shape {rgb.shape}")
    if rgb.ndim == 3 and rgb.shape[2] == 1:
        rgb = rgb[:, :, 0]
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ImageError(f"{p}: image array is empty, shape {rgb.shape}")
    if alpha is not None:
        alpha = np.asarray(alpha)
        if alpha.dtype != np.uint8 or alpha.shape != rgb.shape[:2]:
            raise ImageError(
                f"{p}: alpha must be uint8 of shape {rgb.shape[:2]}, got {alpha.dtype} {alpha.shape}"
            )
    if alpha is not None and fmt == "PNG":
        if rgb.ndim == 2:
            pil = _PILImage.fromarray(np.stack([rgb, alpha], axis=2), "LA")
        else:
            pil = _PILImage.fromarray(np.dstack([rgb, alpha]), "RGBA")
    else:
        pil = _PILImage.fromarray(np.ascontiguousarray(rgb), "L" if rgb.ndim == 2 else "RGB")
    save_kwargs = {"quality": _JPEG_QUALITY} if fmt == "JPEG" else {}

    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"{p}: cannot create folder {folder} ({_one_line(e)})") from e
    if p.is_dir():
        raise ImageError(f"{p}: is a directory")
    tmp_name = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{p.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=fmt, **save_kwargs)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o666 & ~_current_umask())
        os.replace(tmp_name, p)
        tmp_name = None
    except Exception as e:
        raise ImageError(f"{p}: could not write image ({_one_line(e)})") from e
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
    return p


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (by name; extension in :data:`IMAGE_EXTENSIONS`, any case) directly in ``folder``.

    Not recursive; hidden files (name starting with '.') are skipped. Raises :class:`ImageError` when
    ``folder`` is missing or not a directory.
    """
    d = Path(folder)
    if not d.exists():
        raise ImageError(f"{d}: no such folder")
    if not d.is_dir():
        raise ImageError(f"{d}: not a folder")
    return sorted(
        q
        for q in d.iterdir()
        if q.suffix.lower() in IMAGE_EXTENSIONS and not q.name.startswith(".") and q.is_file()
    )


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
