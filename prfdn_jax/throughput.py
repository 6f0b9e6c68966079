"""Throughput of real jobs: compile less and once. JAX's persistent compilation cache, and shape buckets.

**Compile cache.** Compiled programs are kept on disk across runs (JAX's persistent compilation cache),
in ``$PRFDN_CACHE_DIR``, else ``$XDG_CACHE_HOME/prfdn/jax``, else ``~/.cache/prfdn/jax``;
``PRFDN_CACHE_DIR=off`` (or empty) or ``--no-compile-cache`` turns it off (nothing is written). Every
program is cached, however small or fast to compile; the folder is trimmed to :data:`CACHE_MAX_BYTES` at
start-up, oldest files first. :func:`enable_compile_cache` is called by the CLI before a command with a
``--no-compile-cache`` option (``upscale``: images and video) runs.

**Shape buckets.** A folder of many image sizes costs one compile per size. :func:`plan_buckets` groups
the sizes into a few padded shapes (greedy merging while a merge saves more compile time than the
padding costs, :meth:`prfdn_jax.deploy.Deployed.compile_px`; or multiples of a given size), and
:class:`Bucketed` pads each image to its shape and crops the output. The deployed program masks the
padding (:mod:`prfdn_jax.deploy.shapes`), so a bucketed output is the image's own output, exactly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CACHE_ENV = "PRFDN_CACHE_DIR"
CACHE_MAX_BYTES = 1 << 30  # the cache folder is trimmed to this at start-up (oldest files first)
OFF = ("", "off", "none", "0", "false", "no")


# ----------------------------------------------------------------------------- persistent compile cache
def cache_dir(env=None) -> Path | None:
    """The compile cache folder (module doc), or None when ``$PRFDN_CACHE_DIR`` turns it off."""
    env = os.environ if env is None else env
    if CACHE_ENV in env:
        value = env[CACHE_ENV].strip()
        return None if value.lower() in OFF else Path(value).expanduser()
    base = env.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
    return Path(base) / "prfdn" / "jax"


def trim_cache(folder: Path, max_bytes: int = CACHE_MAX_BYTES) -> int:
    """Remove the oldest files (modification time) of ``folder`` until it holds at most ``max_bytes``;
    returns how many were removed."""
    files = []
    for p in Path(folder).rglob("*"):
        try:
            st = p.stat()
        except OSError:  # removed meanwhile (another process)
            continue
        if p.is_file():
            files.append((st.st_mtime, st.st_size, p))
    total, removed = sum(f[1] for f in files), 0
    for _, size, p in sorted(files, key=lambda f: f[0]):
        if total <= max_bytes:
            break
        try:
            p.unlink()
            total, removed = total - size, removed + 1
        except OSError:
            pass
    return removed


def enable_compile_cache(off: bool = False, env=None) -> Path | None:
    """Turn JAX's persistent compilation cache on in :func:`cache_dir` (created, trimmed), unless ``off``
    or the variable says off; returns the folder, or None. Must run before the first compile. A folder
    that cannot be written leaves the cache off, with a note."""
    folder = None if off else cache_dir(env)
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError("not writable")
        trim_cache(folder)
    except OSError as e:
        print(f"note: compile cache off: cannot use {folder} ({e.strerror or e}); set {CACHE_ENV} to move it",
              file=sys.stderr)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # every program: the small ones add up
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


# ----------------------------------------------------------------------------- shape buckets
def image_size(path) -> tuple[int, int] | None:
    """``(h, w)`` of an image file as :func:`prfdn_jax.imaging.read_image` returns it (EXIF rotation
    applied), from its header; None when it cannot be read (the image's own read reports that)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # rotated by 90 degrees
                w, h = h, w
            return h, w
    except Exception:  # noqa: BLE001 - any unreadable file: no plan for it
        return None


def plan_buckets(sizes: Iterable[tuple[int, int]], compile_px: float = 0.0, max_px: float = float("inf"),
                 multiple: int = 0) -> dict[tuple[int, int], tuple[int, int]]:
    """``{(h, w): (H, W)}``: the padded shape each image size runs at.

    ``multiple``: each side rounded up to a multiple of it. Otherwise greedy: start with one shape per
    size and merge the two shapes (into their elementwise maximum) whose merge saves the most, while a
    merge saves anything: a shape costs ``compile_px`` plus the pixels of every image padded to it. No
    merged shape exceeds ``max_px`` pixels (images bigger than that are not planned: they are tiled)."""
    from collections import Counter

    counts = Counter(tuple(int(v) for v in s) for s in sizes)
    if multiple:
        return {(h, w): (-(-h // multiple) * multiple, -(-w // multiple) * multiple) for h, w in counts}
    shapes = sorted(counts)
    groups = [[s] for s in shapes]
    hw = np.array(shapes, np.float64).reshape(-1, 2)
    n = np.array([counts[s] for s in shapes], np.float64)
    alive = np.ones(len(shapes), bool)

    def gains(i: int) -> np.ndarray:
        """What merging shape ``i`` with each other shape saves (-inf where it cannot)."""
        mh, mw = np.maximum(hw[:, 0], hw[i, 0]), np.maximum(hw[:, 1], hw[i, 1])
        cost = (n + n[i]) * mh * mw - n * hw[:, 0] * hw[:, 1] - n[i] * hw[i, 0] * hw[i, 1]
        g = compile_px - cost
        g[(mh * mw > max_px) | ~alive] = -np.inf
        g[i] = -np.inf
        return g

    table = np.stack([gains(i) for i in range(len(shapes))]) if shapes else np.zeros((0, 0))
    while len(shapes) > 1:
        i, j = np.unravel_index(np.argmax(table), table.shape)
        if not table[i, j] > 0:
            break
        hw[i] = np.maximum(hw[i], hw[j])
        n[i] += n[j]
        groups[i] += groups[j]
        alive[j] = False
        table[j, :] = table[:, j] = -np.inf
        table[i, :] = table[:, i] = gains(i)
    return {s: (int(hw[i, 0]), int(hw[i, 1])) for i in np.flatnonzero(alive) for s in groups[i]}


def bucket_order(sizes: list, plan: dict) -> list[int]:
    """Indices of ``sizes`` grouped by their padded shape (first use order; stable within a shape), so a
    shape's compiled program is used by all its images in a row."""
    first: dict = {}
    for i, s in enumerate(sizes):
        first.setdefault(plan.get(s, s), i)
    return sorted(range(len(sizes)), key=lambda i: (first[plan.get(sizes[i], sizes[i])], i))


class Bucketed:
    """``apply(x)`` through padded shapes: ``x`` ``(B, h, w, 3)`` of a planned size is padded (zeros,
    masked by the program) to its shape, run with ``valid=(h, w)`` and cropped; other shapes (tiles, sizes
    not planned) and sizes whose shape is their own, alone, run as they are."""

    def __init__(self, apply: Callable, plan: dict[tuple[int, int], tuple[int, int]], scale: int):
        self.apply, self.plan, self.scale = apply, dict(plan), scale
        members: dict = {}
        for s, shape in self.plan.items():
            members.setdefault(shape, set()).add(s)
        self.padded = {s for s, shape in self.plan.items() if members[shape] != {shape}}

    def __call__(self, x):
        h, w = x.shape[1:3]
        if (h, w) not in self.padded:
            return self.apply(x)
        hp, wp = self.plan[(h, w)]
        x = np.pad(np.asarray(x, np.float32), ((0, 0), (0, hp - h), (0, wp - w), (0, 0)), )
        s = self.scale
        return np.asarray(self.apply(x, valid=(h, w)))[:, :h * s, :w * s]


def largest_square(whole: Callable[[int, int], bool], low: int = 15, high: int = 8192) -> int:
    """The largest side ``s`` in ``[low, high]`` with ``whole(s, s)`` (``low`` if none): ``whole`` is
    monotone, e.g. whether an image runs whole within a memory budget."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if whole(mid, mid) else (low, mid - 1)
    return low


def for_images(deployed, paths: list, bucket, scale: int, whole: Callable[[int, int], bool]):
    """``(apply, order)`` for upscaling the images of ``paths`` with ``deployed``: ``apply`` through the
    shape buckets of ``bucket`` (``"auto"``: :func:`plan_buckets` from their sizes with
    ``deployed.compile_px()``; an int: multiples of it; ``"off"``: none) and the images' order grouped
    by shape. Only sizes that run whole (``whole(h, w)``) are planned, into shapes that run whole; one
    image runs at its own size."""
    if len(paths) < 2:
        return deployed, list(range(len(paths)))
    sizes = [image_size(p) for p in paths]
    if bucket == "off":
        return deployed, bucket_order(sizes, {})
    side = largest_square(whole)
    planned = [s for s in sizes if s is not None and whole(*s)]
    multiple = bucket if isinstance(bucket, int) else 0
    plan = plan_buckets(planned, deployed.compile_px(), side * side, multiple)
    return Bucketed(deployed, plan, scale), bucket_order(sizes, plan)
