"""Pruning with Torch-Pruning: the JAX <-> PyTorch bridge, free and uniform modes, the TP traps.

Real-data tests read ``$PRFDN_SHARED`` or ``<repo root>/../shared`` and are skipped when it is absent.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

from helpers import SHARED, shared_path
from converters.pruning import PruningError, TorchPruner, check_graph, prune_torch
from converters.torch_modules import MergedNet, WideNet, build_from_state_dict
from prfdn_jax import macs
from prfdn_jax.checkpoint import flat_params, load_any, load_torch, model_from_flat, save_model
from prfdn_jax.inference import make_apply
from prfdn_jax.networks import LAYOUTS, build_abstract, default_arch, width_errors
from prfdn_jax.prune import from_torch, prune_model, to_torch
from prfdn_jax.reparam import reparam, wide_to_merged

torch.set_num_threads(2)



def _weights(name: str) -> Path:
    return shared_path("weights", name)


def _x(h=24, w=20, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (1, h, w, 3)).astype(np.float32)


def _jax(model, x) -> np.ndarray:
    return np.asarray(make_apply(model)(x))


def _torch(module, x) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy().transpose(0, 2, 3, 1)


def _rel(a, b) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _random(arch, seed: int = 0):
    """``arch`` with PyTorch-style uniform(+-1/sqrt(fan_in)) weights drawn in numpy (compiling JAX's
    random ops for every shape takes minutes on a loaded 2-core machine)."""
    from flax import nnx

    rng = np.random.default_rng(seed)
    shapes = {".".join(map(str, p)): v.get_value().shape
              for p, v in nnx.state(build_abstract(arch), nnx.Param).flat_state()}
    flat = {}
    for key, shape in shapes.items():
        kshape = shapes[key.rsplit(".", 1)[0] + ".kernel"]
        bound = 1.0 / np.sqrt(np.prod(kshape[-4:-1]))
        flat[key] = rng.uniform(-bound, bound, shape).astype(np.float32)
    return model_from_flat(arch, flat)


@functools.lru_cache(maxsize=None)
def _small(layout: str, form: str = "wide", nf: int = 8, scale: int = 2, seed: int = 0):
    """A small random network (cached: building one costs ~1 s of tracing; pruning never modifies it)."""
    return _random(default_arch(layout, nf=nf, scale=scale, form=form), seed)


def _assert_same_params(a, b):
    fa, fb = flat_params(a), flat_params(b)
    assert set(fa) == set(fb)
    for k in fa:
        assert fa[k].shape == fb[k].shape and np.array_equal(fa[k], fb[k]), k


# ------------------------------------------------------------------------------- JAX -> PyTorch -> JAX

@pytest.mark.parametrize("layout,form", [("b4s", "wide"), ("b2s", "wide"), ("b2", "branch"), ("rfdn", "branch")])
def test_roundtrip_wide_and_merged(layout, form):
    m = _small(layout, form, seed=1)
    x = _x()
    ref = _jax(m, x)
    t = to_torch(m)
    assert isinstance(t, WideNet) and not t.training
    assert _rel(_torch(t, x), ref) <= 1e-5
    back = from_torch(t, form)
    assert back.arch.form == form and back.arch.w == m.arch.w
    _assert_same_params(back, m)  # bit-exact
    if layout == "rfdn":
        return
    mg = wide_to_merged(m)
    tm = to_torch(mg)
    assert isinstance(tm, MergedNet) and tm.layout == layout
    assert _rel(_torch(tm, x), ref) <= 1e-5
    back = from_torch(tm)
    assert back.arch.form == "merged" and back.arch.w == mg.arch.w
    _assert_same_params(back, mg)


def test_roundtrip_released_merged_net():
    path = _weights("prfdn_x2_pruned.pth")
    m = load_torch(path)
    t = to_torch(m)
    ref_sd = torch.load(path, weights_only=True)
    assert set(t.state_dict()) == set(ref_sd)
    assert all(torch.equal(t.state_dict()[k], ref_sd[k]) for k in ref_sd)
    x = _x(20, 18)
    assert _rel(_torch(t, x), _torch(build_from_state_dict(ref_sd), x)) == 0.0
    _assert_same_params(from_torch(t), m)


def test_wide_torch_module_is_block_structured():
    """The dense c5 of a grouped block holds only its branch blocks; a weight outside them is refused."""
    m = _small("b4s")
    t = to_torch(m)
    c5 = t.stages[0].c5.weight.detach()
    mask = t.stages[0].c5_mask()
    assert (c5[~mask] == 0).all() and mask.sum() == c5.numel() // 4
    with torch.no_grad():
        t.stages[0].c5.weight[~mask] = 1.0
    with pytest.raises(PruningError, match="outside the branch blocks"):
        from_torch(t)


# ------------------------------------------------------------------------------- pruning small nets

# b2s (both modes) is covered by test_import_matches_torch_pruning_result, b2 uniform by test_other_importances
@pytest.mark.parametrize("layout,uniform", [("b4s", False), ("b4s", True), ("b2", False), ("rfdn", False)])
def test_prune_small(layout, uniform):
    m = _small(layout, nf=12, seed=2)
    before, snapshot = macs.params(m), flat_params(m)
    pruned, hist = prune_model(m, ratio=0.5, steps=2, uniform=uniform)
    a = pruned.arch
    assert not width_errors(a)
    n = LAYOUTS[layout][0]
    if uniform or layout == "rfdn":
        assert a.form == (m.arch.form if layout == "rfdn" else "wide")
        flat = flat_params(pruned)
        # still stacked: every block kernel has the branch axis N (the SRFDB's: S)
        assert flat["fea.kernel"].ndim == 5 and flat["fea.kernel"].shape[0] == n
        assert flat["stages.0.c1_r.kernel"].shape[0] == n
        if "srfdb.c1_r.kernel" in flat:
            assert flat["srfdb.c1_r.kernel"].shape[0] == LAYOUTS[layout][1]
        assert a.w["fea"][1] == a.w["LR_conv"][1] == 6  # int(12 * 0.5), same in every branch
    else:
        assert a.form == "merged"
    assert [h["step"] for h in hist] == [0, 1, 2]
    assert [h["ratio"] for h in hist] == [0.0, 0.25, 0.5]
    assert hist[0]["params"] >= before and hist[-1]["params"] == macs.params(pruned)
    assert hist[2]["params"] < hist[1]["params"] < hist[0]["params"]
    assert hist[-1]["params"] <= 0.4 * hist[0]["params"]
    assert hist[-1]["gmac_1080p"] < hist[0]["gmac_1080p"]
    x = _x()
    y = _jax(pruned, x)
    assert y.shape == (1, 48, 40, 3)
    assert _rel(_torch(to_torch(pruned), x), y) <= 1e-4
    after = flat_params(m)  # the input is not modified
    assert all(np.array_equal(after[k], snapshot[k]) for k in snapshot)


@pytest.mark.parametrize("uniform", [False, True])
def test_import_matches_torch_pruning_result(uniform):
    """The JAX net read back from the module Torch-Pruning pruned computes what that module computes."""
    m = _small("b2s", nf=12, seed=2)
    module = to_torch(m if uniform else wide_to_merged(m))
    p0 = sum(p.numel() for p in module.parameters())
    pruned = prune_torch(module, ratio=0.4, steps=2)
    assert sum(p.numel() for p in pruned.parameters()) < 0.6 * p0
    assert all(type(c) is nn.Conv2d for c in pruned.modules() if isinstance(c, nn.Conv2d))
    j = from_torch(pruned)
    assert j.arch.form == ("wide" if uniform else "merged")
    x = _x(26, 22, seed=4)
    assert _rel(_jax(j, x), _torch(pruned, x)) <= 1e-5


# ------------------------------------------------------------------------------- Torch-Pruning traps

@pytest.mark.parametrize("uniform", [False, True])
def test_pixelshuffle_trap_aggressive(uniform):
    """PixelShuffle looks element-wise to TP: the upsampler must keep 3*r*r outputs at ratio 0.9."""
    m = _small("b4s", nf=16, scale=3, seed=5)
    pruned, _ = prune_model(m, ratio=0.9, steps=1, uniform=uniform)
    w = pruned.arch.w
    assert w["upsampler"][1] == 27
    assert flat_params(pruned)["upsampler.kernel"].shape[-1] == 27
    y = jax.eval_shape(lambda x: pruned(x), jax.ShapeDtypeStruct((1, 16, 17, 3), jnp.float32))
    assert y.shape == (1, 48, 51, 3)
    # every layer was pruned as far as allowed, none emptied (TP would skip such groups silently)
    if uniform:
        assert w["fea"][1] == 2 and w["stages.0.c1_d"][1] == 2 and w["srfdb.esa.conv1"][1] == 2
    else:
        assert min(o for _, o in w.values()) >= 1
        assert w["srfdb.c1_d"][1] == int(24 * 0.1) and w["stages.0.esa.conv1"][1] == 1
        assert w["split_left"][1] == 1 and w["LR_conv"][1] == 1


def test_pixelshuffle_trap_without_protection_is_caught():
    m = _small("b4s")
    module = to_torch(wide_to_merged(m))
    session = TorchPruner(module, ratio=0.1, steps=1, protect_output=False)  # 12 -> 10 outputs
    assert session.pruner.round_to is None  # round_to would round kept channels DOWN
    with pytest.raises(PruningError, match="3\\*r\\*r"):
        session.step()
    # at 0.5 TP's own over-pruning check trips on the 3-channel output (TP alone would skip silently)
    session = TorchPruner(to_torch(wide_to_merged(m)), ratio=0.5, steps=1, protect_output=False)
    with pytest.raises(PruningError, match="empty a layer"):
        session.step()


class _Chunky(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        u, v = torch.chunk(self.head(x), 2, dim=1)
        return self.tail(torch.cat([self.a(u), self.b(v)], dim=1))


def test_split_and_chunk_are_refused():
    import torch_pruning as tp

    dg = tp.DependencyGraph().build_dependency(_Chunky(), example_inputs=torch.rand(1, 3, 16, 16))
    with pytest.raises(PruningError, match="split"):
        check_graph(dg)
    with pytest.raises(PruningError, match="MergedNet or a WideNet"):
        TorchPruner(_Chunky(), ratio=0.5, steps=1)
    # the reference modules never split: their traced graphs pass
    for module in (to_torch(_small("b2s")), to_torch(wide_to_merged(_small("b2s")))):
        check_graph(tp.DependencyGraph().build_dependency(module, example_inputs=torch.rand(1, 3, 32, 32)))


def test_bad_arguments():
    m = _small("b2")
    with pytest.raises(PruningError, match="uniform"):
        prune_model(wide_to_merged(m), ratio=0.5, steps=1, uniform=True)
    with pytest.raises(PruningError, match="importance"):
        prune_model(m, ratio=0.5, steps=1, importance="nope")
    with pytest.raises(PruningError, match="ratio"):
        prune_model(m, ratio=1.0, steps=1)
    with pytest.raises(PruningError, match="steps"):
        prune_model(m, ratio=0.5, steps=0)
    with pytest.raises(PruningError, match="calib"):
        prune_model(m, ratio=0.5, steps=1, importance="taylor")


@pytest.mark.parametrize("keep,uniform", [(("esa",), True), (("distilled",), True), (("esa", "distilled"), False)])
def test_keep_leaves_a_conv_family_whole(keep, uniform):
    """``keep``: the family's outputs stay at full width while the trunk they read shrinks; still exact."""
    m = _small("b4s", nf=16)
    pruned, _ = prune_model(m, ratio=0.5, steps=1, uniform=uniform, keep=keep)
    before, after = (wide_to_merged(m) if not uniform else m).arch.w, pruned.arch.w
    esa = [k for k in after if ".esa." in k and not k.endswith("conv4")]
    distilled = [k for k in after if k.rsplit(".", 1)[-1] in ("c1_d", "c2_d", "c3_d", "c4")]
    for k in esa + distilled:
        family = "esa" if k in esa else "distilled"
        assert (after[k][1] == before[k][1]) == (family in keep), k
    assert after["fea"][1] < before["fea"][1]  # the trunk shrank
    with pytest.raises(PruningError, match="unknown --keep 'c5'"):
        prune_model(m, ratio=0.5, steps=1, keep=("c5",))


