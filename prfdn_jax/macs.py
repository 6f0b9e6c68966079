"""Parameters and multiply-accumulates by the NTIRE 2023 organisers' definition.

Per conv ``k*k*(Cin/groups)*Cout*Hout*Wout`` at that conv's own output resolution (ESA's strided and
pooled convs are small), plus one per output element of every ReLU/LeakyReLU application; sigmoid,
add and concat are free. Counted on a shape-only trace (``jax.eval_shape``): no arithmetic is done,
so a 1080p count takes well under a second.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from prfdn_jax.blocks import count_macs
from prfdn_jax.networks import with_impl

# The benchmark's input size per scale (NTIRE 2023 RTSR: x2 1920x1080, x3 1280x720 -> 4K out).
BENCH_INPUT = {2: (1080, 1920), 3: (720, 1280), 4: (540, 960)}


def params(model: nnx.Module) -> int:
    return sum(int(v.size) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def macs(model: nnx.Module, height: int = 1080, width: int = 1920) -> dict[str, int]:
    """``{'conv', 'act', 'total'}`` MACs of one forward pass on a ``height x width`` input."""
    x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
    view = with_impl(model, "grouped")  # any wide path counts the same; not vmap (it hides the branches)
    with count_macs() as counts:
        jax.eval_shape(view, x)
    return {**counts, "total": counts["conv"] + counts["act"]}


def summary(model: nnx.Module, height: int = 1080, width: int = 1920) -> dict:
    m = macs(model, height, width)
    return {"params": params(model), "gmac_conv": m["conv"] / 1e9, "gmac": m["total"] / 1e9}
