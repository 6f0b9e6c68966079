"""Function-preserving widening of ESA: give a pruned network back width where it is cheap.

Uniform pruning takes the same share of every layer, but the layers do not cost the same: ESA's inner
convs run on ``f`` channels, most of them after a stride-2 conv and a 7x7/3 max-pool, so in a pruned x4
network of 25-channel branches ``f = 6 -> 12`` costs 1.5 GMAC at 540x960 (2.7 %) where one channel more
on the trunk would cost 8 %. :func:`widen_esa` is the exact step from a pruned network to the wider one:

* every ESA inner conv (``conv1`` ... ``conv3_``, ``conv_f``) gets ``f`` outputs, ``conv4`` reads ``f``;
* the old weights keep their place, the new ones start from the network's own initialiser (``seed``);
* the weights from a new channel into an old one are zero, and so are ``conv4``'s rows for the new
  channels, so the widened network computes exactly what the narrow one did (tested) until finetuned.

Works on every form (the channel axes are a kernel's last two and a bias's last, branch-stacked or not).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from prfdn_jax.checkpoint import flat_params
from prfdn_jax.networks import build
from prfdn_jax.spec import ESA_CONVS, Arch

# ESA convs whose output is an inner channel (widened to f); conv4 maps the inner channels back.
_INNER_OUT = tuple(c for c in ESA_CONVS if c != "conv4")


class WidenError(ValueError):
    pass


def esa_prefixes(arch: Arch) -> list[str]:
    """``['stages.0.esa.', ...]``: every block's ESA, in key order."""
    return sorted({k[: -len("conv1")] for k in arch.w if k.endswith("esa.conv1")})


def widened_arch(arch: Arch, f: int) -> Arch:
    """``arch`` with every ESA's inner width ``f`` (refuses to narrow: that is pruning's job)."""
    w = dict(arch.w)
    prefixes = esa_prefixes(arch)
    if not prefixes:
        raise WidenError("the network has no ESA to widen")
    for p in prefixes:
        for c in ESA_CONVS:
            cin, cout = w[p + c]
            new = (cin if c == "conv1" else f, cout if c == "conv4" else f)
            if new[0] < cin or new[1] < cout:
                raise WidenError(f"{p}{c} is {cin}->{cout} wide; f={f} would narrow it")
            w[p + c] = new
    return Arch.make(arch.form, arch.layout, arch.scale, w)


def widen_esa(arch: Arch, flat: Mapping[str, np.ndarray], f: int, seed: int = 0
              ) -> tuple[Arch, dict[str, np.ndarray]]:
    """``(arch, flat)`` -> the same function with ESA ``f`` channels wide; see the module docstring."""
    new_arch = widened_arch(arch, f)
    fresh = flat_params(build(new_arch, nnx.Rngs(seed)))
    out = {}
    for k, new in fresh.items():
        old = np.asarray(flat[k])
        conv, leaf = k.rsplit(".", 1)
        if old.shape == new.shape:
            out[k] = old
            continue
        w = np.array(new, dtype=old.dtype)
        if leaf == "bias":
            w[..., : old.shape[-1]] = old
        else:
            ci, co = old.shape[-2:]
            w[..., :ci, :co] = old
            if not conv.endswith("esa.conv1"):
                w[..., ci:, :co] = 0.0  # a new channel never reaches an old one
        out[k] = w
    for p in esa_prefixes(arch):  # conv4 reads the new channels with zero weights: ESA's mask is unchanged
        k = p + "conv4.kernel"
        out[k][..., arch.w[p + "conv4"][0]:, :] = 0.0
    return new_arch, out


__all__ = ["WidenError", "esa_prefixes", "widen_esa", "widened_arch"]