@pytest.mark.parametrize("importance", ["l1", "random", "taylor"])
def test_other_importances(importance):
    m = _small("b2")
    rng = np.random.default_rng(0)
    calib = (rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32),
             rng.uniform(0, 255, (2, 32, 32, 3)).astype(np.float32))
    module = prune_torch(to_torch(m), ratio=0.5, steps=1, importance=importance, calib=calib)
    w = module.branch_widths()
    assert w["fea"] == (3, 4) and w["stages.0.c1_d"] == (4, 2) and w["upsampler"] == (4, 12)
    assert all(p.grad is None for p in module.parameters())


def test_finetune_and_val_hooks():
    """finetune(model, step) runs after every step and its weights carry into the next step."""
    m = _small("b4s")
    calls = []

    def finetune(model, step):
        calls.append((step, model.arch.w["fea"][1]))
        if step == 1:  # mark the weights; step 2 prunes the torch module these weights were loaded into
            flat = flat_params(model)
            flat["upsampler.bias"] = np.full_like(flat["upsampler.bias"], 7.0)
            return model_from_flat(model.arch, flat)
        return model

    pruned, hist = prune_model(m, ratio=0.5, steps=2, finetune=finetune, val=lambda model: 12.5)
    assert calls == [(1, 24), (2, 16)]  # merged widths: 4 branches of 8 -> 6 -> 4 channels each
    assert np.all(flat_params(pruned)["upsampler.bias"] == 7.0)
    assert [h["psnr"] for h in hist] == [12.5, 12.5, 12.5]

    def bad(model, step):
        return _small("b4s")

    with pytest.raises(PruningError, match="finetune changed"):
        prune_model(m, ratio=0.5, steps=1, finetune=bad)


