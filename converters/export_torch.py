"""A network's flat parameters -> a plain PyTorch state dict file, and the PyTorch reference that runs it.

Everything here takes ``(flat parameters, Arch)`` (the nnx glue is :mod:`prfdn_jax.export` and
:mod:`prfdn_jax.verify`). What ``prfdn export --format torch`` writes (:func:`save_state_dict`; the
layout: :func:`converters.state_dict.export_state_dict`) is loadable by ``torch.load(path,
weights_only=True)`` and :func:`converters.torch_modules.build_from_state_dict`.

Also the PyTorch side of ``prfdn verify``: :func:`reference_module`, :func:`load_reference`,
:func:`torch_forward`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from converters.state_dict import export_state_dict, tensors
from converters.torch_modules import build_from_state_dict
from prfdn_jax.spec import Arch, StateDictError
from prfdn_jax.state_dict import read_pth

__all__ = ["TorchExportError", "load_reference", "reference_module", "save_state_dict", "torch_forward"]


class TorchExportError(ValueError):
    """The network has no PyTorch reference layout, or a file is not a loadable export (one line)."""


def _export_state_dict(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, torch.Tensor]:
    try:
        return export_state_dict(flat, arch)
    except StateDictError as e:
        raise TorchExportError(str(e)) from None


def save_state_dict(flat: Mapping[str, np.ndarray], arch: Arch, path: str | os.PathLike) -> None:
    """``torch.save`` the exported state dict of ``(flat, arch)`` to ``path`` (not atomic: the caller's job)."""
    torch.save(_export_state_dict(flat, arch), str(path))


def reference_module(flat: Mapping[str, np.ndarray], arch: Arch) -> nn.Module:
    """The PyTorch reference module (eval mode) holding the exported state dict of ``(flat, arch)``."""
    return build_from_state_dict(_export_state_dict(flat, arch))


def load_reference(path: str | os.PathLike) -> nn.Module:
    """The reference module of an exported ``.pth`` (``weights_only=True``); one-line TorchExportError."""
    try:
        sd = read_pth(path)
    except StateDictError as e:  # one line, naming the file
        raise TorchExportError(str(e)) from None
    try:
        return build_from_state_dict(tensors(sd))
    except ValueError as e:
        raise TorchExportError(f"{path}: {str(e).splitlines()[0]}") from None


def torch_forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float32 through ``module`` (NCHW inside)."""
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy()
