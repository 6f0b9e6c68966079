"""Training data: random HR crops and their bicubic LR, as a grain pipeline.

Images come from one or more folders of HR images (``imaging.list_images``). Each is decoded once
when the dataset is built: an unreadable image, or one smaller than the patch, is skipped with a
warning that names it. An example is a random HR crop of ``patch x patch`` pixels (a multiple of
the scale), randomly flipped and rotated by a multiple of 90 degrees, with its LR made one of two ways
(``lr_mode``):

* ``'crop'`` (default): the LR of the HR crop, made on the fly for every example;
* ``'aligned'``: each image is cut into sub-images (:func:`sub_boxes`, BasicSR style: ``sub_size``
  squares every ``step`` pixels, the last ones flush with the borders), the LR of each sub-image is
  made once, and an example is an HR crop at ``(y, x)``, multiples of the scale, with the LR crop at
  ``(y/s, x/s)``. A prepared dataset (:mod:`prfdn_jax.prepare`, an ArrayRecord file of these pairs)
  gives exactly the same batches, without decoding an image or resizing anything while training.

The degradation of the LR (``degradation``):

* ``'matlab'`` (default): ``resize.downscale(hr, s, 'matlab')``, MATLAB ``imresize`` bicubic, the
  degradation of the classic benchmarks (Set5, Set14, DIV2K ``LR_bicubic``);
* ``'ntire'``: ``resize.ntire_degrade(hr, s)``, PIL bicubic + JPEG quality 90 (NTIRE 2023 RTSR).

Batches are ``{'lr': (B, p/s, p/s, 3) uint8, 'hr': (B, p, p, 3) uint8}``. Everything random is a
function of the seed and the example index (grain ``random_map``), so the stream is the same with
or without worker processes, and the iterator's state (``get_state``) resumes it exactly.

This module does not import JAX: worker processes stay light.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import warnings
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from prfdn_jax import imaging
from prfdn_jax.crops import AlignedCrop, BatchCrop, CropPair
from prfdn_jax.resize import DEGRADATIONS, degrade

LR_MODES = ("crop", "aligned")
SUB_SIZE, SUB_STEP = 480, 240  # default sub-images (BasicSR's DIV2K sub-images: 480 every 240)


class DataError(ValueError):
    """Bad data settings or no usable image; the message is one line."""


def shared_path(*parts: str) -> Path:
    """A path under the shared data/docs folder: ``$PRFDN_SHARED``, else ``<project>/../shared``."""
    root = os.environ.get("PRFDN_SHARED")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared"
    return base.joinpath(*parts)


def _scan(dirs, min_size: int, keep: bool):
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise DataError("no data folder given")
    paths, images, shapes = [], [], []
    for d in dirs:
        try:
            files = imaging.list_images(d)
        except imaging.ImageError as e:
            raise DataError(str(e)) from None
        if not files:
            warnings.warn(f"{d}: no image files (.png, .jpg, .jpeg, .bmp) in this folder", stacklevel=3)
        for p in files:
            try:
                img = imaging.read_image(p).rgb
            except imaging.ImageError as e:
                warnings.warn(f"skipping unreadable image {p}: {e}", stacklevel=3)
                continue
            if min(img.shape[:2]) < min_size:
                warnings.warn(f"skipping image {p}: {img.shape[1]}x{img.shape[0]} is smaller than the "
                              f"{min_size}x{min_size} training patch", stacklevel=3)
                continue
            paths.append(p)
            images.append(img if keep else None)
            shapes.append(img.shape[:2])
    if not paths:
        raise DataError(f"no usable training image (at least {min_size}x{min_size}) in "
                        f"{', '.join(str(d) for d in dirs)}")
    return paths, images, shapes


def scan_images(dirs: Sequence[str | os.PathLike], min_size: int = 1,
                keep: bool = True) -> tuple[list[Path], list[np.ndarray | None]]:
    """Decode every image in ``dirs``; returns ``(paths, images)`` of the usable ones.

    An image that cannot be decoded, or whose height or width is below ``min_size``, is skipped
    with a ``UserWarning`` naming the file. ``images[i]`` is the ``(H, W, 3)`` uint8 array, or None
    when ``keep`` is False (decoded only to check it). Raises :class:`DataError` if a folder is
    missing or nothing usable is left.
    """
    paths, images, _ = _scan(dirs, min_size, keep)
    return paths, images


def sub_boxes(h: int, w: int, scale: int, sub_size: int = SUB_SIZE,
              step: int = SUB_STEP) -> list[tuple[int, int, int, int]]:
    """The sub-images ``(y, x, height, width)`` of an ``h x w`` image, row by row.

    The image is first cropped to sides multiple of the scale (``modcrop``: under ``scale`` pixels
    lost at the bottom and right). Sub-images are ``sub_size`` squares (the whole side when it is
    shorter) at ``0, step, 2*step, ...`` and one more flush with the far border when the last one
    does not reach it (BasicSR ``extract_subimages`` with ``thresh_size=0``). Every position and
    size is a multiple of the scale when ``sub_size`` and ``step`` are.
    """
    def starts(n: int) -> tuple[list[int], int]:
        n -= n % scale
        size = min(sub_size, n)
        pos = list(range(0, n - size + 1, step))
        if pos[-1] != n - size:
            pos.append(n - size)
        return pos, size

    (ys, sh), (xs, sw) = starts(h), starts(w)
    return [(y, x, sh, sw) for y in ys for x in xs]


def check_sub(scale: int, sub_size: int, step: int) -> None:
    """:class:`DataError` unless ``sub_size`` and ``step`` are positive multiples of the scale."""
    if sub_size < 15 * scale or sub_size % scale:
        raise DataError(f"sub_size {sub_size} must be a multiple of the scale {scale} and at least {15 * scale}")
    if step < 1 or step % scale:
        raise DataError(f"step {step} must be a positive multiple of the scale {scale}")


class ImageSource:
    """grain random-access source of decoded HR images ``(H, W, 3)`` uint8, cached per process.

    The cache is not pickled: each worker process decodes what it reads, once.
    """

    def __init__(self, paths: Sequence[Path], images: Sequence[np.ndarray | None] | None = None):
        self.paths = [Path(p) for p in paths]
        self._cache = {i: im for i, im in enumerate(images or []) if im is not None}

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> np.ndarray:
        img = self._cache.get(i)
        if img is None:
            img = self._cache[i] = imaging.read_image(self.paths[i]).rgb
        return img

    def __getstate__(self):
        return {"paths": self.paths, "_cache": {}}

    def __repr__(self) -> str:
        return f"ImageSource({len(self.paths)} images)"


class SubImageSource:
    """grain source of sub-image pairs ``{'hr', 'lr'}`` of decoded images: LR made once, cached per process.

    ``boxes[i] = (image index, y, x, height, width)``. The caches are not pickled.
    """

    def __init__(self, images: ImageSource, boxes: Sequence[tuple[int, int, int, int, int]],
                 scale: int, degradation: str = "matlab"):
        self.images, self.boxes = images, list(boxes)
        self.scale, self.degradation = scale, degradation
        self._lr: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        k, y, x, h, w = self.boxes[i]
        hr = self.images[k][y:y + h, x:x + w]
        lr = self._lr.get(i)
        if lr is None:
            lr = self._lr[i] = degrade(np.ascontiguousarray(hr), self.scale, self.degradation)
        return {"hr": hr, "lr": lr}

    def __getstate__(self):
        return {**self.__dict__, "_lr": {}}

    def __repr__(self) -> str:
        return f"SubImageSource({len(self.boxes)} sub-images of {len(self.images)} images)"


def check_settings(scale: int, patch: int, batch: int, degradation: str, patch_sizes: Sequence[int] = ()) -> None:
    if scale not in (2, 3, 4):
        raise DataError(f"scale must be 2, 3 or 4, got {scale}")
    for p in (patch, *patch_sizes):
        if p % scale:
            raise DataError(f"patch {p} is not a multiple of the scale {scale}")
        if p // scale < 15:
            raise DataError(f"LR patch {p // scale} is below 15 pixels (ESA needs at least 15x15)")
    if patch_sizes and max(patch_sizes) > patch:
        raise DataError(f"patch_sizes {tuple(patch_sizes)} go beyond the patch {patch} they are cut from")
    if batch < 1:
        raise DataError(f"batch must be positive, got {batch}")
    if degradation not in DEGRADATIONS:
        raise DataError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")


def _stream(source, fn, *, batch: int, seed: int, workers: int, shard: tuple[int, int],
            batch_fn: BatchCrop | None = None) -> grain.IterDataset:
    """source -> seeded shuffle per epoch, forever -> ``fn`` (random_map) -> this process's shard -> batches
    (-> ``batch_fn``, a random_map on each batch)."""
    ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat(None).random_map(fn)
    index, count = shard
    if count > 1:
        ds = ds[index::count]
    ds = ds.batch(batch, drop_remainder=True)
    if batch_fn is not None:
        ds = ds.random_map(batch_fn)
    ds = ds.to_iter_dataset()
    if workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return ds


def make_dataset(dirs: Sequence[str | os.PathLike], *, scale: int, patch: int, batch: int,
                 degradation: str = "matlab", augment: bool = True, seed: int = 0, workers: int = 0,
                 shard: tuple[int, int] = (0, 1), cache: bool = True, lr_mode: str = "crop",
                 sub_size: int = SUB_SIZE, step: int = SUB_STEP, patch_sizes: Sequence[int] = ()) -> grain.IterDataset:
    """Infinite grain dataset of batches ``{'lr': (B, p/s, p/s, 3), 'hr': (B, p, p, 3)}`` uint8.

    Each epoch visits the images (``lr_mode='aligned'``: the sub-images) in a new seeded order;
    ``batch`` is per process: with ``shard=(index, count)`` process ``index`` takes examples
    ``index::count`` of the shared stream. ``workers > 0`` decodes and crops in that many worker
    processes (``mp_prefetch``; same batches). When ``dirs`` is one prepared dataset (an
    ``.array_record`` file of :mod:`prfdn_jax.prepare`, or its folder), this is
    :func:`make_prepared_dataset` (always aligned; ``lr_mode``, ``sub_size``, ``step`` and ``cache``
    are the preparation's). ``patch_sizes``: each batch is then cut to one HR side drawn from them
    (:class:`BatchCrop`; each at most ``patch``).
    """
    dirs = [dirs] if isinstance(dirs, (str, os.PathLike)) else list(dirs)
    prepared = [d for d in dirs if find_prepared(d) is not None]
    if prepared:
        if len(dirs) > 1:
            raise DataError(f"a prepared dataset ({prepared[0]}) must be the only training data source")
        return make_prepared_dataset(dirs[0], scale=scale, patch=patch, batch=batch, degradation=degradation,
                                     augment=augment, seed=seed, workers=workers, shard=shard,
                                     patch_sizes=patch_sizes)
    check_settings(scale, patch, batch, degradation, patch_sizes)
    crop = BatchCrop.of(scale, patch_sizes)
    if lr_mode not in LR_MODES:
        raise DataError(f"unknown lr_mode {lr_mode!r}; expected one of {LR_MODES}")
    if lr_mode == "crop":
        paths, images, _ = _scan(dirs, patch, cache and workers == 0)
        return _stream(ImageSource(paths, images), CropPair(scale, patch, degradation, augment),
                       batch=batch, seed=seed, workers=workers, shard=shard, batch_fn=crop)
    check_sub(scale, sub_size, step)
    if patch > sub_size:
        raise DataError(f"patch {patch} is larger than the sub-images ({sub_size})")
    paths, images, shapes = _scan(dirs, patch, cache and workers == 0)
    boxes = [(k, *b) for k, (h, w) in enumerate(shapes) for b in sub_boxes(h, w, scale, sub_size, step)]
    return _stream(SubImageSource(ImageSource(paths, images), boxes, scale, degradation),
                   AlignedCrop(scale, patch, augment), batch=batch, seed=seed, workers=workers, shard=shard,
                   batch_fn=crop)


def make_iterator(dirs, **kw) -> grain.DatasetIterator:
    """``iter(make_dataset(dirs, **kw))``; save/restore it with ``grain.checkpoint``."""
    return iter(make_dataset(dirs, **kw))


# ----------------------------------------------------------------------------- prepared datasets (reading)
# One ArrayRecord record per sub-image pair: a 16-byte header (magic, HR height, HR width, scale), then
# the HR (h, w, 3) and the LR (h/s, w/s, 3) as raw uint8 bytes (row-major RGB). The JSON sidecar holds
# the settings and every record's HR shape. Written by prfdn_jax.prepare (encode_pair).
RECORD_HEADER = struct.Struct("<4sIIB3x")
RECORD_MAGIC = b"PRF1"
PREPARED_FORMAT = "prfdn-prepared-pairs"
FOLDER_SIDECAR, FOLDER_RECORDS = "prepared.json", "pairs.array_record"


def decode_pair(buf: bytes) -> dict[str, np.ndarray]:
    """A record -> ``{'hr': (h, w, 3), 'lr': (h/s, w/s, 3)}`` uint8, read-only views of ``buf``."""
    magic, h, w, s = RECORD_HEADER.unpack_from(buf)
    n, m = h * w * 3, (h // s) * (w // s) * 3
    if magic != RECORD_MAGIC or len(buf) != RECORD_HEADER.size + n + m:
        raise DataError("not a prepared training pair record (bad header or size)")
    o = RECORD_HEADER.size
    return {"hr": np.frombuffer(buf, np.uint8, n, o).reshape(h, w, 3),
            "lr": np.frombuffer(buf, np.uint8, m, o + n).reshape(h // s, w // s, 3)}


def prepared_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(records, sidecar)`` of a prepared dataset written at ``path``: a ``.array_record`` file
    (sidecar ``<file>.json``) or a folder (``pairs.array_record`` and ``prepared.json`` in it)."""
    p = Path(path)
    if p.suffix == ".array_record":
        return p, p.with_name(p.name + ".json")
    return p / FOLDER_RECORDS, p / FOLDER_SIDECAR


def find_prepared(path: str | os.PathLike) -> Path | None:
    """The sidecar of the prepared dataset at ``path``, or None when ``path`` is not one."""
    p = Path(path)
    if p.is_dir() and (p / FOLDER_SIDECAR).is_file():
        return p / FOLDER_SIDECAR
    if p.suffix == ".array_record":
        if not p.is_file():
            raise DataError(f"{p}: no such file")
        side = prepared_paths(p)[1]
        if not side.is_file():
            raise DataError(f"{p}: no sidecar {side.name} next to it (write it with prfdn prepare)")
        return side
    return None


def read_sidecar(path: str | os.PathLike) -> dict:
    """The sidecar of the prepared dataset at ``path`` (checked), with ``'records'`` as a full path."""
    side = find_prepared(path)
    if side is None:
        raise DataError(f"{path}: not a prepared dataset (no {FOLDER_SIDECAR} or .array_record file)")
    try:
        meta = json.loads(side.read_text())
        if meta.get("format") != PREPARED_FORMAT:
            raise ValueError(f"format is {meta.get('format')!r}, not {PREPARED_FORMAT!r}")
        meta["records"] = str(side.parent / meta["records"])
        if len(meta["shapes"]) != meta["count"]:
            raise ValueError("shapes and count disagree")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{side}: bad prepared-dataset sidecar ({e})") from None
    if not Path(meta["records"]).is_file():
        raise DataError(f"{side}: its records file {meta['records']} is missing")
    return meta


class PreparedSource:
    """grain source of the prepared sub-image pairs ``keys`` (record numbers) of an ArrayRecord file.

    Reads through ``grain.sources.ArrayRecordDataSource``, opened lazily in each process.
    """

    def __init__(self, records: str | os.PathLike, keys: Sequence[int]):
        self.records, self.keys = str(records), np.asarray(keys, np.int64)
        self._src = None

    def _source(self):
        if self._src is None:
            self._src = grain.sources.ArrayRecordDataSource(self.records)
        return self._src

    def num_records(self) -> int:
        return len(self._source())

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return decode_pair(self._source()[int(self.keys[i])])

    def __getstate__(self):
        return {**self.__dict__, "_src": None}

    def __repr__(self) -> str:
        return f"PreparedSource({len(self.keys)} pairs of {self.records})"


def make_prepared_dataset(path: str | os.PathLike, *, scale: int, patch: int, batch: int, augment: bool = True,
                          seed: int = 0, workers: int = 0, shard: tuple[int, int] = (0, 1),
                          degradation: str | None = None, patch_sizes: Sequence[int] = ()) -> grain.IterDataset:
    """Infinite grain dataset of batches, as :func:`make_dataset`, from a prepared dataset.

    Sub-images smaller than the patch are left out. The batches equal those of :func:`make_dataset`
    on the source folders with ``lr_mode='aligned'`` and the preparation's ``sub_size``/``step``.
    ``scale`` (and ``degradation`` unless None) must be the preparation's, ``patch <= sub_size``.
    """
    meta = read_sidecar(path)
    check_settings(scale, patch, batch, meta["degradation"] if degradation is None else degradation, patch_sizes)
    if scale != meta["scale"]:
        raise DataError(f"{path}: prepared for scale x{meta['scale']}, not x{scale}")
    if degradation is not None and degradation != meta["degradation"]:
        raise DataError(f"{path}: prepared with the {meta['degradation']!r} degradation, not {degradation!r}")
    if patch > meta["sub_size"]:
        raise DataError(f"{path}: patch {patch} is larger than its sub-images ({meta['sub_size']})")
    keys = [i for i, (h, w) in enumerate(meta["shapes"]) if min(h, w) >= patch]
    if not keys:
        raise DataError(f"{path}: no sub-image of at least {patch}x{patch}")
    source = PreparedSource(meta["records"], keys)
    if source.num_records() != meta["count"]:
        raise DataError(f"{path}: holds {source.num_records()} records but its sidecar says {meta['count']}")
    return _stream(source, AlignedCrop(scale, patch, augment), batch=batch, seed=seed, workers=workers, shard=shard,
                   batch_fn=BatchCrop.of(scale, patch_sizes))


def _absl_flags_parsed() -> None:
    """grain 0.2.18's mp_prefetch reads absl flags; outside ``absl.app`` mark them parsed (grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
