"""JAX networks == the PyTorch reference, and every apply path of a branch network is the same."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import random_branch_arch, random_image, random_merged_arch, shared_path
from helpers_torch import jax_forward, max_rel, torch_forward, torch_module
from prfdn_jax.blocks import pixel_shuffle
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.networks import build
from prfdn_jax.spec import LAYOUTS, Arch, branch_layouts, default_arch

IMPLS = ("vmap", "sequential", "grouped", "loop", "dense")
BRANCH_LAYOUTS = branch_layouts()  # b4s, b2s, b2


@pytest.mark.parametrize("r", [2, 3, 4])
def test_pixel_shuffle_matches_torch(r):
    x = random_image(5, 7, batch=2)[..., :1].repeat(3 * r * r, -1) * np.arange(3 * r * r)
    want = F.pixel_shuffle(torch.from_numpy(x).permute(0, 3, 1, 2), r).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(pixel_shuffle(x, r)), want)


def test_bilinear_resize_matches_torch():
    import jax

    x = random_image(6, 5, batch=1)
    want = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(23, 17), mode="bilinear",
                         align_corners=False).numpy().transpose(0, 2, 3, 1)
    got = jax.image.resize(x, (1, 23, 17, 3), "bilinear", antialias=False)
    assert np.abs(np.asarray(got) - want).max() < 1e-4


@pytest.mark.parametrize("nf,n_blocks,scale", [(8, 2, 2), (12, 3, 3), (50, 4, 4)])
def test_rfdn_matches_torch(nf, n_blocks, scale):
    model = build(default_arch("rfdn", nf=nf, n_blocks=n_blocks, scale=scale))
    x = random_image(20, 18, seed=nf)
    out = jax_forward(model, x)
    assert out.shape == (1, 20 * scale, 18 * scale, 3)
    assert np.abs(out - torch_forward(torch_module(model), x)).max() <= 1e-3


@pytest.mark.parametrize("layout", BRANCH_LAYOUTS)
@pytest.mark.parametrize("nf", [8, 20])
def test_branch_nets_match_torch(layout, nf):
    model = build(default_arch(layout, nf=nf, scale=3))
    x = random_image(19, 16, seed=nf)
    assert np.abs(jax_forward(model, x) - torch_forward(torch_module(model), x)).max() <= 1e-3


@pytest.mark.parametrize("layout,scale", [("b4s", 2), ("b2s", 3), ("b4s", 4), ("b2s", 2)])
@pytest.mark.parametrize("seed", [0, 1])
def test_merged_random_widths_match_torch(layout, scale, seed):
    model = build(random_merged_arch(seed, layout, scale))
    x = random_image(17, 21, seed=seed)
    assert np.abs(jax_forward(model, x) - torch_forward(torch_module(model), x)).max() <= 1e-3


@pytest.mark.parametrize("layout", tuple(LAYOUTS))
def test_apply_paths_equal_default_widths(layout):
    model = build(default_arch(layout, nf=12, scale=2))
    x = random_image(16, 18)
    outs = {impl: jax_forward(model, x, impl) for impl in IMPLS}
    for impl in IMPLS:
        assert max_rel(outs[impl], outs["sequential"]) < 1e-5, impl


@pytest.mark.parametrize("layout", BRANCH_LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_apply_paths_equal_random_widths(layout, seed):
    model = build(random_branch_arch(seed, layout, 2))
    x = random_image(17, 15, seed=seed)
    outs = {impl: jax_forward(model, x, impl) for impl in IMPLS}
    for impl in IMPLS:
        assert max_rel(outs[impl], outs["sequential"]) < 1e-5, impl


def test_branch_parameters_are_one_stacked_pytree():
    model = build(default_arch("b4s", nf=8, scale=2))
    assert model.stages[0].c1_r.kernel[...].shape == (4, 3, 3, 8, 8)
    assert model.srfdb.esa.conv2.kernel[...].shape == (3, 3, 3, 2, 2)
    assert model.fea.kernel[...].shape == (4, 3, 3, 3, 8)


def test_inconsistent_widths_are_rejected():
    w = dict(default_arch("rfdn", nf=8, scale=2).widths)
    w["stages.1.c5"] = (15, 8)
    with pytest.raises(ValueError, match="stages.1.c5 has 15 input channels"):
        build(Arch.make("branch", "rfdn", 2, w))


@pytest.mark.parametrize("name", ["rfdn_aim_x4", "prfdn_x2_pruned", "prfdn_x3_pruned", "rfdnb4s_branch_x4",
                                  "rfdnb2_branch_x4"])
def test_released_weights_match_torch_on_real_image(name):
    from PIL import Image

    from prfdn_jax.checkpoint import load_torch

    model = load_torch(shared_path("weights", f"{name}.pth"))
    s = model.arch.scale
    lr = np.asarray(Image.open(shared_path("data", "Set5", "LR_bicubic", f"X{s}", f"birdx{s}.png")).convert("RGB"),
                    np.float32)[None]
    ref = torch_module(model)
    assert np.abs(jax_forward(model, lr) - torch_forward(ref, lr)).max() <= 1e-3


def test_backend_names_are_normalised_once():
    from prfdn_jax.backends import CHOICES, backend_name, choices

    assert [backend_name(b) for b in ("cpu", "CPU", "gpu", "cuda", "rocm", "METAL", "tpu")] == \
        ["cpu", "cpu", "gpu", "gpu", "gpu", "gpu", "tpu"]
    assert choices() is CHOICES[backend_name()] and choices("cuda") is CHOICES["gpu"]
    assert choices("cpu").impl in IMPLS and choices("rocm").impl in IMPLS


def test_prfdn_impl_is_read_when_a_network_is_built(monkeypatch):
    """$PRFDN_IMPL is resolved at build / load time and stored on the network: a change between two
    builds gives each its own path (a jitted program follows its network, not the variable)."""
    import jax

    from prfdn_jax.backends import choices
    from prfdn_jax.checkpoint import model_from_flat
    from prfdn_jax.inference import make_apply

    arch = default_arch("b4s", nf=4, scale=2, form="wide")
    monkeypatch.setenv("PRFDN_IMPL", "grouped")
    a = build(arch)
    monkeypatch.setenv("PRFDN_IMPL", "dense")
    b = build(arch)
    c = model_from_flat(arch, flat_params(a))  # loading resolves it too
    assert (a.impl, b.impl, c.impl) == ("grouped", "dense", "dense")
    assert a.stages[0].c1_r.impl == "grouped" and b.stages[0].c1_r.impl == "dense"
    x = random_image(16, 16)

    def grouped(model) -> bool:
        return "feature_group_count=4" in str(jax.make_jaxpr(lambda x: model(x))(x))

    assert grouped(a) and not grouped(b)  # traced with the variable now "dense": a keeps its path
    np.testing.assert_allclose(make_apply(a)(x), make_apply(c)(x), rtol=1e-5, atol=1e-3)
    monkeypatch.delenv("PRFDN_IMPL")
    assert build(arch).impl == choices().impl  # the backend's measured default
