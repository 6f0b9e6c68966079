"""Issue 17 "Reliability II": weights that would load as a black or white network, outputs written over
their inputs, verify's verdicts and JSON, messages for symlink loops and misnamed files, [0, 1] exports.
Tiny networks throughout; a real `prfdn` subprocess wherever the exit code or the files left behind matter."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, make_video, run_prfdn
from prfdn_jax.checkpoint import FORMAT, WeightsError, flat_params, load_any, model_from_flat, save_model
from prfdn_jax.cli import main
from prfdn_jax.spec import default_arch
from prfdn_jax.state_dict import state_dict_from_flat_params
from prfdn_jax.train import random_init


def tiny(path, layout: str = "rfdn", times: float = 1.0):
    """A tiny x2 network (nf 8, one block) saved at ``path``, its output mostly inside [0, 255] (upsampler
    bias +128); every kernel multiplied by ``times``."""
    model = random_init(default_arch(layout, nf=8 if layout == "rfdn" else 4, scale=2, n_blocks=1))
    flat = {k: v * np.float32(times) if k.endswith(".kernel") else v for k, v in flat_params(model).items()}
    flat["upsampler.bias"] = flat["upsampler.bias"] + np.float32(128)
    model = model_from_flat(model.arch, flat)
    save_model(path, model)
    return model


def noise_png(path, h=20, w=24, seed=1):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(path)
    return path


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def assert_refused(p, *fragments):
    """Exit 1 and exactly one stderr line, ``prfdn: error: ...`` holding every fragment (no traceback)."""
    lines = error_lines(p.stderr)
    assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith("prfdn: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


# ----------------------------------------------------------------------------- 1. non-finite / integer weights
def _bad_state_dict(model, kind: str) -> dict:
    sd = state_dict_from_flat_params(flat_params(model), model.arch)
    if kind == "nan":
        sd["B1.c2_r.weight"] = sd["B1.c2_r.weight"].copy()
        sd["B1.c2_r.weight"].flat[3] = np.nan
    elif kind == "inf":
        sd["fea_conv.bias"] = np.full_like(sd["fea_conv.bias"], np.inf)
    elif kind == "bool":
        sd["upsampler.0.weight"] = sd["upsampler.0.weight"] > 0
    else:
        sd["LR_conv.weight"] = np.clip(sd["LR_conv.weight"] * 100, -127, 127).astype(np.int8)
    return sd


BAD = {"nan": ("B1.c2_r.weight", "holds 1 NaN value"), "inf": ("fea_conv.bias", "holds 8 infinite values"),
       "bool": ("upsampler.0.weight", "is bool, not floating point"),
       "int8": ("LR_conv.weight", "is int8, not floating point")}


@pytest.mark.parametrize("fmt", ["pth", "foreign.safetensors", "ours.safetensors"])
@pytest.mark.parametrize("kind", list(BAD))
def test_weight_loaders_refuse_non_finite_and_non_float_tensors(kind, fmt, tmp_path):
    from safetensors.numpy import save_file

    model = tiny(tmp_path / "good.safetensors")
    sd = _bad_state_dict(model, kind)
    path = tmp_path / f"bad.{fmt}"
    tensor, what = BAD[kind]
    if fmt == "pth":
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, path)
    elif fmt == "foreign.safetensors":
        save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(path))
    else:  # our model file: flat names, prfdn-jax metadata
        flat = flat_params(model)
        tensor = {"B1.c2_r.weight": "stages.0.c2_r.kernel", "fea_conv.bias": "fea.bias",
                  "upsampler.0.weight": "upsampler.kernel", "LR_conv.weight": "LR_conv.kernel"}[tensor]
        bad = {"nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 3, np.nan, a).astype(np.float32),
               "inf": lambda a: np.full_like(a, np.inf), "bool": lambda a: a > 0,
               "int8": lambda a: np.clip(a * 100, -127, 127).astype(np.int8)}[kind]
        flat[tensor] = bad(flat[tensor])
        save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, str(path),
                  {"format": FORMAT, "arch": model.arch.to_json()})
    with pytest.raises(WeightsError) as e:
        load_any(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: tensor {tensor!r} ") and what in msg and "\n" not in msg, msg


def test_nan_weight_refused_by_upscale_and_export(tmp_path):
    """Before: an all-black image with a warning, and NaN written into ONNX; exit 0 both times."""
    from safetensors.numpy import save_file

    sd = _bad_state_dict(tiny(tmp_path / "good.safetensors"), "nan")
    save_file({k: np.ascontiguousarray(v) for k, v in sd.items()}, str(tmp_path / "nan.safetensors"))
    noise_png(tmp_path / "in.png")
    p = run_prfdn("upscale", "in.png", "-o", "out.png", "--weights", "nan.safetensors", cwd=tmp_path)
    assert_refused(p, "nan.safetensors: tensor 'B1.c2_r.weight' holds 1 NaN value")
    p = run_prfdn("export", "--weights", "nan.safetensors", "--format", "onnx", "nan.onnx", cwd=tmp_path)
    assert_refused(p, "nan.safetensors: tensor 'B1.c2_r.weight' holds 1 NaN value")
    assert sorted(os.listdir(tmp_path)) == ["good.safetensors", "in.png", "nan.safetensors"]


def test_weights_that_overflow_are_refused_by_upscale_eval_export_and_video(tmp_path):
    """Kernels x1e30 are finite but overflow float32: before, an all-white image and exit 0."""
    tiny(tmp_path / "big.safetensors", times=1e30)
    noise_png(tmp_path / "in.png")
    (tmp_path / "set" / "HR").mkdir(parents=True)
    noise_png(tmp_path / "set" / "HR" / "a.png", 48, 40)
    before = sorted(os.listdir(tmp_path))
    p = run_prfdn("upscale", "in.png", "-o", "out.png", "--weights", "big.safetensors", cwd=tmp_path)
    assert_refused(p, "in.png: the network output is not finite (", "overflow float32; out.png not written")
    p = run_prfdn("eval", "--weights", "big.safetensors", "--data", "set", cwd=tmp_path)
    assert_refused(p, "a: the network output is not finite (")
    p = run_prfdn("export", "--weights", "big.safetensors", "--format", "safetensors", "e.safetensors", cwd=tmp_path)
    assert_refused(p, "the network output on a test image is not finite (", "e.safetensors not written")
    assert sorted(os.listdir(tmp_path)) == before
    pytest.importorskip("av")
    make_video(tmp_path / "in.mp4", seconds=1, audio=None)
    p = run_prfdn("upscale", "in.mp4", "-o", "out.mp4", "--weights", "big.safetensors", cwd=tmp_path)
    assert_refused(p, "in.mp4: upscaling a frame failed (the network output is not finite (")
    assert sorted(os.listdir(tmp_path)) == sorted(before + ["in.mp4"])


# ----------------------------------------------------------------------------- 2. outputs onto inputs
def test_export_reparam_prune_never_write_onto_their_input(tmp_path):
    """Before: `export --weights ck.pth --format torch ck.pth` and `reparam A A` replaced their input, exit 0."""
    torch = pytest.importorskip("torch")
    model = tiny(tmp_path / "rfdn.safetensors")
    torch.save({k: torch.from_numpy(v) for k, v in state_dict_from_flat_params(flat_params(model), model.arch).items()},
               tmp_path / "ck.pth")
    tiny(tmp_path / "A.safetensors", layout="b2s")
    os.symlink("A.safetensors", tmp_path / "link.safetensors")
    sums = {f: digest(tmp_path / f) for f in ("ck.pth", "A.safetensors")}
    p = run_prfdn("export", "--weights", "ck.pth", "--format", "torch", "ck.pth", "--overwrite", cwd=tmp_path)
    assert_refused(p, "ck.pth: is the input ck.pth; refusing to write onto an input, even with --overwrite")
    p = run_prfdn("reparam", "A.safetensors", "A.safetensors", cwd=tmp_path)
    assert_refused(p, "A.safetensors: is the input A.safetensors; refusing to write onto an input")
    p = run_prfdn("reparam", "link.safetensors", "./A.safetensors", "--overwrite", cwd=tmp_path)
    assert_refused(p, f"./A.safetensors: is the input link.safetensors (the same file: {tmp_path / 'A.safetensors'})")
    p = run_prfdn("prune", "A.safetensors", "sub/../link.safetensors", "--ratio", 0.5, "--importance", "magnitude",
                  "--overwrite", cwd=tmp_path)
    assert_refused(p, "sub/../link.safetensors: is the input A.safetensors")
    assert {f: digest(tmp_path / f) for f in sums} == sums
    assert sorted(os.listdir(tmp_path)) == ["A.safetensors", "ck.pth", "link.safetensors", "rfdn.safetensors"]


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path):
    tiny(tmp_path / "m.safetensors")
    (tmp_path / "out.safetensors").write_bytes(b"keep me")
    p = run_prfdn("export", "--weights", "m.safetensors", "--format", "safetensors", "out.safetensors", cwd=tmp_path)
    assert_refused(p, "out.safetensors: exists (add --overwrite to replace it)")
    assert (tmp_path / "out.safetensors").read_bytes() == b"keep me"
    (tmp_path / "imgs").mkdir()
    noise_png(tmp_path / "imgs" / "a.png", 64, 64)
    (tmp_path / "p.array_record").write_bytes(b"keep me")
    p = run_prfdn("prepare", "imgs", "--out", "p.array_record", "--scale", 2, "--sub-size", 32, "--step", 32,
                  cwd=tmp_path)
    assert_refused(p, "p.array_record: exists (add --overwrite to replace it)")
    assert (tmp_path / "p.array_record").read_bytes() == b"keep me"
    p = run_prfdn("export", "--weights", "m.safetensors", "--format", "safetensors", "out.safetensors", "--overwrite",
                  cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert load_any(tmp_path / "out.safetensors").arch == load_any(tmp_path / "m.safetensors").arch


# ----------------------------------------------------------------------------- 12. verify
def test_verify_reports_a_nan_onnx_output_and_prints_valid_json(tmp_path):
    """Before: 'OK/FAILED: largest difference 0.000275' and a bare NaN in the --json line."""
    pytest.importorskip("torch")
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from prfdn_jax.export import export

    model = tiny(tmp_path / "m.safetensors")
    export(model, "onnx", tmp_path / "m.onnx")
    m = onnx.load(tmp_path / "m.onnx")
    init = m.graph.initializer[0]
    w = numpy_helper.to_array(init).copy()
    w.flat[0] = np.nan
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(m, tmp_path / "nan.onnx")
    p = run_prfdn("verify", "--weights", "m.safetensors", "--onnx", "nan.onnx", "--json", cwd=tmp_path)
    assert_refused(p, "m.safetensors: the onnx output holds NaN or Inf")
    lines = p.stdout.strip().splitlines()
    verdict = lines[-2]
    assert verdict.startswith("FAILED: onnx output not finite") and "largest difference" not in verdict, verdict
    assert verdict.count("64x64") == 1, verdict  # the size once
    res = json.loads(lines[-1], parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    by = {(c["a"], c["b"]): c for c in res["comparisons"]}
    assert res["ok"] is False and by["jax", "onnx"]["max_abs"] is None and by["jax", "onnx"]["nonfinite"]["onnx"] > 0
    assert by["jax", "torch"]["max_abs"] < 1e-2


def test_verify_tolerance_is_relative_to_the_output_range(tmp_path):
    """rfdn-x4 on a checkerboard returns values near 8000, where the float32 difference is ~1: before, a
    false FAILED against the absolute 0.01."""
    pytest.importorskip("torch")
    img = np.full((64, 64, 3), 255, np.uint8)
    img[::2, ::2] = img[1::2, 1::2] = 0
    Image.fromarray(img).save(tmp_path / "checker.png")
    p = run_prfdn("verify", "--model", "rfdn-x4", "--image", "checker.png", "--json", cwd=tmp_path)
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 0 and res["ok"], p.stdout + p.stderr
    assert res["output_range"] > 10000 and res["allowed"] == pytest.approx(0.01 + 5e-4 * res["output_range"])
    assert max(c["max_abs"] for c in res["comparisons"]) > 0.01  # what the absolute tolerance alone refused
    assert p.stdout.strip().splitlines()[-2].endswith("on checker.png (64x64)")
    p = run_prfdn("verify", "--model", "rfdn-x4", "--image", "checker.png", "--rtol", 0, cwd=tmp_path)
    assert p.returncode == 1 and "FAILED" in p.stdout


# ----------------------------------------------------------------------------- 13. messages
def test_a_symlink_loop_is_named(tmp_path, capsys):
    os.symlink("loop2", tmp_path / "loop1")
    os.symlink("loop1", tmp_path / "loop2")
    os.symlink("nowhere.pth", tmp_path / "dangling.pth")
    noise_png(tmp_path / "in.png")
    for argv, name in ((["upscale", tmp_path / "in.png", "-o", tmp_path / "o.png", "--weights", tmp_path / "loop1"], "loop1"),
                       (["upscale", tmp_path / "loop2", "-o", tmp_path / "o.png"], "loop2")):
        assert main([str(a) for a in argv]) == 1
        assert capsys.readouterr().err == f"prfdn: error: {tmp_path / name}: symlink loop (too many levels of symbolic links)\n"
    with pytest.raises(WeightsError, match="dangling.pth: broken symlink \\(it points to nowhere.pth"):
        load_any(tmp_path / "dangling.pth")


def test_a_safetensors_file_named_bin_is_read_as_safetensors(tmp_path):
    """Before: a header bomb named .bin was blamed on 'pickled objects'."""
    from safetensors.numpy import save_file

    bomb = tmp_path / "bomb.bin"
    bomb.write_bytes((10 ** 12).to_bytes(8, "little") + b'{"a": 1}')
    with pytest.raises(WeightsError) as e:
        load_any(bomb)
    assert str(e.value).startswith(f"{bomb}: not a readable safetensors file (") and "pickle" not in str(e.value)
    model = tiny(tmp_path / "m.safetensors")
    sd = state_dict_from_flat_params(flat_params(model), model.arch)
    save_file(sd, str(tmp_path / "foreign.bin"))
    assert load_any(tmp_path / "foreign.bin").arch.w == model.arch.w
    (tmp_path / "junk.bin").write_bytes(b"hello world, not weights")
    with pytest.raises(WeightsError, match="junk.bin: not a weights file"):
        load_any(tmp_path / "junk.bin")


# ----------------------------------------------------------------------------- 16. [0, 1] exports
def test_export_range_01_output_times_255_equals_upscale(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from converters.export_torch import load_reference, torch_forward
    from prfdn_jax.export import run_onnx

    tiny(tmp_path / "m.safetensors")
    noise_png(tmp_path / "in.png")
    assert run_prfdn("upscale", "in.png", "-o", "up.png", "--weights", "m.safetensors", cwd=tmp_path).returncode == 0
    for fmt, out in (("torch", "m01.pth"), ("onnx", "m01.onnx")):
        p = run_prfdn("export", "--weights", "m.safetensors", "--format", fmt, "--range", "01", out, cwd=tmp_path)
        assert p.returncode == 0 and "RGB in and out in [0, 1]" in p.stdout, p.stderr
    p = run_prfdn("export", "--weights", "m.safetensors", "--format", "safetensors", "--range", "01", "x.safetensors",
                  cwd=tmp_path)
    assert_refused(p, "--range 01 is for --format torch and onnx")
    up = np.asarray(Image.open(tmp_path / "up.png")).astype(int)
    assert 0.2 < (up > 0).mean() and (up < 255).mean() > 0.2  # mostly inside [0, 255]: a real comparison
    x = np.asarray(Image.open(tmp_path / "in.png"), np.float32)[None] / 255
    for name, y in (("torch", torch_forward(load_reference(tmp_path / "m01.pth"), x)),
                    ("onnx", run_onnx(tmp_path / "m01.onnx", x))):
        assert np.abs(y).max() < 2, name  # [0, 1]-scaled
        got = np.clip(np.rint(y[0] * 255), 0, 255).astype(int)
        assert np.abs(got - up).max() <= 1, name


def test_export_help_states_the_value_range():
    p = run_prfdn("export", "--help")
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and "[0, 255]" in text and "--range {255,01}" in text
