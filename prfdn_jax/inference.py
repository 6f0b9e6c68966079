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


def upscale_array(apply: Callable, img: np.ndarray, scale: int, tile: int = 0, overlap: int = 16) -> np.ndarray:
    """Upscale one ``(H, W, 3)`` uint8 image -> ``(sH, sW, 3)`` uint8.

    ``tile > 0`` runs overlapping ``tile x tile`` tiles (for images too large for memory) and keeps
    each tile's centre; results then differ slightly from whole-image inference because ESA's
    attention sees only the tile.
    """
    h, w = img.shape[:2]
    if min(h, w) < MIN_SIZE:
        raise ValueError(f"image is {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    x = img.astype(np.float32)[None]
    if not tile or (h <= tile and w <= tile):
        return to_uint8(apply(x)[0])
    tile = max(tile, MIN_SIZE + 2 * overlap)
    out = np.zeros((h * scale, w * scale, 3), np.uint8)
    step = tile - 2 * overlap
    for y0 in range(0, h, step):
        for x0 in range(0, w, step):
            ya, xa = max(0, min(y0 - overlap, h - tile)), max(0, min(x0 - overlap, w - tile))
            patch = x[:, ya:ya + tile, xa:xa + tile]
            sr = to_uint8(apply(patch)[0])
            y1, x1 = min(y0 + step, h), min(x0 + step, w)
            out[y0 * scale:y1 * scale, x0 * scale:x1 * scale] = sr[(y0 - ya) * scale:(y1 - ya) * scale,
                                                                   (x0 - xa) * scale:(x1 - xa) * scale]
    return out
