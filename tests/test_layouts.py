"""Layouts are data: a layout added in one place (``spec.register_layout``) is built, converted to
PyTorch and back, re-parametrized and detected from its state dict, with no other code knowing it."""

import numpy as np
import pytest
import torch

from helpers import random_image
from converters.state_dict import export_state_dict
from converters.torch_modules import BranchNet as TorchBranchNet
from converters.torch_modules import MergedNet as TorchMergedNet
from converters.torch_modules import WideNet as TorchWideNet
from converters.torch_modules import build_from_state_dict
from helpers_torch import jax_forward, max_rel, torch_forward
from prfdn_jax import spec
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.state_dict import arch_and_flat_from_state_dict, state_dict_from_flat_params
from prfdn_jax.networks import build
from prfdn_jax.reparam import reparam, wide_to_merged

B3 = spec.Layout(branches=3, srfdb=2, depth=1)  # b4s less one SRFDB branch: the old detection said b4s


@pytest.fixture
def b3():
    spec.register_layout("b3", B3)
    yield "b3"
    spec.unregister_layout("b3")


def _numpy(sd) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in sd.items()}


def _round_trip(model, torch_type):
    """The model's PyTorch export: its reference module (of ``torch_type``) agrees, and reading the
    export back gives the same architecture and bit-identical parameters."""
    sd = export_state_dict(flat_params(model), model.arch)
    ref = build_from_state_dict(sd)
    assert isinstance(ref, torch_type)
    x = random_image(17, 16, seed=3)
    assert max_rel(torch_forward(ref, x), jax_forward(model, x)) < 1e-5
    arch, flat = arch_and_flat_from_state_dict(_numpy(ref.state_dict()), model.arch.form)
    assert arch == model.arch
    mine = flat_params(model)
    assert set(flat) == set(mine) and all(np.array_equal(flat[k], mine[k]) for k in mine)


def test_added_layout_is_built_converted_reparametrized_and_detected(b3):
    branch = build(spec.default_arch(b3, nf=8, scale=2))
    assert (branch.arch.branches, branch.arch.n_srfdb, branch.arch.depth) == (3, 2, 1)
    x = random_image(17, 16)
    ref = jax_forward(branch, x, "sequential")
    for impl in ("vmap", "grouped", "loop", "dense"):
        assert max_rel(jax_forward(branch, x, impl), ref) < 1e-5, impl

    # released key names: detected as b3 (not b4s), the PyTorch reference agrees, and back exactly
    sd = state_dict_from_flat_params(flat_params(branch), branch.arch)
    assert spec.arch_from_state_dict(sd) == branch.arch
    _round_trip(branch, TorchBranchNet)

    wide = reparam(branch)  # exact: the branch stacks are the wide convs
    assert wide.arch.form == "wide" and max_rel(jax_forward(wide, x), ref) < 1e-5
    _round_trip(wide, TorchWideNet)

    merged = wide_to_merged(wide)
    assert merged.arch.layout == "b3" and max_rel(jax_forward(merged, x), ref) < 1e-5
    msd = state_dict_from_flat_params(flat_params(merged), merged.arch)
    assert {"fea_conv123.weight", "B2S12.c1_d.weight", "B123.c5.weight"} <= set(msd)
    assert spec.arch_from_state_dict(msd) == merged.arch
    _round_trip(merged, TorchMergedNet)


def test_detection_reads_the_layout_table(b3):
    arch = spec.default_arch(b3, nf=4, scale=2)
    sd = state_dict_from_flat_params(flat_params(build(arch)), arch)
    spec.unregister_layout("b3")
    with pytest.raises(spec.StateDictError, match="unrecognised layout.*fea_conv2"):
        spec.arch_from_state_dict(sd)  # no known layout has three first convs
    spec.register_layout("b3", B3)
    assert spec.arch_from_state_dict(sd).layout == "b3"


def test_register_layout_checks():
    with pytest.raises(ValueError, match="same as 'b4s'"):
        spec.register_layout("b4s_again", spec.LAYOUTS["b4s"])
    with pytest.raises(ValueError, match="already"):
        spec.register_layout("b2", B3)
    with pytest.raises(ValueError, match="bad layout"):
        spec.register_layout("bad", spec.Layout(2, 3, 1))
    with pytest.raises(ValueError, match="built in"):
        spec.unregister_layout("b4s")
    assert "b4s_again" not in spec.LAYOUTS and "bad" not in spec.LAYOUTS


def test_the_cli_offers_every_layout(b3):
    from prfdn_jax.cli import build_parser

    args = build_parser().parse_args(["bench", "paths", "--layout", "b3"])
    assert args.layout == "b3"


def test_torch_branch_kinds_follow_the_table(b3):
    net = TorchBranchNet(b3, nf=4, scale=2)
    assert [type(getattr(net, p)).__name__ for p in ("B2S1", "B2S2")] == ["SRFDB", "SRFDB"]
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 16, 16)).shape == (1, 3, 32, 32)
