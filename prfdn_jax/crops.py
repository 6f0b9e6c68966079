"""The ``random_map`` functions that cut training pairs: a random crop of an HR image (:class:`CropPair`),
an aligned crop of a sub-image pair (:class:`AlignedCrop`), and a crop of a whole batch to one of several
sizes (:class:`BatchCrop`). Each is a pure function of its input and the generator grain hands it.

No JAX here (data worker processes stay light).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from prfdn_jax.resize import degrade


def _augment(rng: np.random.Generator, *arrays: np.ndarray) -> list[np.ndarray]:
    flip, rot = rng.integers(0, 2), int(rng.integers(0, 4))
    return [np.rot90(a[:, ::-1] if flip else a, rot) for a in arrays]


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
            (hr,) = _augment(rng, hr)
        hr = np.ascontiguousarray(hr)
        return {"lr": degrade(hr, s, self.degradation), "hr": hr}


@dataclasses.dataclass(frozen=True)
class AlignedCrop:
    """``random_map`` fn: a sub-image pair -> training pair: HR crop at (y, x), multiples of the scale,
    LR crop at (y/s, x/s), the same flip and rot90 on both."""

    scale: int
    patch: int
    augment: bool = True

    def __call__(self, pair: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        p, s = self.patch, self.scale
        q = p // s
        hr, lr = pair["hr"], pair["lr"]
        h, w = hr.shape[:2]
        y = s * int(rng.integers(0, (h - p) // s + 1))
        x = s * int(rng.integers(0, (w - p) // s + 1))
        hr, lr = hr[y:y + p, x:x + p], lr[y // s:y // s + q, x // s:x // s + q]
        if self.augment:
            hr, lr = _augment(rng, hr, lr)
        return {"lr": np.ascontiguousarray(lr), "hr": np.ascontiguousarray(hr)}


@dataclasses.dataclass(frozen=True)
class BatchCrop:
    """``random_map`` fn on a batch of ``patch`` pairs: one HR side drawn from ``sizes`` and one
    scale-aligned window for the whole batch, so a run trains ESA on several pooled-map sizes (its
    7x7/3 max-pool sees the whole input: a patch fixes the map size that training sees)."""

    scale: int
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, scale: int, sizes) -> BatchCrop | None:
        """The crop for ``sizes``, or None (no crop) when there are none."""
        return cls(scale, tuple(sizes)) if sizes else None

    def __call__(self, b: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        s, p = self.scale, int(self.sizes[int(rng.integers(0, len(self.sizes)))])
        q, n = p // s, b["hr"].shape[1]
        y, x = (s * int(rng.integers(0, (n - p) // s + 1)) for _ in range(2))
        return {"lr": np.ascontiguousarray(b["lr"][:, y // s:y // s + q, x // s:x // s + q]),
                "hr": np.ascontiguousarray(b["hr"][:, y:y + p, x:x + p])}
