"""PyTorch state dicts (the released key names) <-> prfdn-jax parameters, both ways, exactly.

The key table, detection and checks are the spec's (:mod:`prfdn_jax.spec.keys`: :func:`conv_table`,
:func:`arch_from_state_dict`, :func:`check_state_dict`, :class:`StateDictError`), re-exported here.
This module only converts the tensors: PyTorch OIHW <-> Flax HWIO (``transpose(2, 3, 1, 0)``), biases
unchanged, stacked layers gain a leading branch axis. Pure transposes and stacking: a round trip is
bit-exact. The state dict is plain tensors (``numpy`` arrays or ``torch.Tensor`` both work); torch is
imported only to read a ``.pth`` file (:func:`read_pth`, :func:`read_pth_with_notes`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

from prfdn_jax.spec import (Arch, StateDictError, arch_from_state_dict, check_state_dict, conv_table,
                            expected_shapes, is_stacked)

__all__ = ["StateDictError", "arch_from_state_dict", "check_state_dict", "conv_table", "expected_shapes",
           "flat_params_from_state_dict", "read_pth", "read_pth_with_notes", "state_dict_from_flat_params", "to_numpy"]


def read_pth_with_notes(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], list[str]]:
    """A ``.pth`` state dict as float32 numpy arrays, and notes on what was converted.

    ``weights_only=True``: never executes pickled code. Unwraps ``{'params_ema' | 'params' |
    'state_dict' | 'model': sd}`` (BasicSR saves both ``params`` and ``params_ema``: the EMA weights
    are used and a note says so), strips DataParallel's ``module.`` prefix and converts float16 /
    bfloat16 / float64 tensors to float32 (:func:`prfdn_jax.foreign.unwrap_state_dict`; one note each).
    Raises :class:`StateDictError` (one line, naming the file) if the file is not a state dict.
    """
    import torch

    from prfdn_jax.foreign import as_float32, unwrap_state_dict

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - weights_only unpickling fails in many ways; all mean "not loadable"
        raise StateDictError(f"{path}: not a loadable PyTorch state dict ({_why(e)})") from None
    sd, notes = unwrap_state_dict(obj, f"{path}: ")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise StateDictError(f"{path}: not a PyTorch state dict (expected a dict of tensors)")
    dtypes = {k: v.dtype for k, v in sd.items()}
    sd = {k: v.detach().float().numpy() for k, v in sd.items()}  # bfloat16 has no numpy dtype: via float32
    converted: dict[str, int] = {}
    for dt in dtypes.values():
        if dt != torch.float32:
            name = str(dt).removeprefix("torch.")
            converted[name] = converted.get(name, 0) + 1
    notes += [f"converted {n} {dt} tensor{'s' if n > 1 else ''} to float32" for dt, n in sorted(converted.items())]
    sd, _ = as_float32(sd)
    return sd, notes


def _why(e: BaseException) -> str:
    """A one-line reason why ``torch.load(weights_only=True)`` refused a file."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()
    if "Weights only load failed" in text or "Unsupported global" in text:
        return ("it holds pickled objects other than tensors, which prfdn never runs; re-save it as a plain "
                "state dict: torch.save(model.state_dict(), path)")
    if isinstance(e, EOFError):
        return "truncated or empty file"
    first = text.splitlines()[0] if text else ""
    if not first or first.strip("'\"").isdigit():
        return "corrupt or truncated file"
    return first


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A ``.pth`` state dict as float32 numpy arrays (:func:`read_pth_with_notes` without the notes)."""
    return read_pth_with_notes(path)[0]


def to_numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def flat_params_from_state_dict(sd: Mapping[str, object], arch: Arch) -> dict[str, np.ndarray]:
    """Torch state dict -> flat prfdn-jax parameters ``{'stages.0.c1_d.kernel': HWIO array, ...}``."""
    check_state_dict(sd, arch)
    flat = {}
    for name, prefixes in conv_table(arch):
        ks = [to_numpy(sd[p + ".weight"]).transpose(2, 3, 1, 0) for p in prefixes]
        bs = [to_numpy(sd[p + ".bias"]) for p in prefixes]
        stack = is_stacked(arch, name)
        flat[name + ".kernel"] = np.stack(ks) if stack else ks[0]
        flat[name + ".bias"] = np.stack(bs) if stack else bs[0]
    return flat


def state_dict_from_flat_params(flat: Mapping[str, np.ndarray], arch: Arch) -> dict[str, np.ndarray]:
    """Flat prfdn-jax parameters -> state dict of numpy arrays with the released key names (OIHW)."""
    sd = {}
    for name, prefixes in conv_table(arch):
        k, b = np.asarray(flat[name + ".kernel"]), np.asarray(flat[name + ".bias"])
        if not is_stacked(arch, name):
            k, b = k[None], b[None]
        for i, p in enumerate(prefixes):
            sd[p + ".weight"] = np.ascontiguousarray(k[i].transpose(3, 2, 0, 1))
            sd[p + ".bias"] = b[i]
    return sd
