"""prfdn-jax network -> a plain PyTorch state dict, and the PyTorch reference that runs it.

What ``prfdn export --format torch`` writes (:func:`export_state_dict`), chosen so that
``torch.load(path, weights_only=True)`` and :func:`converters.torch_modules.build_from_state_dict` load it:

* merged, branch and RFDN networks: the released key names (``fea_conv1234``, ``B1234.c1_d``, ...;
  :func:`converters.state_dict.state_dict_from_flat_params`), so a built-in model exports to exactly
  the released checkpoint's tensors;
* wide networks: the grouped-conv :class:`~converters.torch_modules.WideNet` layout
  (:func:`converters.pruning.torch_state_dict`: ``fea.<b>``, ``srfdb.*``, ``stages.<d>.*``).

Also the PyTorch side of ``prfdn verify``: :func:`reference_module`, :func:`load_reference`,
:func:`torch_forward`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch import nn

from converters.pruning import torch_state_dict
from converters.state_dict import state_dict_from_flat_params
from converters.torch_modules import MERGED_LAYOUTS, build_from_state_dict
from prfdn_jax.checkpoint import flat_params

__all__ = ["TorchExportError", "export_state_dict", "load_reference", "reference_module", "save_state_dict",
           "torch_forward"]


class TorchExportError(ValueError):
    """The network has no PyTorch reference layout, or a file is not a loadable export (one line)."""


def export_state_dict(model) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` as the reference modules name it (see the module doc), float32 tensors."""
    arch = model.arch
    if arch.form == "wide":
        return torch_state_dict(model)
    if arch.form == "merged" and arch.layout not in MERGED_LAYOUTS:
        raise TorchExportError(f"a merged {arch.layout!r} network has no PyTorch reference layout "
                               f"(merged {', '.join(MERGED_LAYOUTS)} only); export its branch form")
    sd = state_dict_from_flat_params(flat_params(model), arch)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}


def save_state_dict(model, path: str | os.PathLike) -> None:
    """``torch.save`` :func:`export_state_dict` of ``model`` to ``path`` (not atomic: the caller's job)."""
    torch.save(export_state_dict(model), str(path))


def reference_module(model) -> nn.Module:
    """The PyTorch reference module (eval mode) holding ``model``'s exported state dict."""
    return build_from_state_dict(export_state_dict(model))


def load_reference(path: str | os.PathLike) -> nn.Module:
    """The reference module of an exported ``.pth`` (``weights_only=True``); one-line TorchExportError."""
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only unpickling fails in many ways
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TorchExportError(f"{path}: not a loadable PyTorch state dict ({msg})") from None
    try:
        return build_from_state_dict(sd)
    except ValueError as e:
        raise TorchExportError(f"{path}: {str(e).splitlines()[0]}") from None


def torch_forward(module: nn.Module, x: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float32 through ``module`` (NCHW inside)."""
    with torch.no_grad():
        y = module(torch.from_numpy(np.ascontiguousarray(x, np.float32)).permute(0, 3, 1, 2))
    return y.permute(0, 2, 3, 1).numpy()
