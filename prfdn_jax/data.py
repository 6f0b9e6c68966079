"""Training data: random HR crops and their bicubic LR, as a grain pipeline.

Images come from one or more folders of HR images (``imaging.list_images``). Each is decoded once
when the dataset is built: an unreadable image, or one smaller than the patch, is skipped with a
warning that names it. An example is a random HR crop of ``patch x patch`` pixels (a multiple of
the scale), randomly flipped and rotated by a multiple of 90 degrees, and its LR made on the fly:

* ``'matlab'`` (default): ``resize.downscale(crop, s, 'matlab')``, MATLAB ``imresize`` bicubic, the
  degradation of the classic benchmarks (Set5, Set14, DIV2K ``LR_bicubic``);
* ``'ntire'``: ``resize.ntire_degrade(crop, s)``, PIL bicubic + JPEG quality 90 (NTIRE 2023 RTSR).

Batches are ``{'lr': (B, p/s, p/s, 3) uint8, 'hr': (B, p, p, 3) uint8}``. Everything random is a
function of the seed and the example index (grain ``random_map``), so the stream is the same with
or without worker processes, and the iterator's state (``get_state``) resumes it exactly.

This module does not import JAX: worker processes stay light.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import grain
import numpy as np

from prfdn_jax import imaging, resize

DEGRADATIONS = ("matlab", "ntire")


class DataError(ValueError):
    """Bad data settings or no usable image; the message is one line."""


def shared_path(*parts: str) -> Path:
    """A path under the shared data/docs folder: ``$PRFDN_SHARED``, else ``<project>/../shared``."""
    root = os.environ.get("PRFDN_SHARED")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared"
    return base.joinpath(*parts)


def scan_images(dirs: Sequence[str | os.PathLike], min_size: int = 1,
                keep: bool = True) -> tuple[list[Path], list[np.ndarray | None]]:
    """Decode every image in ``dirs``; returns ``(paths, images)`` of the usable ones.

    An image that cannot be decoded, or whose height or width is below ``min_size``, is skipped
    with a ``UserWarning`` naming the file. ``images[i]`` is the ``(H, W, 3)`` uint8 array, or None
    when ``keep`` is False (decoded only to check it). Raises :class:`DataError` if a folder is
    missing or nothing usable is left.
    """
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise DataError("no data folder given")
    paths, images = [], []
    for d in dirs:
        try:
            files = imaging.list_images(d)
        except imaging.ImageError as e:
            raise DataError(str(e)) from None
        if not files:
            warnings.warn(f"{d}: no image files (.png, .jpg, .jpeg, .bmp) in this folder", stacklevel=2)
        for p in files:
            try:
                img = imaging.read_image(p).rgb
            except imaging.ImageError as e:
                warnings.warn(f"skipping unreadable image {p}: {e}", stacklevel=2)
                continue
            if min(img.shape[:2]) < min_size:
                warnings.warn(f"skipping image {p}: {img.shape[1]}x{img.shape[0]} is smaller than the "
                              f"{min_size}x{min_size} training patch", stacklevel=2)
                continue
            paths.append(p)
            images.append(img if keep else None)
    if not paths:
        raise DataError(f"no usable training image (at least {min_size}x{min_size}) in "
                        f"{', '.join(str(d) for d in dirs)}")
    return paths, images


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


@dataclasses.dataclass(frozen=True)
class CropPair:
    """``random_map`` fn: an HR image -> ``{'lr', 'hr'}`` training pair (random crop, flip, rot90)."""

    scale: int
    patch: int
    degradation: str = "matlab"
    augment: bool = True

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        p, s = self.patch, self.scale
        h, w = img.shape[:2]
        y = int(rng.integers(0, h - p + 1))
        x = int(rng.integers(0, w - p + 1))
        hr = img[y:y + p, x:x + p]
        if self.augment:
            flip, rot = rng.integers(0, 2), int(rng.integers(0, 4))
            if flip:
                hr = hr[:, ::-1]
            hr = np.rot90(hr, rot)
        hr = np.ascontiguousarray(hr)
        if self.degradation == "matlab":
            lr = resize.downscale(hr, s, "matlab")
        else:
            lr = resize.ntire_degrade(hr, s)
        return {"lr": lr, "hr": hr}


def check_settings(scale: int, patch: int, batch: int, degradation: str) -> None:
    if scale not in (2, 3, 4):
        raise DataError(f"scale must be 2, 3 or 4, got {scale}")
    if patch % scale:
        raise DataError(f"patch {patch} is not a multiple of the scale {scale}")
    if patch // scale < 15:
        raise DataError(f"LR patch {patch // scale} is below 15 pixels (ESA needs at least 15x15)")
    if batch < 1:
        raise DataError(f"batch must be positive, got {batch}")
    if degradation not in DEGRADATIONS:
        raise DataError(f"unknown degradation {degradation!r}; expected one of {DEGRADATIONS}")


def make_dataset(dirs: Sequence[str | os.PathLike], *, scale: int, patch: int, batch: int,
                 degradation: str = "matlab", augment: bool = True, seed: int = 0, workers: int = 0,
                 shard: tuple[int, int] = (0, 1), cache: bool = True) -> grain.IterDataset:
    """Infinite grain dataset of batches ``{'lr': (B, p/s, p/s, 3), 'hr': (B, p, p, 3)}`` uint8.

    Each epoch visits the images in a new seeded order; ``batch`` is per process: with
    ``shard=(index, count)`` process ``index`` takes examples ``index::count`` of the shared stream.
    ``workers > 0`` decodes and crops in that many worker processes (``mp_prefetch``; same batches).
    """
    check_settings(scale, patch, batch, degradation)
    paths, images = scan_images(dirs, min_size=patch, keep=cache and workers == 0)
    ds = (grain.MapDataset.source(ImageSource(paths, images)).seed(seed).shuffle().repeat(None)
          .random_map(CropPair(scale, patch, degradation, augment)))
    index, count = shard
    if count > 1:
        ds = ds[index::count]
    ds = ds.batch(batch, drop_remainder=True).to_iter_dataset()
    if workers > 0:
        _absl_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=2))
    return ds


def make_iterator(dirs, **kw) -> grain.DatasetIterator:
    """``iter(make_dataset(dirs, **kw))``; save/restore it with ``grain.checkpoint``."""
    return iter(make_dataset(dirs, **kw))


def _absl_flags_parsed() -> None:
    """grain 0.2.18's mp_prefetch reads absl flags; outside ``absl.app`` mark them parsed (grain#1355)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
