"""One-time preparation of training pairs, and the data-loader throughput benchmark.

    prepare(dirs, out, scale=2)       # every image -> sub-images (480 every 240) + their exact LR, in ArrayRecord
    make_dataset([out], ...)          # trains from it: same batches as lr_mode='aligned' on the folders

Each image of ``dirs`` is cut into sub-images (:func:`prfdn_jax.data.sub_boxes`) and the LR of each is made
once, by the degradation of the run (``'matlab'``: the exact MATLAB bicubic). The pairs go to one ArrayRecord
file (``group_size:1``: random access), one record per pair: a 16-byte header then raw uint8 HR and LR
(:func:`prfdn_jax.data.decode_pair`). Records are uncompressed by default: natural images shrink only ~15%
with ``compression='zstd'`` (level 1), which halves the read speed. A JSON sidecar holds the settings, the
sources and every record's shape. Both files are written to temporary names and moved into place (records
first, then the sidecar that readers look for).

:func:`bench_data` times a training input pipeline (folder or prepared) in pairs per second and per CPU
second (all its processes), after the pipeline is built.

No JAX here (the preparation workers stay light).
"""

from __future__ import annotations

import collections
import contextlib
import json
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from prfdn_jax import data, imaging, resize
from prfdn_jax.fileio import atomic_write

COMPRESSIONS = {"zstd": "zstd:1", "none": "uncompressed"}


