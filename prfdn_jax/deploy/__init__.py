"""The deploy compiler: any network -> an exact, fast inference program.

``deploy(model, backend)`` merges the network (exactly; :func:`prfdn_jax.reparam.wide_to_merged`),
lowers it to a :class:`~prfdn_jax.deploy.graph.Program` (one op per layer), applies the exact
rewrites that measure faster on ``backend`` (which ones: the backend's ``rewrites`` in
:data:`prfdn_jax.backends.CHOICES`; the rewrites: :mod:`prfdn_jax.deploy.passes`) and compiles it
with the weights as constants (:mod:`prfdn_jax.deploy.run`). The result computes the same function
as the network (fp32: within 1e-4 relative), in float32, float16 or bfloat16.

The shape-independent work (merging, lowering, the passes, the constant weights) is done once per
model, in :func:`deploy`; a :class:`Deployed` compiles one program per input shape and keeps the last
:data:`PROGRAMS_KEPT` (:class:`ShapeCache`), so memory stays flat over a folder of many sizes. A padded
input with its valid size (``deployed(x, valid=(h, w))``: shape buckets) computes exactly what the
image alone computes (:mod:`prfdn_jax.deploy.shapes`).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable

import jax
import numpy as np
from flax import nnx

from prfdn_jax.backends import backend_name, choices
from prfdn_jax.deploy import passes
from prfdn_jax.deploy.graph import Program
from prfdn_jax.deploy.lower import lower
from prfdn_jax.deploy.run import DTYPES, compile_program, evaluate
from prfdn_jax.deploy.shapes import valid_args
from prfdn_jax.spec import Arch

__all__ = ["DTYPES", "PROGRAMS_KEPT", "Deployed", "ShapeCache", "deploy", "lower_model"]

PROGRAMS_KEPT = 8  # compiled programs a Deployed keeps (60 sizes at x2: peak RSS 837 -> 682-717 MB)


def lower_model(model: nnx.Module) -> Program:
    """The literal program of any network (branch, wide and RFDN nets are merged first, exactly)."""
    from prfdn_jax.checkpoint import flat_params
    from prfdn_jax.reparam import wide_to_merged

    merged = model if model.arch.form == "merged" else wide_to_merged(model)
    return lower(merged.arch, flat_params(merged))


class ShapeCache:
    """Values by key (compiled programs by input shape), the ``size`` used last kept: ``get(key, build)``
    returns the kept value or ``build()``'s, evicting the least recently used beyond ``size``."""

    def __init__(self, size: int = PROGRAMS_KEPT):
        self.size, self.builds, self.hits = size, 0, 0
        self._items: OrderedDict = OrderedDict()

    def get(self, key: Hashable, build: Callable[[], object]):
        if key in self._items:
            self._items.move_to_end(key)
            self.hits += 1
            return self._items[key]
        value = build()
        self.builds += 1
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def keys(self) -> list:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclasses.dataclass
class Deployed:
    """A compiled inference program: ``deployed(x)``, ``(B, H, W, 3)`` float in [0, 255] -> float32 SR.

    ``deployed(x, valid=(h, w))``: ``x`` is an ``h x w`` image padded at the bottom and right; the output's
    top-left ``(h * scale, w * scale)`` is exactly the image's own output (the rest is to be cropped).
    One program per input shape (padded or not), the last ``programs.size`` kept (:class:`ShapeCache`).
    """

    program: Program
    arch: Arch
    dtype: str
    backend: str  # 'cpu', 'gpu' or 'tpu' (backends.backend_name)

    def __post_init__(self):
        grouped = choices(self.backend).rewrites.grouped
        self._fn = compile_program(self.program, self.dtype, grouped)  # jitted, for lower_text and the bench
        self._eval = (self.program.copy(), DTYPES[self.dtype], grouped)
        self.programs = ShapeCache()

    @property
    def scale(self) -> int:
        return self.program.scale

    def __call__(self, x, valid: tuple[int, int] | None = None):
        x = jax.numpy.asarray(x, jax.numpy.float32)
        if valid is None:
            return self.programs.get((x.shape, False), lambda: self._compile(x))(x)
        args = valid_args(self.program, tuple(valid), x.shape[1:3])
        return self.programs.get((x.shape, True), lambda: self._compile(x, args))(x, args)

    def compile_px(self) -> float:
        """What compiling a new input shape costs, in pixels of computing (an estimate from the program's
        conv kernels and multiply-accumulates per pixel, and the backend's ``compile_cost``)."""
        per_kernel, per_px, per_mac = choices(self.backend).compile_cost
        convs = self.program.convs()
        kernels = sum(op.groups if self._eval[2] == "loop" else 1 for op in convs)
        macs = sum(op.k * op.k * op.cin // op.groups * op.cout / op.stride ** 2 for op in convs)
        return per_kernel * kernels / (per_px + per_mac * macs)

    def jit(self, padded: bool = False):
        """A new jitted function of the program: ``f(x)``, or ``f(x, args)`` for a padded input (``args``:
        :func:`~prfdn_jax.deploy.shapes.valid_args`). Its compiled programs live as long as it does."""
        prog, dt, grouped = self._eval
        if padded:
            return jax.jit(lambda v, a: evaluate(prog, v, dt, grouped, a))
        return jax.jit(lambda v: evaluate(prog, v, dt, grouped))

    def _compile(self, x, args=None):
        """The program compiled for ``x``'s shape (and a padded input's ``args``), by a jit of its own: the
        executable lives as long as the :class:`ShapeCache` keeps it."""
        if args is None:
            return self.jit().lower(x).compile()
        return self.jit(padded=True).lower(x, args).compile()

    def lower_text(self, shape=(1, 64, 64, 3)) -> str:
        """The compiled program for an input shape, as text (to count kernels and transposes)."""
        return self._fn.lower(jax.ShapeDtypeStruct(shape, np.float32)).compile().as_text()


def deploy(model: nnx.Module, backend: str | None = None, dtype: str = "float32") -> Deployed:
    """The inference program of ``model`` for ``backend`` (default: JAX's) in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    backend = backend_name(backend)
    with np.errstate(over="ignore"):  # weights that overflow float32 when folded: the output check reports them
        prog = passes.standard(lower_model(model), **choices(backend).rewrites.standard_options())
    return Deployed(prog, model.arch, dtype, backend)
