"""What the parts of :mod:`prfdn_jax.video` share: its error, one-line messages, sizes."""

from __future__ import annotations

from pathlib import Path


class VideoError(ValueError):
    """A video that cannot be read, upscaled or written (one line, naming the file)."""


class WriteFailed(Exception):
    """Encoding or writing the output failed (``args[0]``: the error): reported against the output."""


def line(e: BaseException, hide: dict | None = None) -> str:
    """``e`` as one line: an FFmpeg/OS error's text without errno and file name, ``hide``'s keys (temp
    file names) replaced by their values."""
    if isinstance(e, WriteFailed):
        e = e.args[0]
    if isinstance(e, OSError) and e.strerror and not str(e).startswith(e.strerror):  # "[Errno N] text: file"
        text = e.strerror
    else:
        text = str(e).strip()
        text = text.splitlines()[0] if text else type(e).__name__
    for old, new in (hide or {}).items():
        text = text.replace(old, new)
    return text


def size_text(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def file_size(p: Path | None) -> int:
    try:
        return p.stat().st_size if p is not None else 0
    except OSError:
        return 0


def upscaled(src: Path, fn, *args):
    """``fn(*args)`` (the network, or the wait for its asynchronous output); a failure there (e.g. XLA out of
    memory) is one :class:`VideoError` line naming the video ``src``."""
    try:
        return fn(*args)
    except (ValueError, RuntimeError) as e:
        raise VideoError(f"{src}: upscaling a frame failed ({line(e)})") from None
