"""The deployed network: a short dataflow program of convs and elementwise ops on named NHWC values.

A :class:`Program` is a list of ops in execution order; each op writes one named value. The program
is plain data (NumPy weights, Python ints), so rewrites are pure functions ``Program -> Program``
(:mod:`prfdn_jax.deploy.passes`) and the JAX code that runs it (:mod:`prfdn_jax.deploy.run`) is one
small interpreter. Later backends (e.g. a fused Pallas RFDB trunk) replace ops or op ranges.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

import numpy as np


@dataclasses.dataclass
class Conv:
    """``out = conv(src, kernel) + bias``; kernel HWIO ``(k, k, cin/groups, cout)``, symmetric ``pad``."""

    out: str
    src: str
    kernel: np.ndarray
    bias: np.ndarray
    stride: int = 1
    pad: int = 0
    groups: int = 1
    precise: bool = False  # computed in float32 whatever the program's dtype

    @property
    def k(self) -> int:
        return int(self.kernel.shape[0])

    @property
    def cin(self) -> int:
        return int(self.kernel.shape[2]) * self.groups

    @property
    def cout(self) -> int:
        return int(self.kernel.shape[3])

    def inputs(self) -> tuple[str, ...]:
        return (self.src,)


@dataclasses.dataclass
class Act:
    """``lrelu`` (slope 0.05), ``relu`` or ``sigmoid`` of ``src``."""

    out: str
    src: str
    kind: str

    def inputs(self):
        return (self.src,)


@dataclasses.dataclass
class Add:
    out: str
    a: str
    b: str
    precise: bool = False

    def inputs(self):
        return (self.a, self.b)


@dataclasses.dataclass
class Mul:
    out: str
    a: str
    b: str

    def inputs(self):
        return (self.a, self.b)


@dataclasses.dataclass
class Concat:
    out: str
    srcs: tuple[str, ...]

    def inputs(self):
        return tuple(self.srcs)


@dataclasses.dataclass
class Slice:
    """Channels ``[start, stop)`` of ``src``."""

    out: str
    src: str
    start: int
    stop: int

    def inputs(self):
        return (self.src,)


@dataclasses.dataclass
class MaxPool:
    """ESA's 7x7 stride-3 valid max-pool."""

    out: str
    src: str
    window: int = 7
    stride: int = 3

    def inputs(self):
        return (self.src,)


@dataclasses.dataclass
class Resize:
    """Bilinear resize of ``src`` to the height and width of ``like`` (align_corners=False, no antialias)."""

    out: str
    src: str
    like: str

    def inputs(self):
        return (self.src, self.like)


@dataclasses.dataclass
class PixelShuffle:
    out: str
    src: str
    r: int
    precise: bool = True

    def inputs(self):
        return (self.src,)


Op = Conv | Act | Add | Mul | Concat | Slice | MaxPool | Resize | PixelShuffle


@dataclasses.dataclass
class Program:
    """Ops in execution order; ``inp`` is the ``(B, H, W, 3)`` image in [0, 255], ``out`` the SR image."""

    ops: list
    scale: int
    inp: str = "x"
    out: str = "y"

    def copy(self) -> "Program":
        return Program([dataclasses.replace(op) for op in self.ops], self.scale, self.inp, self.out)

    def producer(self) -> dict[str, Op]:
        return {op.out: op for op in self.ops}

    def consumers(self) -> dict[str, list[Op]]:
        out: dict[str, list[Op]] = {}
        for op in self.ops:
            for v in op.inputs():
                out.setdefault(v, []).append(op)
        return out

    def uses(self) -> Counter:
        c = Counter(v for op in self.ops for v in op.inputs())
        c[self.out] += 1
        return c

    def convs(self) -> list[Conv]:
        return [op for op in self.ops if isinstance(op, Conv)]

    def summary(self) -> dict:
        """Op counts by kind and the parameters held."""
        kinds = Counter(type(op).__name__ for op in self.ops)
        params = sum(op.kernel.size + op.bias.size for op in self.convs())
        return {"ops": len(self.ops), "convs": kinds.get("Conv", 0), "params": int(params), "by_kind": dict(kinds)}


def channels(prog: Program) -> dict[str, int]:
    """Channel count of every value (the input has 3)."""
    ch = {prog.inp: 3}
    for op in prog.ops:
        if isinstance(op, Conv):
            ch[op.out] = op.cout
        elif isinstance(op, Concat):
            ch[op.out] = sum(ch[s] for s in op.srcs)
        elif isinstance(op, Slice):
            ch[op.out] = op.stop - op.start
        elif isinstance(op, PixelShuffle):
            ch[op.out] = ch[op.src] // (op.r * op.r)
        elif isinstance(op, (Add, Mul)):
            ch[op.out] = ch[op.a]
        else:
            ch[op.out] = ch[op.inputs()[0]]
    return ch


def prune_dead(prog: Program) -> Program:
    """Drop ops whose values nothing uses (iterated)."""
    ops = list(prog.ops)
    while True:
        used = set(v for op in ops for v in op.inputs()) | {prog.out}
        keep = [op for op in ops if op.out in used]
        if len(keep) == len(ops):
            return Program(keep, prog.scale, prog.inp, prog.out)
        ops = keep


def rename(prog: Program, mapping: dict[str, str]) -> Program:
    """Replace every use of value ``a`` by ``mapping[a]`` (definitions untouched)."""
    def sub(v):
        while v in mapping:
            v = mapping[v]
        return v

    ops = []
    for op in prog.ops:
        op = dataclasses.replace(op)
        for field in ("src", "a", "b", "like"):
            if hasattr(op, field):
                setattr(op, field, sub(getattr(op, field)))
        if isinstance(op, Concat):
            op.srcs = tuple(sub(s) for s in op.srcs)
        ops.append(op)
    return Program(ops, prog.scale, prog.inp, sub(prog.out))


class Namer:
    """Fresh value names that do not clash with a program's."""

    def __init__(self, taken: Iterable[str]):
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        i, name = 0, base
        while name in self.taken:
            i += 1
            name = f"{base}~{i}"
        self.taken.add(name)
        return name
