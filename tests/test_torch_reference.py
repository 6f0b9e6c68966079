"""Tests of the PyTorch reference implementation (converters/torch_modules.py).

Real-data tests read ``$PRFDN_SHARED`` or ``<repo root>/../shared`` and are skipped when it is absent.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from converters.torch_modules import (
    ESA,
    RFDB,
    RFDN,
    SRFDB,
    BranchNet,
    MergedNet,
    build_from_state_dict,
    count_params,
    kernel_of,
    merged_widths,
    rfdb_widths,
    widths_from_state_dict,
)

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRFDN_SHARED") or (REPO.parent / "shared"))
WEIGHTS = SHARED / "weights"
SET5 = SHARED / "data" / "Set5"

needs_shared = pytest.mark.skipif(
    not (WEIGHTS.is_dir() and SET5.is_dir()),
    reason=f"shared data not found at {SHARED} (set PRFDN_SHARED)",
)

# name: (parameters, scale, Set5 Y-PSNR from the reference doc, expected class / kind)
CHECKPOINTS = {
    "rfdn_aim_x4": (433_448, 4, 32.16, ("RFDN", None)),
    "prfdn_x2_pruned": (29_851, 2, 36.64, ("MergedNet", "b4s")),
    "prfdn_x3_pruned": (62_905, 3, 33.46, ("MergedNet", "b2s")),
    "rfdnb4s_branch_x4": (570_548, 4, 31.89, ("BranchNet", "b4s")),
    "rfdnb2_branch_x4": (434_848, 4, 31.97, ("BranchNet", "b2")),
}


def _load(name: str) -> dict[str, torch.Tensor]:
    return torch.load(WEIGHTS / f"{name}.pth", weights_only=True)


# ------------------------------------------------------------------------------------------ PSNR

def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _y_channel(img: np.ndarray) -> np.ndarray:
    rgb = img.astype(np.float64) / 255.0
    return 16.0 + 65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]


def _y_psnr(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    hr = hr[: sr.shape[0], : sr.shape[1]]
    a, b = _y_channel(sr), _y_channel(hr)
    if border:
        a, b = a[border:-border, border:-border], b[border:-border, border:-border]
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def _super_resolve(net: torch.nn.Module, lr: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(lr.astype(np.float32)).permute(2, 0, 1)[None]
    with torch.no_grad():
        y = net(x)
    y = y.clamp(0, 255).round().to(torch.uint8)
    return y[0].permute(1, 2, 0).numpy()


def _set5_psnr(net: torch.nn.Module, scale: int) -> float:
    values = []
    for hr_path in sorted((SET5 / "HR").glob("*.png")):
        lr = _read_rgb(SET5 / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        sr = _super_resolve(net, lr)
        assert sr.shape == (lr.shape[0] * scale, lr.shape[1] * scale, 3)
        values.append(_y_psnr(sr, _read_rgb(hr_path), scale))
    assert len(values) == 5
    return float(np.mean(values))


def test_psnr_helper_basic():
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 256, (20, 22, 3), dtype=np.uint8)
    assert np.isinf(_y_psnr(hr, hr, 2))
    noisy = np.clip(hr.astype(int) + 1, 0, 255).astype(np.uint8)
    assert 40 < _y_psnr(noisy, hr, 2) < 60
    # HR larger than SR is cropped top-left
    big = np.zeros((25, 25, 3), np.uint8)
    big[:20, :22] = hr
    assert np.isinf(_y_psnr(hr, big, 0))


# ------------------------------------------------------------------------------------------ checkpoints

@needs_shared
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_loads_strictly(name):
    params, scale, _, (cls, kind) = CHECKPOINTS[name]
    sd = _load(name)
    net = build_from_state_dict(sd)
    assert type(net).__name__ == cls
    if kind is not None:
        assert getattr(net, "kind", None) == kind or getattr(net, "layout", None) == kind
    assert not net.training
    assert count_params(net) == params
    assert sum(v.numel() for v in sd.values()) == params
    # state dict round-trips key for key, value for value
    out = net.state_dict()
    assert set(out) == set(sd)
    assert all(torch.equal(out[k], sd[k]) for k in sd)
    assert net.upsampler[1].upscale_factor == scale
    if isinstance(net, MergedNet):
        assert net.widths == widths_from_state_dict(sd)
        again = MergedNet.from_state_dict(sd)
        assert count_params(again) == params


@needs_shared
@pytest.mark.slow
@pytest.mark.parametrize("name", list(CHECKPOINTS))
def test_checkpoint_set5_psnr(name):
    _, scale, expected, _ = CHECKPOINTS[name]
    net = build_from_state_dict(_load(name))
    psnr = _set5_psnr(net, scale)
    print(f"{name}: Set5 Y-PSNR {psnr:.4f} dB (reference {expected})")
    assert abs(psnr - expected) <= 0.01, f"{name}: {psnr:.4f} vs {expected}"


# ------------------------------------------------------------------------------------------ structure

def test_kernel_table():
    assert kernel_of("B1.c1_d") == (1, 1, 0)
    assert kernel_of("B1234.c2_r") == (3, 1, 1)
    assert kernel_of("B2S123.esa.conv2") == (3, 2, 0)
    assert kernel_of("esa.conv_max") == (3, 1, 1)
    assert kernel_of("B13.esa.conv4") == (1, 1, 0)
    assert kernel_of("c.0") == (1, 1, 0)
    assert kernel_of("upsampler.0") == (3, 1, 1)
    assert kernel_of("fea_conv1234") == (3, 1, 1)
    assert kernel_of("cat_p") == (1, 1, 0)
    with pytest.raises(ValueError):
        kernel_of("B1.nonsense")


def test_standard_widths_param_counts():
    # RFDN nf=50 x4 has the released model's size; branch models match theirs
    assert count_params(RFDN()) == 433_448
    assert count_params(BranchNet("b4s")) == 570_548
    assert count_params(BranchNet("b2")) == 434_848
    rfdb = RFDB(50)
    assert rfdb.steps == 3 and rfdb.cat_p is None
    s = SRFDB(rfdb_widths(50, steps=1, cat_p=True))
    assert s.steps == 1 and s.cat_p is not None
    assert s.widths["cat_p"] == (50, 50) and s.widths["c5"] == (50, 50)
    with pytest.raises(ValueError):
        SRFDB(rfdb_widths(50))  # three steps


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_small_rfdn_shapes(scale):
    torch.manual_seed(0)
    net = RFDN(nf=8, n_blocks=2, scale=scale).eval()
    assert set(k.split(".")[0] for k in net.state_dict()) == {"fea_conv", "B1", "B2", "c", "LR_conv", "upsampler"}
    with torch.no_grad():
        y = net(torch.rand(2, 3, 17, 21) * 255)
    assert y.shape == (2, 3, 17 * scale, 21 * scale)
    rebuilt = build_from_state_dict(net.state_dict())
    assert isinstance(rebuilt, RFDN) and (rebuilt.nf, rebuilt.n_blocks, rebuilt.scale) == (8, 2, scale)


def test_esa_matches_manual_forward():
    torch.manual_seed(1)
    esa = ESA(16)
    x = torch.randn(1, 16, 23, 19)
    F = torch.nn.functional
    c1_ = esa.conv1(x)
    c1 = F.conv2d(c1_, esa.conv2.weight, esa.conv2.bias, stride=2)
    v = F.max_pool2d(c1, 7, 3)
    v = F.relu(F.conv2d(v, esa.conv_max.weight, esa.conv_max.bias, padding=1))
    c3 = F.relu(F.conv2d(v, esa.conv3.weight, esa.conv3.bias, padding=1))
    c3 = F.conv2d(c3, esa.conv3_.weight, esa.conv3_.bias, padding=1)
    c3 = F.interpolate(c3, size=(23, 19), mode="bilinear", align_corners=False)
    m = torch.sigmoid(esa.conv4(c3 + esa.conv_f(c1_)))
    with torch.no_grad():
        assert torch.allclose(esa(x), x * m)


# ------------------------------------------------------------------------------------------ merged nets

def _esa_rand(rng: random.Random, n: int) -> dict:
    e1, e2, e3, e4, ef = (rng.randint(1, 6) for _ in range(5))
    return {"esa.conv1": (n, e1), "esa.conv2": (e1, e2), "esa.conv_max": (e2, e3),
            "esa.conv3": (e3, e4), "esa.conv3_": (e4, ef), "esa.conv_f": (e1, ef), "esa.conv4": (ef, n)}


def _block_rand(rng: random.Random, n: int, steps: int, cat_p: bool) -> tuple[dict, int]:
    """Random RFDB/SRFDB widths on n input channels; returns (widths, out channels)."""
    w = {}
    cat = 0
    for i in range(1, steps + 1):
        d = rng.randint(1, 9)
        w[f"c{i}_d"] = (n, d)
        w[f"c{i}_r"] = (n, n)
        cat += d
    d4 = rng.randint(1, 9)
    w["c4"] = (n, d4)
    cat += d4
    if cat_p:
        p = rng.randint(1, 20)
        w["cat_p"] = (cat, p)
        cat = p
    out = rng.randint(2, 16)
    w["c5"] = (cat, out)
    w.update(_esa_rand(rng, out))
    return w, out


def _random_merged_widths(layout: str, seed: int, scale: int) -> dict:
    rng = random.Random(seed)
    copies = rng.randint(1, 4)
    feat = rng.randint(2, 20)
    left, right = rng.randint(1, 10), rng.randint(1, 10)
    c0, s = rng.randint(1, 10), rng.randint(1, 10)
    w = {"split_left": (feat, left), "split_right": (feat, right)}
    if layout == "b4s":
        w["fea_conv1234"] = (3 * copies, feat)
        sw, sout = _block_rand(rng, right, 1, True)
        w.update({f"B2S123.{k}": v for k, v in sw.items()})
        g = left + sout
        bw, bout = _block_rand(rng, g, 3, True)
        w.update({f"B1234.{k}": v for k, v in bw.items()})
        w["c.0"] = (bout, c0)
    else:
        w["fea_conv12"] = (3 * copies, feat)
        sw, sout = _block_rand(rng, right, 1, False)
        w.update({f"B2S2.{k}": v for k, v in sw.items()})
        g = left + sout
        w13, o13 = _block_rand(rng, g, 3, True)
        w24, o24 = _block_rand(rng, o13, 3, True)
        w.update({f"B13.{k}": v for k, v in w13.items()})
        w.update({f"B24.{k}": v for k, v in w24.items()})
        p = rng.randint(1, 20)
        w["cat_p"] = (o13 + o24, p)
        w["c.0"] = (p, c0)
    w.update({"LR_conv": (c0, s), "split": (g, s), "upsampler.0": (s, 3 * scale * scale)})
    return w


@pytest.mark.parametrize("layout", ["b4s", "b2s"])
@pytest.mark.parametrize("seed", range(4))
def test_random_width_merged_nets(layout, seed):
    scale = (2, 3, 4, 2)[seed]
    widths = _random_merged_widths(layout, seed, scale)
    torch.manual_seed(seed)
    net = MergedNet(widths, layout, scale).eval()
    sd = net.state_dict()
    assert widths_from_state_dict(sd) == widths == net.widths
    x = torch.rand(1, 3, 16, 18) * 255
    with torch.no_grad():
        y = net(x)
        assert y.shape == (1, 3, 16 * scale, 18 * scale)
        rebuilt = build_from_state_dict(sd)
        assert isinstance(rebuilt, MergedNet) and rebuilt.layout == layout
        assert torch.equal(rebuilt(x), y)


def test_merged_width_errors():
    w = merged_widths("b4s", nf=8, scale=2)
    MergedNet(w, "b4s")  # consistent
    bad = dict(w)
    bad["split"] = (w["split"][0] + 1, w["split"][1])
    with pytest.raises(ValueError, match=r"\bsplit\b"):  # the message names the conv (released name)
        MergedNet(bad, "b4s")
    bad = dict(w)
    bad["B1234.c2_r"] = (w["B1234.c2_r"][0], w["B1234.c2_r"][1] - 1)
    with pytest.raises(ValueError, match=r"B1234\.c2_r"):
        MergedNet(bad, "b4s")
    with pytest.raises(ValueError):
        MergedNet(w, "b4s", scale=3)
    with pytest.raises(ValueError):
        MergedNet(w, "b2s")


def test_unrecognised_state_dict():
    with pytest.raises(ValueError) as e:
        build_from_state_dict({"foo.weight": torch.zeros(3, 3, 1, 1)})
    assert "\n" not in str(e.value)
    sd = RFDN(nf=8, n_blocks=2, scale=2).state_dict()
    sd["B1.c1_r.weight"] = torch.zeros(8, 8, 1, 1)  # wrong kernel size
    with pytest.raises(ValueError) as e:
        build_from_state_dict(sd)
    assert "\n" not in str(e.value)


# Exact re-parametrization: branch model -> dense merged net with block-diagonal weights. This checks
# that MergedNet's wiring (splits, cat_p orders, residual) is the one the reference doc describes.

def _blockdiag(ws: list[torch.Tensor]) -> torch.Tensor:
    o = sum(w.shape[0] for w in ws)
    i = sum(w.shape[1] for w in ws)
    out = torch.zeros(o, i, *ws[0].shape[2:])
    r = c = 0
    for w in ws:
        out[r : r + w.shape[0], c : c + w.shape[1]] = w
        r, c = r + w.shape[0], c + w.shape[1]
    return out


def _selector(cin: int, rows: list[int]) -> torch.Tensor:
    w = torch.zeros(len(rows), cin, 1, 1)
    for o, i in enumerate(rows):
        w[o, i] = 1.0
    return w


def _merge_block(blocks: list[RFDB], prefix: str, sd: dict, cat_p: bool) -> None:
    nb = len(blocks)
    for name, _ in blocks[0].state_dict().items():
        if name.endswith(".weight"):
            sd[f"{prefix}.{name}"] = _blockdiag([b.state_dict()[name] for b in blocks])
        else:
            sd[f"{prefix}.{name}"] = torch.cat([b.state_dict()[name] for b in blocks])
    if cat_p:
        steps, dc = blocks[0].steps, blocks[0].widths["c1_d"][1]
        n_t = steps + 1
        # output (branch i, tensor t, channel j) reads input (tensor t, branch i, channel j)
        rows = [t * nb * dc + i * dc + j for i in range(nb) for t in range(n_t) for j in range(dc)]
        sd[f"{prefix}.cat_p.weight"] = _selector(n_t * nb * dc, rows)
        sd[f"{prefix}.cat_p.bias"] = torch.zeros(len(rows))


def _common_tail(branch: BranchNet, sd: dict, nf: int, feat: int) -> None:
    bsd = branch.state_dict()
    for k in ("c.0", "LR_conv", "upsampler.0"):
        sd[f"{k}.weight"], sd[f"{k}.bias"] = bsd[f"{k}.weight"], bsd[f"{k}.bias"]
    sd["split.weight"] = _selector(feat, list(range(nf)))
    sd["split.bias"] = torch.zeros(nf)


@pytest.mark.parametrize("kind", ["b4s", "b2s"])
def test_merged_equals_branch_model(kind):
    nf, scale = 8, 2
    torch.manual_seed(3)
    branch = BranchNet(kind, nf=nf, scale=scale).eval()
    with torch.no_grad():  # make biases non-trivial
        for p in branch.parameters():
            p.add_(0.05 * torch.randn_like(p))
    bsd = branch.state_dict()
    sd: dict[str, torch.Tensor] = {}
    if kind == "b4s":
        firsts = ["fea_conv", "fea_conv1", "fea_conv2", "fea_conv3"]
        sd["fea_conv1234.weight"] = _blockdiag([bsd[f"{f}.weight"] for f in firsts])
        sd["fea_conv1234.bias"] = torch.cat([bsd[f"{f}.bias"] for f in firsts])
        sd["split_left.weight"] = _selector(4 * nf, list(range(nf)))
        sd["split_right.weight"] = _selector(4 * nf, list(range(nf, 4 * nf)))
        sd["split_left.bias"], sd["split_right.bias"] = torch.zeros(nf), torch.zeros(3 * nf)
        _merge_block([branch.B2S1, branch.B2S2, branch.B2S3], "B2S123", sd, cat_p=True)
        _merge_block([branch.B1, branch.B2, branch.B3, branch.B4], "B1234", sd, cat_p=True)
        _common_tail(branch, sd, nf, 4 * nf)
    else:
        sd["fea_conv12.weight"] = _blockdiag([bsd["fea_conv.weight"], bsd["fea_conv2.weight"]])
        sd["fea_conv12.bias"] = torch.cat([bsd["fea_conv.bias"], bsd["fea_conv2.bias"]])
        sd["split_left.weight"] = _selector(2 * nf, list(range(nf)))
        sd["split_right.weight"] = _selector(2 * nf, list(range(nf, 2 * nf)))
        sd["split_left.bias"], sd["split_right.bias"] = torch.zeros(nf), torch.zeros(nf)
        for k, v in branch.B2S2.state_dict().items():
            sd[f"B2S2.{k}"] = v
        _merge_block([branch.B1, branch.B3], "B13", sd, cat_p=True)
        _merge_block([branch.B2, branch.B4], "B24", sd, cat_p=True)
        # cat[b13, b24] = [B1, B3, B2, B4] -> [B1, B2, B3, B4]
        order = [0, 2, 1, 3]
        rows = [order[blk] * nf + j for blk in range(4) for j in range(nf)]
        sd["cat_p.weight"] = _selector(4 * nf, rows)
        sd["cat_p.bias"] = torch.zeros(4 * nf)
        _common_tail(branch, sd, nf, 2 * nf)
    merged = build_from_state_dict(sd)
    assert isinstance(merged, MergedNet) and merged.layout == kind
    assert merged.widths == merged_widths(kind, nf=nf, scale=scale)
    x = torch.rand(1, 3, 24, 20) * 255
    with torch.no_grad():
        ref, got = branch(x), merged(x)
    assert got.shape == ref.shape == (1, 3, 48, 40)
    print(f"{kind}: merged vs branch max |diff| {(got - ref).abs().max().item():.2e}")
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-3), (got - ref).abs().max()


def test_torch_pruning_on_merged_net():
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    net = MergedNet(merged_widths("b2s", nf=8, scale=3), "b2s").eval()
    example = torch.rand(1, 3, 24, 24)
    pruner = tp.pruner.MetaPruner(
        net, example, importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=0.25, ignored_layers=[net.upsampler[0]],
    )
    pruner.step()
    with torch.no_grad():
        y = net(example)
    assert y.shape == (1, 3, 72, 72)
    assert count_params(net) < count_params(MergedNet(merged_widths("b2s", nf=8, scale=3), "b2s"))
    rebuilt = MergedNet.from_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(example), y)
