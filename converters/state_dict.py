"""The torch side of state dicts: numpy <-> tensors, and the layout each PyTorch reference module takes.

Every conversion of the weights themselves is torch-free, in :mod:`prfdn_jax.state_dict` (reading
``.pth`` files included); this module only moves the arrays into and out of ``torch.Tensor`` and
picks the layout for a network's architecture:

* :func:`torch_state_dict`: what :func:`converters.pruning.to_torch` loads, the released key names
  for a merged net (:class:`~converters.torch_modules.MergedNet`), else the grouped-conv
  :class:`~converters.torch_modules.WideNet` layout (RFDN is its one-branch case);
* :func:`export_state_dict`: what ``prfdn export --format torch`` writes, the released key names for
  merged, branch and RFDN nets (a built-in model exports to exactly the released checkpoint), the
  WideNet layout for a wide net.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from converters.torch_modules import MERGED_LAYOUTS
from prfdn_jax.spec import Arch, StateDictError
from prfdn_jax.state_dict import state_dict_from_flat_params, wide_state_dict

__all__ = ["arrays", "export_state_dict", "tensors", "torch_state_dict"]


def tensors(sd: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A numpy state dict as float32 tensors (copies)."""
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in sd.items()}


def arrays(sd: Mapping[str, object]) -> dict[str, np.ndarray]:
    """A state dict of tensors (e.g. ``module.state_dict()``) as numpy arrays."""
    return {k: v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for k, v in sd.items()}


def torch_state_dict(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, torch.Tensor]:
    """Tensors for the torch module of ``arch`` that :func:`converters.pruning.to_torch` builds."""
    if arch.form == "merged":
        return tensors(state_dict_from_flat_params(flat, arch))
    return tensors(wide_state_dict(flat, arch))


def export_state_dict(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, torch.Tensor]:
    """Tensors of the exported ``.pth`` (see the module doc); :class:`StateDictError` for a merged layout
    that has no PyTorch reference."""
    if arch.form == "wide":
        return tensors(wide_state_dict(flat, arch))
    if arch.form == "merged" and arch.layout not in MERGED_LAYOUTS:
        raise StateDictError(f"a merged {arch.layout!r} network has no PyTorch reference layout "
                             f"(merged {', '.join(MERGED_LAYOUTS)} only); export its branch form")
    return tensors(state_dict_from_flat_params(flat, arch))
