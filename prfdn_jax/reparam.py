"""Pure transformations between network forms: RFDN -> branch -> wide -> merged.

Each returns a new network and leaves its argument untouched; each is tested for numeric equivalence
(``tests/test_reparam.py``).

* :func:`branch_from_rfdn`: the PRFDN recipe's starting point, a branch network whose blocks are the
  trained RFDN's blocks.
* :func:`reparam`: branch -> wide. The branch stacks *are* the wide block's parameters (a stack of N
  kernels is exactly one grouped conv), so this is exact by construction: off-diagonal blocks are
  zero, unlike the original release, which left them random and relied on finetuning.
* :func:`wide_to_merged`: wide -> the team's dense layout, with block-diagonal dense convs and the
  concat/split convs as exact permutation/selection matrices (what Torch-Pruning needs to see).
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from prfdn_jax.checkpoint import flat_params, model_from_flat
from prfdn_jax.networks import BranchNet, WideNet
from prfdn_jax.spec import (LAYOUTS, Arch, block_diag, default_arch, distilled_names, groupcat_perm, merged_widths,
                            selector)


def branch_from_rfdn(rfdn: BranchNet, layout: str) -> BranchNet:
    """A branch network (layout ``b4s``, ``b2s`` or ``b2``) initialised from a trained RFDN of 4 blocks.

    Copied as the PRFDN recipe does: RFDN block ``B{i}`` goes to the branch block with the same name
    (branch b, stage d is ``B{b*D+d+1}``), and ``c``, ``LR_conv``, ``upsampler`` are RFDN's (the
    fusion concat order ``[B1..B4]`` is unchanged). What RFDN lacks:

    * every branch's first conv is a copy of RFDN's ``fea_conv``;
    * every SRFDB is initialised from ``B1``, the RFDN block that reads ``fea_conv``'s output, as the
      SRFDB does: its ``c1_d``, ``c1_r``, ``c4`` and ESA are copied, and its ``c5`` takes ``B1.c5``'s
      input columns for ``d1`` and ``r4``. (Measured on Set5 bird, x4, before any training: b4s 31.06 dB,
      b2s 30.62 dB Y-PSNR, bicubic 30.18, RFDN 34.89; initialising from ``B{k}`` instead gave ~20 dB.)
    * ``b2`` has no SRFDB: its second branch feeds ``fea_conv`` straight into ``B3``, so it starts far
      from RFDN (16.4 dB on bird) and needs training to recover.
    """
    ra = rfdn.arch
    if ra.layout != "rfdn" or ra.form == "merged":
        raise ValueError("branch_from_rfdn needs an RFDN")
    n, s, _ = LAYOUTS[layout]
    if layout == "rfdn" or ra.depth != 4:
        raise ValueError(f"branch_from_rfdn maps a 4-block RFDN onto b4s/b2s/b2, not {layout!r}/{ra.depth} blocks")
    arch = default_arch(layout, nf=ra.nf, scale=ra.scale)
    src = flat_params(rfdn)  # stages.{i}.*: (1, ...) stacked
    d_ = arch.depth
    dst: dict[str, np.ndarray] = {}
    for key in ("kernel", "bias"):
        dst[f"fea.{key}"] = np.concatenate([src[f"fea.{key}"]] * n, axis=0)
        for k in ("c", "LR_conv", "upsampler"):
            dst[f"{k}.{key}"] = src[f"{k}.{key}"]
    block_keys = {k.split(".", 2)[2] for k in src if k.startswith("stages.0.")}
    for d in range(d_):
        for bk in block_keys:
            dst[f"stages.{d}.{bk}"] = np.concatenate([src[f"stages.{b * d_ + d}.{bk}"] for b in range(n)], 0)
    if s:
        dc = ra.nf // 2
        for bk in (k for k in arch.w if k.startswith("srfdb.")):
            sub = bk[len("srfdb."):]
            for key in ("kernel", "bias"):
                parts = []
                for _ in range(n - s, n):
                    w = src[f"stages.0.{sub}.{key}"][0]
                    if sub == "c5" and key == "kernel":  # keep the d1 and r4 input columns
                        w = np.concatenate([w[:, :, :dc], w[:, :, 3 * dc:]], axis=2)
                    parts.append(w)
                dst[f"{bk}.{key}"] = np.stack(parts)
    return model_from_flat(arch, dst)


def reparam(branch: BranchNet) -> WideNet:
    """Branch -> wide: the same parameters, applied as one wide block of grouped convs (exact)."""
    if branch.arch.form == "merged":
        raise ValueError("reparam needs a branch network")
    return model_from_flat(branch.arch.replace(form="wide"), flat_params(branch))


def wide_to_merged(wide: BranchNet) -> nnx.Module:
    """Wide (or branch) -> the dense merged layout with exact selector / permutation 1x1 convs."""
    a = wide.arch
    if a.form == "merged":
        raise ValueError("already merged")
    n, s, d_, nf = a.branches, a.n_srfdb, a.depth, a.nf
    src = flat_params(wide)
    dst: dict[str, np.ndarray] = {}
    widths: dict[str, tuple[int, int]] = {}

    def put(name, kernel, bias):
        dst[name + ".kernel"], dst[name + ".bias"] = kernel.astype(np.float32), bias.astype(np.float32)
        widths[name] = (kernel.shape[2], kernel.shape[3])

    put("fea", block_diag(src["fea.kernel"]), src["fea.bias"].reshape(-1))
    if s:
        put("split_left", selector(n * nf, range((n - s) * nf)), np.zeros((n - s) * nf))
        put("split_right", selector(n * nf, range((n - s) * nf, n * nf)), np.zeros(s * nf))
    blocks = [("srfdb", s)] if s else []
    blocks += [(f"stages.{d}", n) for d in range(d_)]
    for part, nb in blocks:
        names = [k[len(part) + 1:-len(".kernel")] for k in src if k.startswith(part + ".") and k.endswith(".kernel")]
        for sub in names:
            put(f"{part}.{sub}", block_diag(src[f"{part}.{sub}.kernel"]), src[f"{part}.{sub}.bias"].reshape(-1))
        if nb > 1:  # tensor-major concat [d1.., d2.., r4..] -> per-branch [d1_i, d2_i, .., r4_i]
            parts = distilled_names(sum(1 for k in names if k.endswith("_r")))
            ws = [src[f"{part}.{p}.kernel"].shape[-1] for p in parts]
            cin = nb * sum(ws)
            put(f"{part}.cat_p", selector(cin, groupcat_perm(ws, nb)), np.zeros(cin))
    if d_ > 1 and n > 1:  # plain concat of stage outputs -> branch-major [b0s0, b0s1, b1s0, ...]
        ws = [src[f"stages.{d}.c5.kernel"].shape[-1] for d in range(d_)]
        cin = n * sum(ws)
        put("cat_p", selector(cin, groupcat_perm(ws, n)), np.zeros(cin))
    for k in ("c", "LR_conv"):
        put(k, src[f"{k}.kernel"], src[f"{k}.bias"])
    put("split", selector(n * nf, range(nf)), np.zeros(nf))
    put("upsampler", src["upsampler.kernel"], src["upsampler.bias"])
    if widths != merged_widths(a):
        raise RuntimeError("wide_to_merged disagrees with spec.merged_widths")
    return model_from_flat(Arch.make("merged", a.layout, a.scale, widths), dst)
