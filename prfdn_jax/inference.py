"""Running a network on images: jitted apply, uint8 in and out, optional overlapping tiles.

The networks see float pixels in [0, 255] and the output is clamped and rounded to uint8, as the
released models and the benchmark do. One compile per input shape (ESA pools over the whole image,
so padding to a bucket would change every output pixel).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prfdn_jax.networks import with_impl
from prfdn_jax.spec import MIN_SIZE


def make_apply(model: nnx.Module, impl: str | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """``f(x)``: ``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float, jitted per shape.

    ``impl``: the apply path (default: the one set on ``model``, else the backend's).
    """
    graphdef, state = nnx.split(with_impl(model, impl) if impl else model)

    @jax.jit
    def f(state, x):
        return nnx.merge(graphdef, state)(x)

    return lambda x: f(state, jnp.asarray(x, jnp.float32))


def to_uint8(y) -> np.ndarray:
    return np.asarray(jnp.clip(jnp.round(y), 0, 255)).astype(np.uint8)


DEFAULT_OVERLAP = 16  # LR pixels shared by neighbouring tiles (chosen from the Urban100 measurement, BENCHMARKS.md)
TILE_BATCH = 4        # tiles run together through one compiled program


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap`` shared."""
    if length <= tile:
        return [0]
    step = tile - overlap
    n = -(-(length - overlap) // step)  # ceil((length - overlap) / step)
    starts = [min(i * step, length - tile) for i in range(n)]
    return sorted(set(starts))


def _ramp(length: int, starts: list[int], tile: int, i: int, scale: int) -> np.ndarray:
    """Feathering weights along one axis of tile ``i`` (output pixels): linear ramps where it overlaps
    its neighbours, 1 elsewhere; weights of overlapping tiles are blended by normalisation."""
    n = tile * scale
    w = np.ones(n, np.float32)
    pos = np.arange(n, dtype=np.float32) + 0.5
    if i > 0:
        ov = (starts[i - 1] + tile - starts[i]) * scale
        w = np.minimum(w, np.clip(pos / max(ov, 1), 1e-3, 1.0))
    if i < len(starts) - 1:
        ov = (starts[i] + tile - starts[i + 1]) * scale
        w = np.minimum(w, np.clip((n - pos) / max(ov, 1), 1e-3, 1.0))
    return w


def upscale_array(apply: Callable, img: np.ndarray, scale: int, tile: int = 0, overlap: int = DEFAULT_OVERLAP,
                  batch: int = TILE_BATCH) -> np.ndarray:
    """Upscale one ``(H, W, 3)`` uint8 image -> ``(sH, sW, 3)`` uint8.

    ``tile > 0`` runs ``tile x tile`` tiles overlapping by ``overlap`` LR pixels, ``batch`` at a time
    through one compiled program (every tile has the same shape), and blends the overlaps with linear
    feathering, so no seam shows. Results differ slightly from whole-image inference because ESA's
    attention sees only its tile (Urban100: BENCHMARKS.md).
    """
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    x = img.astype(np.float32)
    if not tile or (h <= tile and w <= tile):
        return to_uint8(apply(x[None])[0])
    if tile < MIN_SIZE or overlap < 0 or overlap >= tile:
        raise ValueError(f"tile {tile} with overlap {overlap}: need tile >= {MIN_SIZE} and 0 <= overlap < tile")
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    boxes = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    acc = np.zeros((h * scale, w * scale, 3), np.float32)
    wsum = np.zeros((h * scale, w * scale, 1), np.float32)
    for k in range(0, len(boxes), batch):
        group = boxes[k:k + batch]
        tiles = np.stack([x[ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in group])
        if len(group) < batch and len(boxes) > batch:  # keep one shape: one compiled program
            tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch - len(group), 0)])
        sr = np.asarray(apply(tiles))
        for (i, j), out in zip(group, sr):
            wy = _ramp(h, ys, th, i, scale)
            wx = _ramp(w, xs, tw, j, scale)
            wt = (wy[:, None] * wx[None, :])[..., None]
            y0, x0 = ys[i] * scale, xs[j] * scale
            acc[y0:y0 + th * scale, x0:x0 + tw * scale] += out * wt
            wsum[y0:y0 + th * scale, x0:x0 + tw * scale] += wt
    return to_uint8(acc / wsum)
