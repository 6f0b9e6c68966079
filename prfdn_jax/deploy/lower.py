"""Lowering: a merged network's parameters -> the literal :class:`~prfdn_jax.deploy.graph.Program`.

The program computes exactly what :class:`prfdn_jax.networks.MergedNet` computes, one op per layer;
the rewrites of :mod:`prfdn_jax.deploy.passes` then make it fast. Branch, wide and RFDN networks are
first merged exactly (:func:`prfdn_jax.reparam.wide_to_merged`).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from prfdn_jax.deploy.graph import (Act, Add, Concat, Conv, MaxPool, Mul, PixelShuffle, Program, Resize)
from prfdn_jax.spec import Arch, block_steps, geometry


class _Builder:
    def __init__(self, flat: Mapping[str, np.ndarray]):
        self.flat, self.ops = flat, []

    def conv(self, name: str, src: str, **kw) -> str:
        k, stride, pad = geometry(name)
        kernel = np.asarray(self.flat[name + ".kernel"], np.float32)
        assert kernel.shape[0] == k, name
        self.ops.append(Conv(name, src, kernel, np.asarray(self.flat[name + ".bias"], np.float32), stride, pad, **kw))
        return name

    def add(self, op) -> str:
        self.ops.append(op)
        return op.out


def _esa(b: _Builder, p: str, x: str) -> str:
    c1_ = b.conv(p + "conv1", x)
    c1 = b.conv(p + "conv2", c1_)
    v = b.add(MaxPool(p + "pool", c1))
    v = b.add(Act(p + "conv_max.act", b.conv(p + "conv_max", v), "relu"))
    c3 = b.add(Act(p + "conv3.act", b.conv(p + "conv3", v), "relu"))
    c3 = b.add(Resize(p + "up", b.conv(p + "conv3_", c3), x))
    s = b.add(Add(p + "sum", c3, b.conv(p + "conv_f", c1_)))
    m = b.add(Act(p + "mask", b.conv(p + "conv4", s), "sigmoid"))
    return b.add(Mul(p + "out", x, m))


def _block(b: _Builder, p: str, x: str, widths) -> str:
    steps = block_steps(widths, p)
    distilled, r = [], x
    for i in range(1, steps + 1):
        distilled.append(b.add(Act(f"{p}d{i}", b.conv(f"{p}c{i}_d", r), "lrelu")))
        s = b.add(Add(f"{p}c{i}_r.res", b.conv(f"{p}c{i}_r", r), r))
        r = b.add(Act(f"{p}r{i}", s, "lrelu"))
    distilled.append(b.add(Act(f"{p}r{steps + 1}", b.conv(p + "c4", r), "lrelu")))
    y = b.add(Concat(p + "cat", tuple(distilled)))
    if p + "cat_p" in widths:
        y = b.conv(p + "cat_p", y)
    return _esa(b, p + "esa.", b.conv(p + "c5", y))


def lower(arch: Arch, flat: Mapping[str, np.ndarray]) -> Program:
    """The program of a merged ``arch`` with flat parameters ``flat`` (``'fea.kernel'``: HWIO ...)."""
    if arch.form != "merged":
        raise ValueError("lower() takes a merged network; merge it first (reparam.wide_to_merged)")
    w = arch.w
    b = _Builder(flat)
    n = arch.branches
    xin = b.add(Concat("x.copies", ("x",) * n)) if n > 1 else "x"
    f = b.conv("fea", xin)
    if "srfdb.c5" in w:
        left = b.conv("split_left", f)
        right = _block(b, "srfdb.", b.conv("split_right", f), w)
        f = b.add(Concat("f", (left, right)))
    outs, h = [], f
    for d in range(arch.depth):
        h = _block(b, f"stages.{d}.", h, w)
        outs.append(h)
    y = b.add(Concat("stages.cat", tuple(outs))) if len(outs) > 1 else outs[0]
    if "cat_p" in w:
        y = b.conv("cat_p", y)
    # the precision-critical tail runs in float32 whatever the program's dtype: the global residual
    # (split of the first features, hundreds of grey levels) and the convs that make the output
    y = b.add(Act("c.act", b.conv("c", y, precise=True), "lrelu"))
    out = b.add(Add("residual", b.conv("LR_conv", y, precise=True), b.conv("split", f, precise=True), precise=True))
    b.add(PixelShuffle("y", b.conv("upsampler", out, precise=True), arch.scale))
    return Program(b.ops, arch.scale)
