"""Run prfdn-jax networks through the PyTorch reference (for equivalence tests)."""

import numpy as np
import torch

from converters.torch_modules import build_from_state_dict
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.inference import make_apply
from prfdn_jax.state_dict import state_dict_from_flat_params


def torch_module(model):
    sd = state_dict_from_flat_params(flat_params(model), model.arch)
    return build_from_state_dict({k: torch.from_numpy(np.array(v)) for k, v in sd.items()})


def torch_forward(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1)


def jax_forward(model, x: np.ndarray, impl=None) -> np.ndarray:
    return np.asarray(make_apply(model, impl)(x))


def max_rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())