def encode_pair(hr: np.ndarray, lr: np.ndarray, scale: int) -> bytes:
    """One record: the 16-byte header (magic, HR height, HR width, scale), HR bytes, LR bytes (uint8 RGB)."""
    h, w = hr.shape[:2]
    if hr.shape != (h, w, 3) or lr.shape != (h // scale, w // scale, 3):
        raise ValueError(f"bad pair shapes HR {hr.shape}, LR {lr.shape} for scale {scale}")
    return b"".join((data.RECORD_HEADER.pack(data.RECORD_MAGIC, h, w, scale),
                     np.ascontiguousarray(hr, np.uint8).tobytes(), np.ascontiguousarray(lr, np.uint8).tobytes()))


def record_writer(path: str | os.PathLike, compression: str = "none"):
    """An ``ArrayRecordWriter`` at ``path`` with this format's options (``group_size:1``: random access)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    return ArrayRecordWriter(str(path), f"group_size:1,{COMPRESSIONS[compression]}")


def cut_image(path: str | os.PathLike, scale: int, sub_size: int, step: int, degradation: str,
              min_size: int, factor: float = 1.0) -> tuple[list[bytes], list[tuple[int, int]], str | None]:
    """``(records, HR shapes, None)`` of one image's sub-image pairs, or ``([], [], why)`` when it is skipped.

    ``factor < 1`` first downscales the whole HR image by that factor (MATLAB bicubic, antialiased): a
    smaller copy of the scene with its own exact LR (scale augmentation).
    """
    try:
        img = imaging.read_image(path).rgb
    except imaging.ImageError as e:
        return [], [], f"skipping unreadable image {path}: {e}"
    if factor != 1.0:
        img = resize.imresize_matlab(img, factor)
    if min(img.shape[:2]) < min_size:
        at = f" at x{factor:g}" if factor != 1.0 else ""
        return [], [], (f"skipping image {path}{at}: {img.shape[1]}x{img.shape[0]} is smaller than "
                        f"{min_size}x{min_size}")
    recs, shapes = [], []
    for y, x, h, w in data.sub_boxes(*img.shape[:2], scale, sub_size, step):
        hr = np.ascontiguousarray(img[y:y + h, x:x + w])
        recs.append(encode_pair(hr, resize.degrade(hr, scale, degradation), scale))
        shapes.append((h, w))
    return recs, shapes, None


def _cut_star(args):
    return cut_image(*args)


def _ordered(pool: ProcessPoolExecutor, jobs: list, ahead: int):
    """``map(_cut_star, jobs)`` in ``pool``, in order, with at most ``ahead`` results waiting (bounded memory)."""
    pending: collections.deque = collections.deque()
    for job in jobs:
        pending.append(pool.submit(_cut_star, job))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _list(dirs: list) -> list[Path]:
    if not dirs:
        raise data.DataError("no data folder given")
    files = []
    for d in dirs:
        try:
            files += imaging.list_images(d)
        except imaging.ImageError as e:
            raise data.DataError(str(e)) from None
    if not files:
        raise data.DataError(f"no image files (.png, .jpg, .jpeg, .bmp) in {', '.join(str(d) for d in dirs)}")
    return files


def _write_pairs(tmp: Path, files: list[Path], jobs: list, workers: int, compression: str):
    """Cut every image of ``files`` (``jobs``: their :func:`_cut_star` arguments) into ``tmp`` (ArrayRecord);
    ``(shapes, used, skipped)`` (skipped: ``[(path, why)]``); a warning for each skipped image."""
    shapes, used, skipped = [], [], []
    with contextlib.ExitStack() as stack:
        writer = record_writer(tmp, compression)
        stack.callback(writer.close)
        if workers > 0:
            pool = stack.enter_context(ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")))
            results = _ordered(pool, jobs, ahead=4 * workers)
        else:
            results = map(_cut_star, jobs)
        for f, (recs, shp, why) in zip(files, results):
            if why:
                warnings.warn(why, stacklevel=3)
                skipped.append((str(f), why))
                continue
            for r in recs:
                writer.write(r)
            shapes += shp
            used.append(str(f))
    return shapes, used, skipped


def check_rescale(rescale) -> tuple[float, ...]:
    """``rescale`` as a tuple of distinct factors in (0, 1], or a :class:`prfdn_jax.data.DataError`."""
    try:
        factors = tuple(float(f) for f in rescale)
    except (TypeError, ValueError):
        raise data.DataError(f"rescale must be numbers in (0, 1], got {rescale!r}") from None
    if not factors or not all(np.isfinite(f) and 0 < f <= 1 for f in factors) or len(set(factors)) != len(factors):
        raise data.DataError(f"rescale must be distinct numbers in (0, 1], got {list(rescale)}")
    return factors


def prepare(dirs: Sequence[str | os.PathLike], out_path: str | os.PathLike, *, scale: int,
            sub_size: int = data.SUB_SIZE, step: int = data.SUB_STEP, degradation: str = "matlab",
            workers: int = 0, compression: str = "none", rescale: Sequence[float] = (1.0,)) -> dict:
    """Write the sub-image pairs of the images in ``dirs`` to a prepared dataset at ``out_path``.

    ``out_path``: a ``.array_record`` file (sidecar ``<file>.json``) or a folder (``pairs.array_record``
    and ``prepared.json``). Images are read in :func:`make_dataset`'s order (folders as given, files by
    name); unreadable ones, and ones under ``15*scale`` pixels (no valid patch), are skipped with a
    warning. ``rescale``: the HR images are used at each of these sizes (factors in (0, 1], MATLAB bicubic),
    all images at the first factor, then all at the second, ...: scale augmentation for small training sets,
    as VDSR's 0.6-1.0; the default ``(1.0,)`` uses them as they are, and the records of a run with ``1.0``
    first begin with exactly those. ``workers > 0`` cuts and degrades images in that many processes (same
    file). Returns a
    summary: paths, counts, bytes, bytes per pair, seconds. Bad settings or inputs raise
    :class:`prfdn_jax.data.DataError`.
    """
    t0 = time.perf_counter()
    if scale not in (2, 3, 4):
        raise data.DataError(f"scale must be 2, 3 or 4, got {scale}")
    if degradation not in resize.DEGRADATIONS:
        raise data.DataError(f"unknown degradation {degradation!r}; expected one of {resize.DEGRADATIONS}")
    if compression not in COMPRESSIONS:
        raise data.DataError(f"unknown compression {compression!r}; expected one of {tuple(COMPRESSIONS)}")
    data.check_sub(scale, sub_size, step)
    factors = check_rescale(rescale)
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    if workers < 0:
        raise data.DataError(f"workers must be >= 0, got {workers}")
    files = _list(dirs)
    records, side = data.prepared_paths(out_path)
    if Path(out_path).suffix != ".array_record" and any(Path(out_path).resolve() == Path(d).resolve() for d in dirs):
        raise data.DataError(f"{out_path}: is a source folder; write the prepared dataset elsewhere")
    if Path(out_path).suffix != ".array_record" and Path(out_path).exists() and not Path(out_path).is_dir():
        raise data.DataError(f"{out_path}: exists and is not a folder (name a .array_record file or a folder)")
    jobs = [(str(f), scale, sub_size, step, degradation, 15 * scale, k) for k in factors for f in files]
    files = [f for _ in factors for f in files]
    tmp = None
    try:
        with atomic_write(records, mode=0o644) as tmp:
            shapes, used, skipped = _write_pairs(tmp, files, jobs, workers, compression)
            if not shapes:
                raise data.DataError(f"no usable image (at least {15 * scale}x{15 * scale}) in "
                                     f"{', '.join(str(d) for d in dirs)}")
        size = records.stat().st_size
        meta = {
            "format": data.PREPARED_FORMAT, "version": 1, "records": records.name,
            "encoding": "ArrayRecord, one record per pair: header struct '<4sIIB3x' (b'PRF1', HR height, "
                        "HR width, scale), HR (h, w, 3) uint8, LR (h/s, w/s, 3) uint8",
            "compression": COMPRESSIONS[compression], "scale": scale, "degradation": degradation,
            "sub_size": sub_size, "step": step, "rescale": list(factors), "count": len(shapes),
            "images": len(set(used)), "bytes": size,
            "sources": [str(Path(d).resolve()) for d in dirs],
            "skipped": [f for f, _ in skipped], "shapes": [list(s) for s in shapes],
        }
        with atomic_write(side, mode=0o644) as tmp_side:
            tmp_side.write_text(json.dumps(meta, separators=(",", ":")) + "\n")
    except OSError as e:
        if tmp is None:  # no temp file could be created beside the output
            raise data.DataError(f"{records.parent}: cannot write the prepared dataset there "
                                 f"({e.strerror or e})") from None
        raise data.DataError(f"{out_path}: could not write the prepared dataset ({e.strerror or e})") from None
    return {"records": str(records), "sidecar": str(side), "count": len(shapes), "images": len(set(used)),
            "skipped": len(skipped), "skipped_why": dict(collections.Counter(_kind(w) for _, w in skipped)),
            "bytes": size, "bytes_per_pair": size / len(shapes),
            "seconds": time.perf_counter() - t0}


def _kind(why: str) -> str:
    """The reason of a skip message of :func:`cut_image`, without the file: 'unreadable' or 'smaller than NxN'."""
    return "unreadable" if why.startswith("skipping unreadable") else why.rsplit(" is ", 1)[-1]


def _cpu_seconds() -> float:
    """CPU seconds of this process and its live children (grain workers; psutil when installed)."""
    t = time.process_time()
    try:
        import psutil
    except ImportError:
        return t
    for c in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = c.cpu_times()
            t += ct.user + ct.system
    return t


def bench_data(source: str | os.PathLike | Sequence[str | os.PathLike], *, scale: int, patch: int = 128,
               batch: int = 16, seconds: float = 10.0, warmup: float = 2.0, workers: int = 0,
               degradation: str = "matlab", seed: int = 0) -> dict:
    """Throughput of the training input from ``source`` (image folders: ``lr_mode='crop'``; or a prepared dataset).

    Builds the pipeline and takes its first batch (``startup_s``), takes batches for ``warmup`` seconds
    (worker start-up, per-process decoding), then counts batches for ``seconds``. Returns ``pairs_per_s``
    (wall clock) and ``pairs_per_cpu_s``: pairs per CPU second of this process (all its threads) and its
    worker processes (counted only when psutil is installed), i.e. per busy core.
    """
    srcs = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    kind = "prepared" if len(srcs) == 1 and data.find_prepared(srcs[0]) is not None else "folder"
    t0 = time.perf_counter()
    it = data.make_iterator(srcs, scale=scale, patch=patch, batch=batch, seed=seed, workers=workers,
                            degradation=degradation)
    try:
        next(it)
        startup = time.perf_counter() - t0
        while time.perf_counter() - t0 < startup + warmup:
            next(it)
        n, c0, t1 = 0, _cpu_seconds(), time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            next(it)
            n += batch
        wall, c1 = time.perf_counter() - t1, _cpu_seconds()
    finally:
        if hasattr(it, "close"):
            it.close()
    return {"pipeline": kind, "source": ", ".join(str(s) for s in srcs), "scale": scale, "patch": patch,
            "batch": batch, "workers": workers, "pairs": n, "seconds": wall, "startup_s": startup,
            "pairs_per_s": n / wall, "cpu_s": c1 - c0, "pairs_per_cpu_s": n / max(c1 - c0, 1e-9)}


def format_bench(rows: Sequence[dict]) -> str:
    """:func:`bench_data` results as a plain-text table."""
    lines = [f"{'pipeline':<9} {'workers':>7} {'pairs/s':>9} {'pairs/cpu-s':>11} {'startup s':>9}  source"]
    for r in rows:
        lines.append(f"{r['pipeline']:<9} {r['workers']:>7} {r['pairs_per_s']:>9.1f} {r['pairs_per_cpu_s']:>11.1f} "
                     f"{r['startup_s']:>9.1f}  {r['source']}")
    return "\n".join(lines)
