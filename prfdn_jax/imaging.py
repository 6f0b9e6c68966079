"""Image I/O (numpy + Pillow only): reading any image a user has, atomic writing, listing folders.

Conventions: images are numpy arrays, ``(H, W, 3)`` RGB or ``(H, W)`` grayscale, ``uint8`` unless a
function says otherwise. Resizing and degradations live in :mod:`prfdn_jax.resize`.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as _PILImage
from PIL import ImageFile, ImageOps, UnidentifiedImageError

from prfdn_jax.fileio import atomic_write, no_such

__all__ = [
    "ALPHA_EXTENSIONS",
    "DEFAULT_QUALITY",
    "IMAGE_EXTENSIONS",
    "Image",
    "ImageError",
    "read_image",
    "write_image",
    "list_images",
]

#: File extensions (lower case) that :func:`list_images` picks up and :func:`write_image` can write.
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: Those whose files keep an alpha channel (:func:`write_image` drops it for the others).
ALPHA_EXTENSIONS: tuple[str, ...] = (".png", ".webp")
#: JPEG and WebP quality (1..100) when none is given.
DEFAULT_QUALITY = 95


_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".webp": "WEBP"}


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


@contextlib.contextmanager
def _naming_warnings(p: Path):
    """Pillow's warnings while reading ``p`` (DecompressionBombWarning, corrupt EXIF, ...) re-issued with the
    file's name, when it was read (main thread only: ``catch_warnings`` is process-wide)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        warnings.warn(f"{p}: {' '.join(str(w.message).split())}", w.category, stacklevel=3)


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
        raise ImageError(f"{p}: {no_such(p, 'file')}")
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
        with _strict_pillow(), _naming_warnings(p), _PILImage.open(p) as im:
            if getattr(im, "n_frames", 1) > 1:
                notes.append(f"multi-frame input ({im.n_frames} frames): first frame used")
            # Pillow reduces 16-bit-per-channel colour PNG/TIFF to 8 bits itself (keeping the high byte).
            wide_colour = im.mode in ("RGB", "RGBA") and any(
                ";16" in str(getattr(t, "args", t[3] if len(t) > 3 else "")) for t in im.tile
            )
            im.load()  # force a full decode now: truncated/corrupt data raises here
            fmt = im.format
            bits = _declared_bits(im)
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation tag
            if orientation in (2, 3, 4, 5, 6, 7, 8):
                im = ImageOps.exif_transpose(im)
                notes.append(f"EXIF orientation {orientation} applied")
            rgb, alpha = _to_rgb_alpha(im, p, notes, bits)
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


def _declared_bits(im) -> int | None:
    """Bits per sample the file declares for an integer grayscale image, where Pillow tells (PNM: 16 after
    Pillow's scaling to 0..65535; TIFF: BitsPerSample)."""
    if im.mode.startswith("I;16") or im.format == "PPM":
        return 16
    tag = getattr(im, "tag_v2", None)
    if im.format == "TIFF" and tag is not None:
        bits = tag.get(258)
        bits = bits[0] if isinstance(bits, tuple) and bits else bits
        return int(bits) if isinstance(bits, int) else None
    return None


def _to_rgb_alpha(im, p: Path, notes: list[str], bits: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Convert a loaded PIL image to (rgb (H, W, 3) uint8, alpha (H, W) uint8 | None).

    Integer grayscale (modes ``I;16*`` and ``I``): 16 declared bits are scaled from 0..65535; a 32-bit
    (or undeclared) container is read by its values' real range: at most 255 used as 8-bit values, at
    most 65535 scaled as 16-bit ones, anything else (or negative) refused."""
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
        lo, hi = (int(v.min()), int(v.max())) if v.size else (0, 0)
        if lo < 0 or hi > 65535:
            raise ImageError(f"{p}: {'32-bit integer' if mode == 'I' else mode} image with values outside "
                             f"0..65535 ({lo}..{hi}) is not supported; convert it to 8 or 16 bits")
        if bits != 16 and hi <= 255:  # 32-bit container, 8-bit values: used as they are
            notes.append("32-bit integer input with values in 0..255: used as 8-bit")
            g = v.astype(np.uint8)
        else:
            notes.append("16-bit input: converted to 8-bit" if bits == 16
                         else "32-bit integer input with 16-bit values: converted to 8-bit")
            g = _sixteen_to_eight(v)
        notes.append("grayscale input: replicated to RGB")
        return _gray_to_rgb(g), None
    raise ImageError(f"{p}: unsupported pixel format (Pillow mode {mode!r})")


# --------------------------------------------------------------------------------------------------
# Writing and listing
# --------------------------------------------------------------------------------------------------


def write_image(path: str | os.PathLike, rgb: np.ndarray, alpha: np.ndarray | None = None,
                quality: int = DEFAULT_QUALITY) -> Path:
    """Write ``rgb`` ((H, W, 3) or (H, W) uint8) and optional ``alpha`` ((H, W) uint8) atomically.

    The format comes from the extension: .png, .jpg/.jpeg and .webp (lossy, ``quality`` 1..100), .bmp; the
    alpha channel is kept for PNG and WebP (:data:`ALPHA_EXTENSIONS`; dropped otherwise). The data go to a temporary file in the target folder that
    is then renamed over ``path`` (:func:`prfdn_jax.fileio.atomic_write`); on any failure the temporary
    file is removed, so no partial file is left. Parent folders are created. Returns the path written.
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
    if not 1 <= int(quality) <= 100:
        raise ImageError(f"{p}: quality must be in 1..100, got {quality}")
    if alpha is not None and p.suffix.lower() in ALPHA_EXTENSIONS:
        if rgb.ndim == 2 and fmt == "PNG":
            pil = _PILImage.fromarray(np.stack([rgb, alpha], axis=2), "LA")
        else:  # WebP has no grey + alpha mode: grey as RGB
            pil = _PILImage.fromarray(np.dstack([rgb] * (3 if rgb.ndim == 2 else 1) + [alpha]), "RGBA")
    else:
        pil = _PILImage.fromarray(np.ascontiguousarray(rgb), "L" if rgb.ndim == 2 else "RGB")
    save_kwargs = {"quality": int(quality)} if fmt in ("JPEG", "WEBP") else {}

    folder = p.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ImageError(f"{p}: cannot create folder {folder} ({_one_line(e)})") from e
    if p.is_dir():
        raise ImageError(f"{p}: is a directory")
    try:
        with atomic_write(p) as tmp, open(tmp, "wb") as f:
            pil.save(f, format=fmt, **save_kwargs)
    except Exception as e:  # an OSError names the temporary file: its reason only
        why = e.strerror if isinstance(e, OSError) and e.strerror else _one_line(e)
        raise ImageError(f"{p}: could not write image ({why})") from e
    return p


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Sorted image files (by name; extension in :data:`IMAGE_EXTENSIONS`, any case) directly in ``folder``.

    Not recursive; hidden files (name starting with '.') are skipped. Raises :class:`ImageError` when
    ``folder`` is missing or not a directory.
    """
    d = Path(folder)
    if not d.exists():
        raise ImageError(f"{d}: {no_such(d, 'folder')}")
    if not d.is_dir():
        raise ImageError(f"{d}: not a folder")
    return sorted(
        q
        for q in d.iterdir()
        if q.suffix.lower() in IMAGE_EXTENSIONS and not q.name.startswith(".") and q.is_file()
    )

