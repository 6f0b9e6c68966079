"""Folder jobs as Real-ESRGAN users run them (``prfdn upscale DIR -o OUT``): output names (``--suffix``,
``--ext``), a final scale of any size (``--outscale``: the network, then a Lanczos resize to
``int(F x input size)``, Real-ESRGAN's rule) and resuming a big job (``--skip-existing``). The options
themselves are :mod:`prfdn_jax.commands.upscale`'s.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prfdn_jax.imaging import IMAGE_EXTENSIONS, ImageError
from prfdn_jax.resize import resize_lanczos

__all__ = ["EXTS", "is_complete", "outscale", "output_name", "still_to_do"]

EXTS = ("auto", "png", "jpg", "webp")  # --ext; auto: each input's own format (PNG where it cannot be written)


def output_name(src: Path, suffix: str = "", ext: str | None = None) -> str:
    """The file name of ``src``'s output in an output folder: its stem + ``suffix`` + the suffix of ``ext``
    (:data:`EXTS`; default png)."""
    if "/" in suffix or "\\" in suffix:
        raise ImageError(f"--suffix {suffix!r}: a suffix cannot hold a path separator")
    ext = ext or "png"
    dot = src.suffix.lower() if ext == "auto" else f".{ext}"
    return src.stem + suffix + (dot if dot in IMAGE_EXTENSIONS else ".png")


def is_complete(p: Path) -> bool:
    """Whether ``p`` holds a whole image (what ``--skip-existing`` skips): Pillow reads its header and checks
    its structure (PNG: every chunk's CRC to the end), and a JPEG ends with its end marker. Outputs are
    written atomically, so a killed job leaves none that is not; this guards against others' files."""
    from PIL import Image

    try:
        if p.stat().st_size == 0:
            return False
        with Image.open(p) as im:
            fmt = im.format
            im.verify()
        if fmt == "JPEG":
            with open(p, "rb") as f:
                f.seek(-2, 2)
                return f.read(2) == b"\xff\xd9"
        return True
    except Exception:  # noqa: BLE001 - anything unreadable is not a complete image
        return False


def still_to_do(pairs: list[tuple[Path, Path]]) -> tuple[list[tuple[Path, Path]], int, list[str]]:
    """``--skip-existing``: ``(the (input, output) pairs still to do, how many are skipped, notes)``; an output
    there that is not a complete image is done again (with a note)."""
    todo, notes = [], []
    for src, dst in pairs:
        if dst.exists():
            if is_complete(dst):
                continue
            notes.append(f"{dst}: exists but is not a complete image: upscaled again")
        todo.append((src, dst))
    return todo, len(pairs) - len(todo), notes


def outscale(sr: np.ndarray, alpha: np.ndarray | None, w: int, h: int, factor: float | None, src: Path):
    """``(sr, alpha)`` (uint8 ``(H, W, 3)``, ``(H, W)``) resized with Lanczos to ``int(factor x (w, h))`` (``w x h``:
    the input's size; truncated, as Real-ESRGAN's ``--outscale``); unchanged without ``factor`` or where the
    network already gave that size."""
    if not factor:
        return sr, alpha
    size = (int(factor * w), int(factor * h))
    if min(size) < 1:
        raise ImageError(f"{src}: --outscale {factor:g} of {w}x{h} leaves no pixel")
    if (sr.shape[1], sr.shape[0]) == size:
        return sr, alpha
    return resize_lanczos(sr, size), None if alpha is None else resize_lanczos(alpha, size)
