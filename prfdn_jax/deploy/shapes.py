"""Shapes of a program's values, and what a padded input needs to compute exactly (shape buckets).

:func:`extents` propagates an input's height and width through a :class:`~prfdn_jax.deploy.graph.Program`
(convs, ESA's strided conv and max-pool, the upsample back to the image size, PixelShuffle).
:func:`valid_args` gives :func:`prfdn_jax.deploy.run.evaluate` an image's valid extents inside a larger,
padded input: one compiled program then serves every image that fits its shape, with the output of each
image alone in the valid region (exact; ``tests/test_throughput.py``).
"""

from __future__ import annotations

import numpy as np

from prfdn_jax.deploy.graph import Concat, Conv, MaxPool, PixelShuffle, Program, Resize
from prfdn_jax.deploy.run import resize_table


def extents(prog: Program, h: int, w: int) -> dict[str, tuple[int, int]]:
    """``{value: (height, width)}`` of every value of ``prog`` for an ``h x w`` input."""
    ext = {prog.inp: (h, w)}
    for op in prog.ops:
        if isinstance(op, Conv):
            ext[op.out] = tuple((n + 2 * op.pad - op.k) // op.stride + 1 for n in ext[op.src])
        elif isinstance(op, MaxPool):
            ext[op.out] = tuple((n - op.window) // op.stride + 1 for n in ext[op.src])
        elif isinstance(op, Resize):
            ext[op.out] = ext[op.like]
        elif isinstance(op, PixelShuffle):
            ext[op.out] = tuple(n * op.r for n in ext[op.src])
        elif isinstance(op, Concat):
            ext[op.out] = ext[op.srcs[0]]
        else:
            ext[op.out] = ext[op.inputs()[0]]
    return ext


def valid_args(prog: Program, valid: tuple[int, int], padded: tuple[int, int]) -> dict:
    """``evaluate``'s ``valid`` for an image of ``valid = (h, w)`` pixels at the top left of a ``padded``
    ``(H, W)`` input: the valid extent of every value a zero-padded conv reads, and ESA's upsampling
    tables from the valid pooled extent to the valid image extent (padded to the padded lengths).
    Its array shapes depend on ``padded`` only, so every image of one padded shape shares one compile."""
    ext, full = extents(prog, *valid), extents(prog, *padded)
    if min(min(e) for e in ext.values()) < 1:
        raise ValueError(f"image {valid[1]}x{valid[0]} is too small for the network")
    if any(v > p for v, p in zip(valid, padded)):
        raise ValueError(f"image {valid[1]}x{valid[0]} does not fit the padded shape {padded[1]}x{padded[0]}")
    extent = {op.src: np.asarray(ext[op.src], np.int32) for op in prog.ops if isinstance(op, Conv) and op.pad}
    resize = {}
    for op in prog.ops:
        if isinstance(op, Resize):
            (hs, ws), (ho, wo), (hp, wp) = ext[op.src], ext[op.like], full[op.like]
            resize[op.out] = (resize_table(hs, ho, hp), resize_table(ws, wo, wp))
    return {"extent": extent, "resize": resize}
