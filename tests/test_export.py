"""Export (torch / onnx / safetensors), prfdn verify, and foreign (BasicSR-style) checkpoints."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import ROOT, random_image, random_merged_arch, shared_path
from converters import pruning
from converters.export_torch import load_reference, torch_forward
from converters.state_dict import torch_state_dict
from converters.torch_modules import MergedNet, WideNet, build_from_state_dict
from prfdn_jax import registry
from prfdn_jax.checkpoint import flat_params, load_any, model_from_flat
from prfdn_jax.deploy import deploy
from prfdn_jax.export import ONNX_OPSET, ExportError, export, onnx_model, run_onnx
from prfdn_jax.networks import build
from prfdn_jax.prune import to_torch
from prfdn_jax.spec import StateDictError, arch_from_state_dict, default_arch
from prfdn_jax.state_dict import (arch_and_flat_from_state_dict, flat_from_wide_state_dict, read_foreign_safetensors,
                                  read_pth, read_pth_with_notes, state_dict_from_flat_params, wide_arch_from_state_dict,
                                  wide_state_dict)
from prfdn_jax.verify import verify

BUILTINS = {"prfdn-x2": "prfdn_x2_pruned", "prfdn-x3": "prfdn_x3_pruned", "rfdn-x4": "rfdn_aim_x4"}


def _lr(scale: int, name: str = "baby") -> np.ndarray:
    """A real LR image (Set5, MATLAB-bicubic) as (H, W, 3) uint8."""
    return np.asarray(Image.open(shared_path("data", "Set5", "LR_bicubic", f"X{scale}", f"{name}x{scale}.png"))
                      .convert("RGB"))


def _jax(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(deploy(model)(np.asarray(x, np.float32)))


def _no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(".")]


# ----------------------------------------------------------------------------- torch
@pytest.mark.parametrize("name", BUILTINS)
def test_torch_export_of_a_builtin_is_the_released_checkpoint(tmp_path, name):
    out = export(registry.load(name), "torch", tmp_path / f"{name}.pth")
    got = torch.load(out, weights_only=True)
    ref = torch.load(shared_path("weights", f"{BUILTINS[name]}.pth"), weights_only=True)
    assert set(got) == set(ref)
    for k, v in ref.items():
        assert got[k].dtype == torch.float32 and torch.equal(got[k], v), k
    assert _no_temp_files(tmp_path)


def _wide():
    return build(default_arch("b4s", nf=8, scale=2, form="wide"))


@pytest.mark.parametrize("kind", ["wide", "wide-b2s-x3", "merged", "pruned-merged-b4s", "pruned-merged-b2s",
                                  "rfdn", "branch"])
def test_torch_export_reloads_into_the_reference(tmp_path, kind):
    from prfdn_jax.reparam import wide_to_merged

    model = {"wide": _wide,
             "wide-b2s-x3": lambda: build(default_arch("b2s", nf=6, scale=3, form="wide")),
             "merged": lambda: wide_to_merged(_wide()),
             "pruned-merged-b4s": lambda: build(random_merged_arch(0, "b4s", 2)),
             "pruned-merged-b2s": lambda: build(random_merged_arch(1, "b2s", 3)),
             "rfdn": lambda: build(default_arch("rfdn", nf=8, scale=4, n_blocks=2)),
             "branch": lambda: build(default_arch("b2", nf=8, scale=2))}[kind]()
    out = export(model, "torch", tmp_path / "m.pth")
    sd = torch.load(out, weights_only=True)
    net = build_from_state_dict(sd)
    if model.arch.form == "wide":
        assert isinstance(net, WideNet) and "fea.0.weight" in sd
    elif model.arch.form == "merged":
        assert isinstance(net, MergedNet)
    x = random_image(19, 23, seed=3)
    assert np.abs(torch_forward(net, x) - _jax(model, x)).max() <= 1e-3
    # and back into JAX (torch-free readers; the wide layout too), bit-exact
    arch, flat = arch_and_flat_from_state_dict({k: v.numpy() for k, v in sd.items()})
    assert arch == model.arch
    ref = flat_params(model)
    assert set(flat) == set(ref) and all(np.array_equal(flat[k], ref[k]) for k in ref)


def test_wide_layout_round_trip_and_the_pruning_bridge():
    model = build(default_arch("b2s", nf=6, scale=2, form="wide"))
    flat = flat_params(model)
    sd = wide_state_dict(flat, model.arch)
    tensors = torch_state_dict(flat, model.arch)
    assert set(tensors) == set(sd) and all(np.array_equal(tensors[k].numpy(), sd[k]) for k in sd)
    arch = wide_arch_from_state_dict(sd)
    module = to_torch(model)
    assert arch == model.arch == pruning.wide_arch(module)
    for a, b_arch in (flat_from_wide_state_dict(sd, arch), arch), pruning.from_torch(module):
        assert b_arch == arch and set(a) == set(flat) and all(np.array_equal(a[k], flat[k]) for k in flat)
    sd["stages.0.c5.weight"][0, -1] = 1.0  # weight outside its branch block
    with pytest.raises(StateDictError, match="outside the branch blocks"):
        flat_from_wide_state_dict(sd, arch)
    module.stages[0].c5.weight.data[0, -1] = 1.0
    with pytest.raises(pruning.PruningError, match="outside the branch blocks"):
        pruning.from_torch(module)


def test_torch_export_of_a_wide_net_loads_for_verify(tmp_path):
    model = _wide()
    out = export(model, "torch", tmp_path / "w.pth")
    assert isinstance(load_reference(out), WideNet)
    res = verify(model, torch_path=out)
    assert res.ok and res.worst <= 1e-3


def test_export_is_atomic_and_checks_its_arguments(tmp_path, monkeypatch):
    model = build(default_arch("rfdn", nf=8, scale=2, n_blocks=1))
    with pytest.raises(ExportError, match="unknown export format 'tflite'"):
        export(model, "tflite", tmp_path / "m.tflite")
    import converters.export_torch as et

    def broken(flat, arch, path):
        open(path, "wb").write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(et, "save_state_dict", broken)
    (tmp_path / "old.pth").write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"):
        export(model, "torch", tmp_path / "old.pth")
    with pytest.raises(OSError):
        export(model, "torch", tmp_path / "new.pth")
    assert (tmp_path / "old.pth").read_bytes() == b"old" and not (tmp_path / "new.pth").exists()
    assert _no_temp_files(tmp_path)
    with pytest.raises(ExportError, match="is a directory"):
        export(model, "onnx", tmp_path)


def test_safetensors_export_round_trip(tmp_path):
    model = registry.load("prfdn-x3")
    out = export(model, "safetensors", tmp_path / "m.safetensors")
    back = load_any(out)
    assert back.arch == model.arch
    a, b = flat_params(back), flat_params(model)
    assert all(np.array_equal(a[k], b[k]) for k in b)
    assert _no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- onnx
ONNX_CASES = ["prfdn-x2", "prfdn-x3", "prfdn-x4", "rfdn-x4", "random-merged"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ONNX_CASES)
def test_onnx_matches_jax_at_two_sizes_with_one_file(tmp_path, name):
    import onnx

    if name == "random-merged":
        model, img = build(random_merged_arch(2, "b4s", 2)), _lr(2, "bird")
    else:
        model = registry.load(name)
        img = _lr(model.arch.scale)
    path = export(model, "onnx", tmp_path / "m.onnx")
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17 == ONNX_OPSET
    dims = [d.dim_param for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] and dims[2] and dims[3]  # batch, height, width are symbolic
    for x in (img[None, :40, :48], np.stack([img[3:40, 5:36], img[10:47, 0:31]])):  # 2 sizes, batch 1 and 2
        y = run_onnx(path, x)
        ref = _jax(model, x)
        assert y.shape == ref.shape == (x.shape[0], x.shape[1] * model.arch.scale, x.shape[2] * model.arch.scale, 3)
        assert np.abs(y - ref).max() <= 1e-3, (name, x.shape)


def test_onnx_graph_is_the_deployed_program():
    from collections import Counter

    m = onnx_model(registry.load("prfdn-x2"))
    ops = Counter(n.op_type for n in m.graph.node)
    assert ops["DepthToSpace"] == 1 and ops["Resize"] == 2 and "Reshape" not in ops and "Constant" not in ops
    assert ops["Conv"] == len(deploy(registry.load("prfdn-x2"), backend="cpu").program.convs())


def test_onnx_export_needs_no_torch(tmp_path):
    script = ("import sys; sys.modules['torch'] = None\n"
              "from prfdn_jax import registry\nfrom prfdn_jax.export import export\n"
              f"export(registry.load('prfdn-x2'), 'onnx', {str(tmp_path / 'm.onnx')!r})\n"
              f"export(registry.load('prfdn-x2'), 'safetensors', {str(tmp_path / 'm.safetensors')!r})\n"
              "import prfdn_jax.verify, prfdn_jax.video, prfdn_jax.state_dict\n"
              "assert sys.modules['torch'] is None")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "m.onnx").stat().st_size > 0 and (tmp_path / "m.safetensors").exists()


# ----------------------------------------------------------------------------- verify
@pytest.mark.slow
@pytest.mark.parametrize("name", BUILTINS)
def test_verify_passes_on_builtins(tmp_path, name):
    model = registry.load(name)
    onnx_path = export(model, "onnx", tmp_path / "m.onnx")
    res = verify(model, onnx_path=onnx_path)
    assert res.ok, res.lines()
    assert [(c.a, c.b) for c in res.comparisons] == [("jax", "torch"), ("jax", "onnx"), ("torch", "onnx")]
    assert res.worst <= 1e-3 and all(c.psnr > 80 for c in res.comparisons)
    assert res.lines()[-1].startswith("OK") and res.to_dict()["ok"] is True


def test_verify_fails_on_a_perturbed_weight(tmp_path):
    model = registry.load("prfdn-x2")
    onnx_path = export(model, "onnx", tmp_path / "m.onnx")
    torch_path = export(model, "torch", tmp_path / "m.pth")
    img = _lr(2)[:48, :48]
    assert verify(model, img, onnx_path=onnx_path, torch_path=torch_path).ok
    flat = flat_params(model)
    flat["LR_conv.kernel"] = flat["LR_conv.kernel"].copy()
    flat["LR_conv.kernel"][1, 1, 0, 0] += 0.05
    bad = model_from_flat(model.arch, flat)
    res = verify(bad, img, onnx_path=onnx_path, torch_path=torch_path)
    assert not res.ok and res.lines()[-1].startswith("FAILED")
    by = {(c.a, c.b): c for c in res.comparisons}
    assert by[("jax", "onnx")].max_abs > 1e-2 and by[("jax", "torch")].max_abs > 1e-2
    assert by[("torch", "onnx")].max_abs <= 1e-3  # the two untouched exports still agree


# ----------------------------------------------------------------------------- foreign checkpoints
def _basicsr(sd: dict, dtype=torch.float16) -> dict:
    ema = {f"module.{k}": v.to(dtype) for k, v in sd.items()}
    plain = {f"module.{k}": torch.zeros_like(v) for k, v in sd.items()}  # must NOT be used
    return {"params": plain, "params_ema": ema}


def test_basicsr_checkpoint_loads(tmp_path):
    sd = torch.load(shared_path("weights", "prfdn_x3_pruned.pth"), weights_only=True)
    p = tmp_path / "net_g_latest.pth"
    torch.save(_basicsr(sd), p)
    got, notes = read_pth_with_notes(p)
    text = " | ".join(notes)
    assert "'params_ema'" in text and "'params'" in text and "'module.'" in text and "float16" in text, notes
    assert set(got) == set(sd) and all(v.dtype == np.float32 for v in got.values())
    assert list(read_pth(p)) == list(got)
    arch, flat = arch_and_flat_from_state_dict(got)
    assert arch == arch_from_state_dict({k: v.numpy() for k, v in sd.items()})
    model = model_from_flat(arch, flat)
    ref = state_dict_from_flat_params(flat_params(model), arch)
    for k, v in sd.items():  # the EMA weights, rounded to float16 and back
        np.testing.assert_array_equal(ref[k], v.half().float().numpy(), err_msg=k)
    x = _lr(3)[None, :32, :32]
    d = np.abs(_jax(model, x) - _jax(registry.load("prfdn-x3"), x))
    assert d.max() < 1.0 and d.mean() < 0.2  # fp16 weights: close, not equal


def test_foreign_safetensors_loads(tmp_path):
    from safetensors.numpy import save_file

    sd = torch.load(shared_path("weights", "rfdn_aim_x4.pth"), weights_only=True)
    p = tmp_path / "rfdn.safetensors"
    save_file({f"params_ema.module.{k}": v.half().numpy() for k, v in sd.items()}, str(p))
    got, notes = read_foreign_safetensors(p)
    assert any("params_ema" in n for n in notes) and any("float16" in n for n in notes), notes
    arch, flat = arch_and_flat_from_state_dict(got)
    assert arch.layout == "rfdn" and arch.scale == 4
    model_from_flat(arch, flat)
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(StateDictError, match="not a readable safetensors file") as e:
        read_foreign_safetensors(tmp_path / "bad.safetensors")
    assert "\n" not in str(e.value)


def test_unknown_architecture_names_the_first_keys_that_did_not_match(tmp_path):
    sd = {"conv_first.weight": torch.zeros(64, 3, 3, 3), "conv_first.bias": torch.zeros(64),
          "body.0.rdb1.conv1.weight": torch.zeros(32, 64, 3, 3), "body.0.rdb1.conv1.bias": torch.zeros(32),
          "conv_last.weight": torch.zeros(3, 64, 3, 3), "upsampler.0.weight": torch.zeros(12, 64, 3, 3)}
    p = tmp_path / "esrgan.pth"
    torch.save({"params_ema": sd}, p)
    got, _ = read_pth_with_notes(p)
    with pytest.raises(StateDictError) as e:
        arch_and_flat_from_state_dict(got)
    msg = str(e.value)
    assert "\n" not in msg and "did not match: 'conv_first.weight', 'conv_first.bias', " \
                               "'body.0.rdb1.conv1.weight' (+2 more)" in msg, msg
    # every key known but the network incomplete: the spec's message naming the key
    sd = {k: v.numpy() for k, v in torch.load(shared_path("weights", "rfdn_aim_x4.pth"), weights_only=True).items()}
    del sd["B2.c5.bias"]
    with pytest.raises(StateDictError, match=r"missing key 'B2\.c5\.bias'"):
        arch_and_flat_from_state_dict(sd)
