"""Branch-major channel orders and block-diagonal helpers (NumPy), shared by reparam and the pruning bridge.

Two channel orders meet in PRFDN. Inside prfdn-jax's wide form tensors are *branch-major*: branch b's
channels are contiguous (``[x_0, x_1, ...]`` per branch). A plain ``torch.cat`` of per-branch-wide
tensors is *tensor-major*: ``[t0 (all branches), t1 (all branches), ...]``. These functions give the
index maps between them and the block-diagonal kernels that a stack of per-branch kernels becomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prfdn_jax.spec.topology import block_steps, distilled_names


def groupcat_perm(widths: Sequence[int], n: int) -> list[int]:
    """Tensor-major source index of each branch-major channel.

    The tensors have ``n*w_t`` channels each (``widths = [w_t]`` per branch); the result lists, for
    branch 0's ``[t0, t1, ...]`` then branch 1's and so on, where that channel sits in the plain concat.
    """
    offsets = np.cumsum([0] + [n * w for w in widths])
    order: list[int] = []
    for b in range(n):
        for t, w in enumerate(widths):
            order.extend(range(int(offsets[t]) + b * w, int(offsets[t]) + (b + 1) * w))
    return order


def branch_columns(widths: Sequence[int], n: int, branch: int) -> list[int]:
    """The tensor-major columns of ``branch`` (its own ``[t0, t1, ...]`` order): a slice of :func:`groupcat_perm`."""
    per = sum(widths)
    return groupcat_perm(widths, n)[branch * per:(branch + 1) * per]


def c5_columns(widths: Mapping[str, tuple[int, int]], prefix: str, n: int, branch: int) -> list[int]:
    """Columns of a block's dense ``c5`` (reading the tensor-major concat of its distilled outputs)
    that belong to ``branch``; ``widths`` per branch, block convs under ``prefix`` (e.g. ``stages.0.``)."""
    steps = block_steps(widths, prefix)
    return branch_columns([widths[prefix + c][1] for c in distilled_names(steps)], n, branch)


def block_diag(k: np.ndarray) -> np.ndarray:
    """Stacked kernel ``(N, kh, kw, ci, co)`` -> block-diagonal ``(kh, kw, N*ci, N*co)``."""
    n, kh, kw, ci, co = k.shape
    out = np.zeros((kh, kw, n * ci, n * co), k.dtype)
    for i in range(n):
        out[:, :, i * ci:(i + 1) * ci, i * co:(i + 1) * co] = k[i]
    return out


def selector(cin: int, rows: Sequence[int]) -> np.ndarray:
    """1x1 HWIO kernel ``(1, 1, cin, len(rows))`` whose output j is input channel ``rows[j]``."""
    k = np.zeros((1, 1, cin, len(rows)), np.float32)
    k[0, 0, list(rows), np.arange(len(rows))] = 1.0
    return k
