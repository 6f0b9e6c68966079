"""branch -> wide -> merged are exact; branch_from_rfdn gives a working network."""

import numpy as np
import pytest

from helpers import random_branch_arch, random_image, shared_path
from helpers_torch import jax_forward, max_rel, torch_forward, torch_module
from prfdn_jax.checkpoint import load_torch
from prfdn_jax.networks import WideNet, build
from prfdn_jax.reparam import branch_from_rfdn, reparam, wide_to_merged
from prfdn_jax.spec import LAYOUTS, branch_layouts, default_arch

SRFDB_LAYOUTS = tuple(k for k in branch_layouts() if LAYOUTS[k].srfdb)  # b4s, b2s


@pytest.mark.parametrize("layout", branch_layouts())
def test_reparam_is_exact(layout):
    branch = build(default_arch(layout, nf=10, scale=2))
    wide = reparam(branch)
    assert isinstance(wide, WideNet) and wide.arch.form == "wide"
    x = random_image(18, 17)
    ref = jax_forward(branch, x, "sequential")
    for impl in ("grouped", "loop", "dense"):
        assert max_rel(jax_forward(wide, x, impl), ref) < 1e-5


@pytest.mark.parametrize("layout", SRFDB_LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_wide_to_merged_is_exact(layout, seed):
    wide = reparam(build(random_branch_arch(seed, layout, 3)))
    merged = wide_to_merged(wide)
    assert merged.arch.form == "merged"
    x = random_image(16, 19, seed=seed)
    ref = jax_forward(wide, x)
    assert max_rel(jax_forward(merged, x), ref) < 1e-5
    # the PyTorch reference of the merged layout (concat/split as 1x1 convs) agrees too
    assert max_rel(torch_forward(torch_module(merged), x), ref) < 1e-5


def test_merged_selectors_are_exact_matrices():
    merged = wide_to_merged(reparam(build(default_arch("b2s", nf=8, scale=2))))
    for name in ("split_left", "split_right", "split", "cat_p", "stages.0.cat_p"):
        conv = merged
        for part in name.split("."):
            conv = conv[int(part)] if part.isdigit() else getattr(conv, part)
        k = np.asarray(conv.kernel[...])[0, 0]
        assert set(np.unique(k)) <= {0.0, 1.0} and (k.sum(0) == 1).all(), name
        assert not np.asarray(conv.bias[...]).any()


def test_released_b4s_reparam_matches(shared):
    branch = load_torch(shared("weights", "rfdnb4s_branch_x4.pth"))
    wide = reparam(branch)
    x = random_image(24, 24)
    assert max_rel(jax_forward(wide, x), jax_forward(branch, x)) <= 1e-4


@pytest.mark.parametrize("layout", branch_layouts())
def test_branch_from_rfdn_is_a_working_network(layout):
    from PIL import Image

    from prfdn_jax.metrics import psnr

    rfdn = load_torch(shared_path("weights", "rfdn_aim_x4.pth"))
    branch = branch_from_rfdn(rfdn, layout)
    assert branch.arch.layout == layout and branch.arch.form == "branch"
    np.testing.assert_array_equal(np.asarray(branch.stages[0].c1_r.kernel[0]),
                                  np.asarray(rfdn.stages[0].c1_r.kernel[0]))
    lr = np.asarray(Image.open(shared_path("data", "Set5", "LR_bicubic", "X4", "birdx4.png")).convert("RGB"))
    hr = np.asarray(Image.open(shared_path("data", "Set5", "HR", "bird.png")).convert("RGB"))
    sr = np.clip(np.round(jax_forward(branch, lr[None].astype(np.float32))[0]), 0, 255).astype(np.uint8)
    bicubic = np.asarray(Image.fromarray(lr).resize(hr.shape[1::-1], Image.BICUBIC))
    got, floor = psnr(sr, hr, crop=4, y_channel=True), psnr(bicubic, hr, crop=4, y_channel=True)
    if layout == "b2":  # no SRFDB: branch B feeds fea_conv straight into B3 and needs training
        assert got > 12
    else:  # with SRFDBs copied from B1, the untrained branch net already beats bicubic
        assert got > floor
