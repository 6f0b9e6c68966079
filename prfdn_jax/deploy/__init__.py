"""The deploy compiler: any network -> an exact, fast inference program.

``deploy(model, backend)`` merges the network (exactly; :func:`prfdn_jax.reparam.wide_to_merged`),
lowers it to a :class:`~prfdn_jax.deploy.graph.Program` (one op per layer), applies the exact
rewrites that measure faster on ``backend`` (:data:`REWRITES`, :mod:`prfdn_jax.deploy.passes`) and
compiles it with the weights as constants (:mod:`prfdn_jax.deploy.run`). The result computes the
same function as the network (fp32: within 1e-4 relative), in float32, float16 or bfloat16.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from prfdn_jax.deploy import passes
from prfdn_jax.deploy.graph import Program
from prfdn_jax.deploy.lower import lower
from prfdn_jax.deploy.run import DTYPES, compile_program
from prfdn_jax.spec import Arch

__all__ = ["DTYPES", "REWRITES", "Deployed", "deploy", "lower_model"]

# Which rewrites each backend gets (all exact), from `prfdn bench` (BENCHMARKS.md). `merge`: convs of one
# kernel size reading one tensor become one conv; `mix_kernels`: a 1x1 may join a 3x3 as its centre tap
# (more MACs, fewer kernels: for memory-bound GPUs; 16% slower on the 2-core CPU); `fold_cost`: "macs"
# folds a 1x1 into the conv before it only where that adds no MACs (CPU: 6% faster than "always"),
# "always" wherever allowed (fewer kernels); `pointwise_dot`: 1x1 convs as matmuls (slower on XLA CPU);
# `grouped`: how grouped convs run ("loop": one conv per group, the fast CPU path); `pad`: conv outputs
# zero-padded to a multiple of this (GPU: 23->23 3x3 fp16 at 1080p 1.40 ms, 24->24 0.57 ms, measured
# on an H100 by the issue that asked for it; not re-measured here, no GPU was lent), `pad_growth`: only
# where that grows a conv's outputs by at most this factor (CPU: 22/23 -> 24 only; prfdn-x2 at 540x960
# 3-4% faster, every conv padded 4-5% faster but rfdn-x4's 50 -> 56 7% slower; prfdn-x3 unchanged).
REWRITES = {
    "cpu": {"merge": True, "mix_kernels": False, "fold_cost": "macs", "grouped": "loop", "pad": 8,
            "pad_growth": 1.1},
    "gpu": {"merge": True, "mix_kernels": True, "fold_cost": "always", "grouped": "grouped", "pad": 8,
            "pad_growth": None},
}


def lower_model(model: nnx.Module) -> Program:
    """The literal program of any network (branch, wide and RFDN nets are merged first, exactly)."""
    from prfdn_jax.checkpoint import flat_params
    from prfdn_jax.reparam import wide_to_merged

    merged = model if model.arch.form == "merged" else wide_to_merged(model)
    return lower(merged.arch, flat_params(merged))


@dataclasses.dataclass
class Deployed:
    """A compiled inference program: ``deployed(x)``, ``(B, H, W, 3)`` float in [0, 255] -> float32 SR."""

    program: Program
    arch: Arch
    dtype: str
    backend: str

    def __post_init__(self):
        self._fn = compile_program(self.program, self.dtype, REWRITES[_kind(self.backend)]["grouped"])

    @property
    def scale(self) -> int:
        return self.program.scale

    def __call__(self, x):
        return self._fn(jax.numpy.asarray(x, jax.numpy.float32))

    def lower_text(self, shape=(1, 64, 64, 3)) -> str:
        """The compiled program for an input shape, as text (to count kernels and transposes)."""
        return self._fn.lower(jax.ShapeDtypeStruct(shape, np.float32)).compile().as_text()


def _kind(backend: str) -> str:
    return "cpu" if backend == "cpu" else "gpu"


def deploy(model: nnx.Module, backend: str | None = None, dtype: str = "float32") -> Deployed:
    """The inference program of ``model`` for ``backend`` (default: JAX's) in ``dtype``."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(DTYPES)}")
    backend = backend or jax.default_backend()
    opts = REWRITES[_kind(backend)]
    prog = passes.standard(lower_model(model), merge=opts["merge"], mix_kernels=opts["mix_kernels"],
                           fold_cost=opts["fold_cost"], pad=opts["pad"], pad_growth=opts["pad_growth"])
    return Deployed(prog, model.arch, dtype, backend)
