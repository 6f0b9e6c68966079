"""Function-preserving widening: give a pruned network back width where it is cheap.

Uniform pruning takes the same share of every layer, but the layers do not cost the same. In a pruned x4
network of 25-channel branches, one trunk channel more costs about 8 % more MACs, while

* ESA's inner convs (``esa=F``: ``conv1`` ... ``conv3_`` and ``conv_f`` get ``F`` outputs, ``conv4`` reads
  ``F``) run mostly after a stride-2 conv and a 7x7/3 max-pool: ``F = 6 -> 12`` costs 2.7 %;
* the distilled convs (``distilled=D``: ``c1_d`` ... ``c{n}_d`` and ``c4`` get ``D`` outputs, ``c5`` reads
  the wider concat) are 1x1 convs but for ``c4``: ``D = 12 -> 14`` costs 3.1 %.

:func:`widen` is the exact step from the pruned network to the wider one. The old weights keep their
places; the new ones start from the network's own initialiser (``seed``); every weight from a new channel
into an old one is zero, and so are the rows of ``conv4`` and ``c5`` that read new channels. So the wider
network computes exactly what the pruned one did (tested) until it is finetuned.

Works on branch and wide forms (a kernel's channel axes are its last two, a bias's its last, stacked over
branches or not), and for ``esa`` on the merged form too (its ``cat_p`` permutes the distilled concat).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from flax import nnx

from prfdn_jax.checkpoint import flat_params
from prfdn_jax.networks import build
from prfdn_jax.spec import ESA_CONVS, Arch
from prfdn_jax.spec.topology import block_steps, distilled_names


class WidenError(ValueError):
    pass


def esa_prefixes(arch: Arch) -> list[str]:
    """``['stages.0.esa.', ...]``: every block's ESA, in key order."""
    return sorted({k[: -len("conv1")] for k in arch.w if k.endswith("esa.conv1")})


def block_prefixes(arch: Arch) -> list[str]:
    """``['srfdb.', 'stages.0.', ...]``: every RFDB/SRFDB."""
    return [p[: -len("esa.")] for p in esa_prefixes(arch)]


def _set(w: dict, name: str, new: tuple[int, int], what: str) -> None:
    cin, cout = w[name]
    if new[0] < cin or new[1] < cout:
        raise WidenError(f"{name} is {cin}->{cout} wide; {what} would narrow it")
    w[name] = new


def widened_arch(arch: Arch, esa: int | None = None, distilled: int | None = None) -> Arch:
    """``arch`` with every ESA ``esa`` and every distilled conv ``distilled`` channels wide (never narrower)."""
    w = dict(arch.w)
    if not esa_prefixes(arch):
        raise WidenError("the network has no RFDB to widen")
    for p in block_prefixes(arch):
        if esa:
            for c in ESA_CONVS:
                cin, cout = w[f"{p}esa.{c}"]
                _set(w, f"{p}esa.{c}", (cin if c == "conv1" else esa, cout if c == "conv4" else esa), f"esa={esa}")
        if distilled:
            if p + "cat_p" in w:
                raise WidenError("distilled widths of a merged network (its cat_p permutes them): widen the wide "
                                 "network, then merge")
            names = distilled_names(block_steps(w, p))
            for c in names:
                _set(w, p + c, (w[p + c][0], distilled), f"distilled={distilled}")
            _set(w, p + "c5", (distilled * len(names), w[p + "c5"][1]), f"distilled={distilled}")
    return Arch.make(arch.form, arch.layout, arch.scale, w)


def _reading_rows(old: Arch, new: Arch) -> dict[str, list[tuple[int, int, int]]]:
    """Convs whose input grows inside: ``{conv: [(old start, new start, length) of the old channels]}``;
    every other input row of theirs reads a new channel and starts at zero."""
    rows = {}
    for p in block_prefixes(old):
        rows[f"{p}esa.conv4"] = [(0, 0, old.w[f"{p}esa.conv4"][0])]
        names = distilled_names(block_steps(old.w, p))
        if p + "cat_p" not in old.w:
            o_off = n_off = 0
            rows[p + "c5"] = []
            for c in names:
                rows[p + "c5"].append((o_off, n_off, old.w[p + c][1]))
                o_off, n_off = o_off + old.w[p + c][1], n_off + new.w[p + c][1]
    return rows


def widen(arch: Arch, flat: Mapping[str, np.ndarray], *, esa: int | None = None, distilled: int | None = None,
          seed: int = 0) -> tuple[Arch, dict[str, np.ndarray]]:
    """``(arch, flat)`` -> the same function, wider (see the module docstring)."""
    new_arch = widened_arch(arch, esa, distilled)
    fresh = flat_params(build(new_arch, nnx.Rngs(seed)))
    rows = _reading_rows(arch, new_arch)
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
        elif conv in rows:  # reads new channels: only the old rows, moved to their new places
            co = old.shape[-1]
            w[..., :co] = 0.0
            for o, n, length in rows[conv]:
                w[..., n:n + length, :co] = old[..., o:o + length, :]
        else:
            ci, co = old.shape[-2:]
            w[..., :ci, :co] = old
            w[..., ci:, :co] = 0.0  # a new channel never reaches an old one
        out[k] = w
    return new_arch, out


__all__ = ["WidenError", "block_prefixes", "esa_prefixes", "widen", "widened_arch"]
