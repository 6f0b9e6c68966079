"""The deploy compiler: any network -> an exact, fast inference program.

``deploy(model, backend)`` merges the network (exactly; :func:`prfdn_jax.reparam.wide_to_merged`),
lowers it to a :class:`~prfdn_jax.deploy.graph.Program` (one op per layer), applies the exact
rewrites that measure faster on ``backend`` (which ones: the backend's ``rewrites`` in
:data:`prfdn_jax.backends.CHOICES`; the rewrites: :mod:`prfdn_jax.deploy.passes`) and compiles it
with the weights as constants (:mod:`prfdn_jax.deploy.run`). The result computes the same function
as the network (fp32: within 1e-4 relative), in float32, float16 or bfloat16.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from flax import nnx

from prfdn_jax.backends import backend_name, choices
from prfdn_jax.deploy import passes
from prfdn_jax.deploy.graph import Program
from prfdn_jax.deploy.lower import lower
from prfdn_jax.deploy.run import DTYPES, compile_program
from prfdn_jax.spec import Arch

__all__ = ["DTYPES", "Deployed", "deploy", "lower_model"]


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
    backend: str  # 'cpu', 'gpu' or 'tpu' (backends.backend_name)

    def __post_init__(self):
        self._fn = compile_program(self.program, self.dtype, choices(self.backend).rewrites.grouped)

    @property
    def scale(self) -> int:
        return self.program.scale

    def __call__(self, x):
        return self._fn(jax.numpy.asarray(x, jax.numpy.float32))

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
