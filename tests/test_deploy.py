"""The deploy compiler: every rewrite on its own, and deploy() on released and random networks."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import random_branch_arch, random_image, random_merged_arch, shared_path
from prfdn_jax.checkpoint import flat_params, load_torch, model_from_flat
from prfdn_jax.deploy import deploy, lower_model, passes
from prfdn_jax.deploy.graph import Conv
from prfdn_jax.deploy.run import compile_program
from prfdn_jax.inference import make_apply
from prfdn_jax.networks import build
from prfdn_jax.reparam import wide_to_merged
from prfdn_jax.spec import branch_layouts, default_arch

REWRITES = {
    "fold_input_copies": passes.fold_input_copies,
    "esa_conv4_first": passes.esa_conv4_first,
    "fold_pointwise": passes.fold_pointwise,
    "drop_dead_channels": lambda p: passes.drop_dead_channels(passes.fold_pointwise(p)),
    "merge_siblings": lambda p: passes.merge_siblings(p, mix_kernels=False),
    "merge_siblings_mixed": lambda p: passes.merge_siblings(p, mix_kernels=True),
    "residual_identity": passes.residual_identity,
    "regroup": passes.regroup,
    "standard": passes.standard,
    "standard_mixed": lambda p: passes.standard(p, mix_kernels=True),
    "pad_channels": lambda p: passes.pad_channels(p, 8),
    "pad_channels_growth": lambda p: passes.pad_channels(passes.standard(p), 8, max_growth=1.3),
    "standard_padded": lambda p: passes.standard(p, mix_kernels=True, pad=8),
}


def _noisy(model, seed):
    """The same network with every parameter perturbed (selectors become general learned 1x1 convs)."""
    rng = np.random.default_rng(seed)
    flat = {k: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for k, v in flat_params(model).items()}
    return model_from_flat(model.arch, flat)


def _networks():
    """(name, network) at random widths: freely pruned merged nets, uniformly pruned wide nets, RFDN."""
    nets = []
    for i, layout in enumerate(branch_layouts()):
        nets.append((f"merged-{layout}", build(random_merged_arch(10 + i, layout, 2 + i % 2))))
        wide = build(random_branch_arch(20 + i, layout, 2, form="wide"))
        nets.append((f"wide-{layout}", wide))
        nets.append((f"wide-merged-noisy-{layout}", _noisy(wide_to_merged(wide), i)))
    nets.append(("rfdn", build(default_arch("rfdn", nf=8, scale=3, n_blocks=2))))
    return nets


NETWORKS = _networks()


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / np.abs(np.asarray(b)).max())


@pytest.mark.parametrize("rewrite", sorted(REWRITES))
@pytest.mark.parametrize("name,net", NETWORKS, ids=[n for n, _ in NETWORKS])
def test_each_rewrite_is_exact(rewrite, name, net):
    prog = lower_model(net)
    x = random_image(23, 19, seed=1)
    ref = np.asarray(make_apply(net)(x))
    np.testing.assert_allclose(np.asarray(compile_program(prog)(x)), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
    out = REWRITES[rewrite](prog)
    assert _rel(compile_program(out, grouped="loop")(x), ref) < 1e-4


def test_rewrites_do_what_they_say():
    net = NETWORKS[0][1]  # merged b4s
    prog = lower_model(net)
    std = passes.standard(prog)
    first = next(op for op in std.convs() if op.src == "x")
    assert first.kernel.shape[2] == 3  # input copies folded
    assert not any(op.out.startswith(("split_left", "split_right")) and isinstance(op, Conv) for op in std.ops)
    assert not any(isinstance(op, Conv) and op.out.endswith("cat_p") for op in std.ops)  # cat_p into c5
    assert len(std.convs()) < len(prog.convs()) and len(std.ops) < len(prog.ops)
    # residual adds inside RFDBs became identity taps
    assert sum(1 for op in std.ops if type(op).__name__ == "Add") < sum(1 for op in prog.ops if type(op).__name__ == "Add")
    # ESA conv4 runs at the pooled resolution: one conv reads a conv3_ output directly
    widths = {op.out: op.cout for op in std.convs()}
    ups = [op for op in std.ops if type(op).__name__ == "Resize"]
    assert ups and all(op.out.endswith("conv4.up") and op.src in widths for op in ups)


def test_regroup_finds_the_branches():
    wide = build(random_branch_arch(3, "b4s", 2, form="wide"))
    grouped = passes.regroup(lower_model(wide))
    assert any(op.groups == 4 for op in grouped.convs()) and any(op.groups == 3 for op in grouped.convs())


@pytest.mark.parametrize("name,net", NETWORKS, ids=[n for n, _ in NETWORKS])
@pytest.mark.parametrize("backend", ["cpu", "gpu"])
def test_deploy_matches_the_network(name, net, backend):
    x = random_image(31, 26, seed=2, batch=2)
    ref = make_apply(net)(x)
    assert _rel(deploy(net, backend)(x), ref) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("ckpt", ["prfdn_x2_pruned", "prfdn_x3_pruned", "rfdn_aim_x4", "rfdnb4s_branch_x4",
                                  "rfdnb2_branch_x4"])
def test_deploy_released_checkpoints(ckpt):
    net = load_torch(shared_path("weights", f"{ckpt}.pth"))
    x = random_image(48, 40, seed=3)
    ref = make_apply(net)(x)
    for backend in ("cpu", "gpu"):
        assert _rel(deploy(net, backend)(x), ref) < 1e-4, backend


@pytest.mark.slow
@pytest.mark.parametrize("name", ["prfdn-x2", "prfdn-x3", "prfdn-x4", "rfdn-x4"])
def test_deployed_upscale_equals_network_upscale_on_set5(name):
    from prfdn_jax import registry
    from prfdn_jax.imaging import list_images, read_image
    from prfdn_jax.inference import to_uint8

    net = registry.load(name)
    s = net.arch.scale
    ref_apply, dep = make_apply(net), deploy(net)
    same = total = 0
    for p in list_images(shared_path("data", "Set5", "LR_bicubic", f"X{s}")):
        lr = read_image(p).rgb.astype(np.float32)[None]
        a, b = to_uint8(ref_apply(lr)), to_uint8(dep(lr))
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
        same += int((a == b).sum())
        total += a.size
    assert same / total >= 0.999, same / total


# ----------------------------------------------------------------------------- precision
@pytest.mark.slow
@pytest.mark.parametrize("name", ["prfdn-x2", "prfdn-x3", "prfdn-x4", "rfdn-x4"])
def test_half_precision_quality_on_set5(name):
    """fp16 within 0.05 dB and bf16 within 0.10 dB of fp32 (Set5 Y-PSNR), no overflow."""
    from prfdn_jax import registry
    from prfdn_jax.evaluate import evaluate, load_eval_set

    net = registry.load(name)
    s = net.arch.scale
    items = load_eval_set(shared_path("data", "Set5"), s)
    ref = evaluate(deploy(net), items, s, with_ssim=False)["psnr_y"]
    for dtype, tol in (("float16", 0.05), ("bfloat16", 0.10)):
        d = deploy(net, dtype=dtype)
        assert np.isfinite(np.asarray(d(random_image(32, 32) * 0 + 255))).all()  # saturated input: no overflow
        got = evaluate(d, items, s, with_ssim=False)["psnr_y"]
        assert abs(got - ref) <= tol, (dtype, got, ref)


def test_compiled_program_has_no_weight_transposes_and_fewer_kernels():
    from prfdn_jax import registry
    from prfdn_jax.bench import count_kernels

    net = registry.load("prfdn-x2")
    x = random_image(32, 32)
    import jax

    today = jax.jit(lambda v: net(v)).lower(x).compile().as_text()
    text = deploy(net, "cpu").lower_text((1, 32, 32, 3))
    # weights are constants: no transpose reads a weight parameter (the only parameter is the image)
    entry = text[text.index("ENTRY"):]
    assert entry.count("parameter(") == 1
    assert count_kernels(text) < count_kernels(today)


# ----------------------------------------------------------------------------- tiles
def test_tile_layout_and_blending_are_exact_for_a_local_operator():
    from prfdn_jax.inference import tile_starts, upscale_array

    assert tile_starts(100, 40, 16) == [0, 24, 48, 60] and tile_starts(40, 40, 16) == [0]
    nearest = lambda t: np.repeat(np.repeat(np.asarray(t), 2, 1), 2, 2)  # noqa: E731
    img = np.random.default_rng(0).integers(0, 256, (97, 131, 3)).astype(np.uint8)
    whole = upscale_array(nearest, img, 2)
    for tile, overlap in ((40, 8), (32, 0), (64, 31)):
        np.testing.assert_array_equal(upscale_array(nearest, img, 2, tile=tile, overlap=overlap), whole)


def test_tiles_run_batched_through_one_shape():
    from prfdn_jax.inference import upscale_array

    shapes = []

    def apply(t):
        shapes.append(np.shape(t))
        return np.repeat(np.repeat(np.asarray(t), 3, 1), 3, 2)

    upscale_array(apply, np.zeros((70, 90, 3), np.uint8), 3, tile=32, overlap=8, batch=4)
    assert len(set(shapes)) == 1 and shapes[0][0] == 4


@pytest.mark.slow
def test_tiled_vs_untiled_on_urban100():
    """Y-PSNR of tiled inference (default overlap) within 0.05 dB of whole images."""
    from prfdn_jax import registry
    from prfdn_jax.imaging import list_images, read_image
    from prfdn_jax.inference import upscale_array
    from prfdn_jax.metrics import psnr
    from prfdn_jax.resize import downscale, modcrop

    net = registry.load("prfdn-x2")
    d = deploy(net)
    whole, tiled = [], []
    for p in list_images(shared_path("data", "Urban100", "HR"))[:6]:
        hr = modcrop(read_image(p).rgb, 2)
        lr = downscale(hr, 2, "matlab")
        whole.append(psnr(upscale_array(d, lr, 2), hr, crop=2, y_channel=True))
        tiled.append(psnr(upscale_array(d, lr, 2, tile=128), hr, crop=2, y_channel=True))
    assert abs(np.mean(tiled) - np.mean(whole)) <= 0.05


def test_pad_channels_aligns_every_ungrouped_conv():
    prog = passes.standard(lower_model(NETWORKS[0][1]), mix_kernels=True, pad=8)
    assert all(op.cout % 8 == 0 for op in prog.convs() if op.groups == 1)


def test_pad_channels_max_growth_pads_only_cheap_convs():
    plain = passes.standard(lower_model(NETWORKS[0][1]))
    padded = passes.pad_channels(plain, 8, max_growth=1.3)
    before = {op.out: op.cout for op in plain.convs()}
    after = {op.out: op.cout for op in padded.convs()}
    assert before.keys() == after.keys()
    for name, c in before.items():
        grown = c + (-c) % 8
        assert after[name] == (grown if grown <= 1.3 * c else c), name
    assert any(after[n] != c for n, c in before.items()) and any(c % 8 and after[n] == c for n, c in before.items())