# ------------------------------------------------------------------------------- budgets and the report

def test_budget_stops_at_the_first_step_within_it():
    m = _small("b4s", nf=12, seed=2)
    size = (32, 48)
    _, full = prune_model(m, ratio=0.6, steps=4, uniform=True, size=size)
    gmacs = [h["gmac"] for h in full]
    assert gmacs == sorted(gmacs, reverse=True) and len(gmacs) == 5
    target = (gmacs[2] + gmacs[3]) / 2  # step 3 is the first one within the budget
    pruned, hist = prune_model(m, ratio=0.6, steps=4, uniform=True, size=size, target_gmac=target)
    assert [h["step"] for h in hist] == [0, 1, 2, 3] and hist[-1]["gmac"] <= target < hist[-2]["gmac"]
    assert macs.summary(pruned, *size)["gmac"] == pytest.approx(hist[-1]["gmac"])
    _, hist = prune_model(m, ratio=0.6, steps=4, uniform=True, size=size, target_params=full[1]["params"])
    assert [h["step"] for h in hist] == [0, 1]
    with pytest.raises(PruningError, match="budget was not reached"):
        prune_model(m, ratio=0.2, steps=2, uniform=True, size=size, target_gmac=gmacs[-1] / 10)


def test_prune_command_to_a_budget_writes_the_report(tmp_path, monkeypatch, capsys):
    """From another folder: the default (Taylor) importance calibrated on --val, a GMAC budget at --size,
    pareto.csv (one row per step) and pareto.png beside DST."""
    from PIL import Image

    from helpers import random_image
    from prfdn_jax import pareto
    from prfdn_jax.cli import main

    src = save_model(tmp_path / "wide.safetensors", _small("b4s", nf=12, seed=2))
    val = tmp_path / "val"
    (val / "HR").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(random_image(40, 36, seed=i)[0].astype(np.uint8)).save(val / "HR" / f"{i}.png")
    _, full = prune_model(_small("b4s", nf=12, seed=2), ratio=0.6, steps=4, uniform=True, size=(32, 48))
    target = (full[1]["gmac"] + full[2]["gmac"]) / 2
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "out").mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    code = main(["prune", str(src), "out/p.safetensors", "--target-gmac", str(target), "--size", "32x48",
                 "--ratio", "0.6", "--steps", "4", "--val", str(val)])
    out = capsys.readouterr().out
    assert code == 0 and "importance taylor" in out
    rows = pareto.read_csv(elsewhere / "out" / "pareto.csv")
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[-1]["gmac"] <= target < rows[-2]["gmac"]
    assert all(r["latency_ms"] > 0 and np.isfinite(r["psnr_val"]) for r in rows)
    assert (elsewhere / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    pruned = load_any(elsewhere / "out" / "p.safetensors")
    assert macs.summary(pruned, 32, 48)["gmac"] == pytest.approx(rows[-1]["gmac"], abs=1e-4)  # CSV: 4 decimals


def test_default_importance_is_the_best_measured():
    """Taylor is the default (magnitude wrecks this family: 38.9 -> 10.2 dB at 10 % pruned, Taylor 34.8)."""
    from prfdn_jax.commands.prune import DEFAULT_IMPORTANCE
    from prfdn_jax.config import IMPORTANCES

    assert DEFAULT_IMPORTANCE == "taylor" and DEFAULT_IMPORTANCE in IMPORTANCES


# ------------------------------------------------------------------------------- the real x4 network

@pytest.mark.parametrize("uniform", [False, True])
def test_prune_real_b4s(uniform, tmp_path):
    wide = reparam(load_torch(_weights("rfdnb4s_branch_x4.pth")))
    assert macs.params(wide) == 570_548
    pruned, hist = prune_model(wide, ratio=0.5, steps=2, uniform=uniform)
    before = hist[0]["params"]  # the network Torch-Pruning prunes: merged (2,212,552) or wide
    after = macs.params(pruned)
    print(f"uniform={uniform}: params {macs.params(wide)} -> pruned form {before} -> {after}; "
          f"GMAC@1080p {hist[0]['gmac_1080p']:.1f} -> {hist[-1]['gmac_1080p']:.1f}")
    assert after <= 0.6 * before
    if uniform:
        assert pruned.arch.form == "wide" and flat_params(pruned)["fea.kernel"].shape[0] == 4
        assert after <= 0.6 * 570_548
    x = _x(24, 28, seed=8)
    y = _jax(pruned, x)
    t = to_torch(pruned)
    assert _rel(_torch(t, x), y) <= 1e-4
    path = save_model(tmp_path / "pruned.safetensors", pruned)
    again = load_any(path)
    assert again.arch == pruned.arch
    _assert_same_params(again, pruned)


# ------------------------------------------------------------------------------- MAC counter

@pytest.mark.parametrize("name,hw,params,conv,total", [
    ("prfdn_x2_pruned.pth", (1080, 1920), 29_851, 58.24, 58.55),
    ("prfdn_x3_pruned.pth", (720, 1280), 62_905, 54.82, 55.08),
])
def test_mac_counter(name, hw, params, conv, total):
    s = macs.summary(load_torch(_weights(name)), *hw)
    assert s["params"] == params
    assert round(s["gmac_conv"], 2) == conv and round(s["gmac"], 2) == total


# ------------------------------------------------------------------------------- finetuning (train.py)

@pytest.mark.slow
def test_prune_with_real_finetune_loss_goes_down(tmp_path):
    """A few real crops: after each pruning step, prfdn_jax.train.finetune lowers the L1 loss."""
    from PIL import Image

    from prfdn_jax.config import TrainConfig
    from prfdn_jax.train import finetune

    t91 = SHARED / "data" / "train" / "T91"
    set5 = SHARED / "data" / "Set5"
    if not (t91.is_dir() and set5.is_dir()):
        pytest.skip(f"shared data not found at {SHARED}")
    crops = []
    for hr_path in sorted((set5 / "HR").glob("*.png"))[:3]:
        hr = np.asarray(Image.open(hr_path).convert("RGB"), np.float32)
        lr = np.asarray(Image.open(set5 / "LR_bicubic" / "X2" / f"{hr_path.stem}x2.png").convert("RGB"), np.float32)
        crops.append((lr[:32, :32], hr[:64, :64]))
    lr = np.stack([c[0] for c in crops])
    hr = np.stack([c[1] for c in crops])

    def loss(model):
        return float(np.abs(_jax(model, lr) - hr).mean())

    config = TrainConfig(scale=2, patch=64, batch=4, lr=1e-3, log_every=5, ckpt_every=1000,
                         val_every=1000, workers=0, augment=False)
    losses = []

    def tune(model, step):
        before = loss(model)
        model = finetune(model, config, [str(t91)], steps=30)
        losses.append((before, loss(model)))
        return model

    m = _small("b4s")
    prune_model(m, ratio=0.5, steps=2, finetune=tune)
    print("L1 before/after finetuning at each step:", losses)
    assert len(losses) == 2 and all(after < before for before, after in losses)
