"""The `prfdn` command: reference PSNRs, upscale behaviour, and one-line errors on bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, shared_path
from prfdn_jax.cli import main


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def assert_one_line_error(code, err, *fragments):
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("prfdn: error: "), err
    assert "Traceback" not in err
    for f in fragments:
        assert f in lines[0], lines[0]


# ----------------------------------------------------------------------------- the parser
def test_the_parser_is_built_from_the_command_modules(capsys):
    """One module per command in prfdn_jax/commands/, each with HELP, add_arguments and run; all in --help."""
    from prfdn_jax import cli

    found = {p.stem for p in (ROOT / "prfdn_jax" / "commands").glob("*.py")} - {"__init__", "common"}
    assert found == set(cli.COMMANDS)
    for name in cli.COMMANDS:
        m = cli.command_module(name)
        assert callable(m.add_arguments) and callable(m.run) and m.HELP and "\n" not in m.HELP, name
    code, out, _ = run(["--help"], capsys)
    at = [out.find(f"\n    {name} ") for name in cli.COMMANDS]
    assert code == 0 and min(at) > 0 and at == sorted(at), out  # every command, in COMMANDS order
    sub = next(a for a in cli.build_parser()._actions if isinstance(a.choices, dict))
    assert all(sub.choices[name].get_default("func") is cli.command_module(name).run for name in cli.COMMANDS)


def test_help_imports_no_heavy_module():
    """`prfdn --help` and `prfdn train --help` build the parser without flax, grain or torch (fast)."""
    for argv in (["--help"], ["train", "--help"], ["models", "--help"]):
        code = ("import sys; from prfdn_jax.cli import main; rc = main(sys.argv[1:]); "
                "print(sorted(m for m in ('flax', 'grain', 'torch') if m in sys.modules))")
        p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and p.stdout.strip().splitlines()[-1] == "[]", (argv, p.stdout[-300:], p.stderr)


# ----------------------------------------------------------------------------- reference figures
@pytest.mark.slow
@pytest.mark.parametrize("model,scale,dataset,psnr_y", [
    ("prfdn-x2", 2, "Set5", 36.64), ("prfdn-x3", 3, "Set5", 33.46), ("rfdn-x4", 4, "Set5", 32.16),
    ("prfdn-x2", 2, "Set14", 32.47), ("prfdn-x3", 3, "Set14", 29.79), ("rfdn-x4", 4, "Set14", 28.65),
    ("prfdn-x4", 4, "Set5", 31.56), ("prfdn-x4", 4, "Set14", 28.15),
])
def test_eval_reproduces_released_psnr(model, scale, dataset, psnr_y, capsys):
    code, out, _ = run(["eval", "--model", model, "--data", shared_path("data", dataset), "--scale", scale,
                        "--json"], capsys)
    res = last_json(out)
    assert code == 0 and res["model"] == model and res["scale"] == scale
    assert set(res) >= {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "images", "model", "scale"}
    assert abs(res["psnr_y"] - psnr_y) <= 0.01, res


@pytest.mark.slow
def test_branch_checkpoint_eval_and_reparam(tmp_path, capsys):
    pth = shared_path("weights", "rfdnb4s_branch_x4.pth")
    data = shared_path("data", "Set5")
    code, out, _ = run(["eval", "--weights", pth, "--data", data, "--scale", 4, "--json"], capsys)
    assert code == 0 and abs(last_json(out)["psnr_y"] - 31.89) <= 0.01
    wide = tmp_path / "wide.safetensors"
    code, out, _ = run(["reparam", pth, wide], capsys)
    assert code == 0, out
    diff = float(out.split("max relative output difference")[1].split()[0])
    assert diff <= 1e-4
    code, out, _ = run(["eval", "--weights", wide, "--data", data, "--scale", 4, "--json"], capsys)
    assert code == 0 and abs(last_json(out)["psnr_y"] - 31.89) <= 0.01
    code, out, _ = run(["models", "--weights", wide, "--json"], capsys)
    info = last_json(out)
    assert info["params"] == 570548 and info["scale"] == 4 and info["form"] == "wide"
    code, out, _ = run(["upscale", shared_path("data", "Set5", "LR_bicubic", "X4", "birdx4.png"), "-o",
                        tmp_path / "bird.png", "--weights", wide], capsys)
    assert code == 0 and Image.open(tmp_path / "bird.png").size == (288, 288)


def test_eval_makes_missing_lr_with_matlab_bicubic(tmp_path, capsys):
    import shutil

    made, shipped = tmp_path / "made", tmp_path / "shipped"
    for d in (made, shipped):
        (d / "HR").mkdir(parents=True)
        shutil.copy(shared_path("data", "Set5", "HR", "bird.png"), d / "HR")
    (shipped / "LR_bicubic" / "X2").mkdir(parents=True)
    shutil.copy(shared_path("data", "Set5", "LR_bicubic", "X2", "birdx2.png"), shipped / "LR_bicubic" / "X2")
    code, out, _ = run(["eval", "--model", "prfdn-x2", "--data", made, "--json"], capsys)
    code2, out2, _ = run(["eval", "--model", "prfdn-x2", "--data", shipped, "--json"], capsys)
    # the shipped LR is MATLAB-bicubic, so making it from HR gives exactly the same result
    assert code == code2 == 0 and last_json(out)["images"] == 1
    assert last_json(out)["psnr_y"] == last_json(out2)["psnr_y"]


def test_models_lists_builtins_with_macs(capsys):
    code, out, _ = run(["models", "--json"], capsys)
    rows = {r["name"]: r for r in last_json(out)}
    assert code == 0 and set(rows) == {"prfdn-x2", "prfdn-x3", "prfdn-x4", "rfdn-x4"}
    assert rows["prfdn-x4"]["size_4k"] == "540x960" and rows["prfdn-x4"]["gmac_4k"] <= 58.5
    assert rows["prfdn-x2"]["params"] == 29851 and round(rows["prfdn-x2"]["gmac_1080p"], 2) == 58.55
    assert rows["prfdn-x3"]["params"] == 62905 and rows["rfdn-x4"]["params"] == 433448


def test_models_weights_pth(capsys):
    code, out, _ = run(["models", "--weights", shared_path("weights", "prfdn_x3_pruned.pth"), "--json"], capsys)
    info = last_json(out)
    assert code == 0 and info["params"] == 62905 and info["scale"] == 3


# ----------------------------------------------------------------------------- upscale
def test_upscale_one_image_default_model(tmp_path, capsys):
    out = tmp_path / "sub" / "out.png"
    code, stdout, _ = run(["upscale", ROOT / "examples" / "butterfly_lr.png", "-o", out], capsys)
    assert code == 0 and Image.open(out).size == (256, 256) and "prfdn-x2" in stdout


def test_upscale_scale_picks_builtin(tmp_path, capsys):
    src = shared_path("data", "Set5", "LR_bicubic", "X3", "birdx3.png")
    code, _, _ = run(["upscale", src, "-o", tmp_path / "o.png", "--scale", 3], capsys)
    assert code == 0 and Image.open(tmp_path / "o.png").size == (288, 288)


def test_upscale_folder_and_several_inputs(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 24, 3), np.uint8)).save(src / f"{name}.png")
    code, out, _ = run(["upscale", src, "-o", tmp_path / "out"], capsys)
    assert code == 0 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png"]
    code, out, _ = run(["upscale", src / "a.png", src / "b.png", "-o", tmp_path / "out2"], capsys)
    assert code == 0 and len(list((tmp_path / "out2").iterdir())) == 2


def test_upscale_grayscale_and_rgba(tmp_path, capsys):
    gray = tmp_path / "g.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 22), np.uint8), "L").save(gray)
    code, _, err = run(["upscale", gray, "-o", tmp_path / "g2.png"], capsys)
    assert code == 0 and Image.open(tmp_path / "g2.png").mode == "L" and "grayscale" in err
    rgba = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (20, 22, 4), np.uint8), "RGBA").save(rgba)
    code, _, err = run(["upscale", rgba, "-o", tmp_path / "a2.png"], capsys)
    im = Image.open(tmp_path / "a2.png")
    assert code == 0 and im.mode == "RGBA" and im.size == (44, 40) and "alpha" in err


# ----------------------------------------------------------------------------- bad input
def test_missing_file(tmp_path, capsys):
    code, _, err = run(["upscale", tmp_path / "nope.png", "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, "nope.png")
    assert not (tmp_path / "o.png").exists()


def test_text_file_named_png(tmp_path, capsys):
    (tmp_path / "t.png").write_text("not an image")
    code, _, err = run(["upscale", tmp_path / "t.png", "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, "t.png")
    assert list(tmp_path.iterdir()) == [tmp_path / "t.png"]


def test_truncated_png(tmp_path, capsys):
    full = tmp_path / "full.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(full)
    (tmp_path / "cut.png").write_bytes(full.read_bytes()[:2000])
    code, _, err = run(["upscale", tmp_path / "cut.png", "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, "cut.png")
    assert not (tmp_path / "o.png").exists()


def test_image_under_15_px(tmp_path, capsys):
    Image.fromarray(np.zeros((14, 40, 3), np.uint8)).save(tmp_path / "small.png")
    code, _, err = run(["upscale", tmp_path / "small.png", "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, "15x15")
    assert not (tmp_path / "o.png").exists()


def test_unknown_model(tmp_path, capsys):
    code, _, err = run(["upscale", ROOT / "examples" / "butterfly_lr.png", "-o", tmp_path / "o.png",
                        "--model", "nope-x9"], capsys)
    assert_one_line_error(code, err, "unknown model 'nope-x9'", "prfdn-x2")
    assert not (tmp_path / "o.png").exists()


def test_pth_not_a_state_dict(tmp_path, capsys):
    import torch

    torch.save([1, 2, 3], tmp_path / "list.pth")
    code, _, err = run(["eval", "--weights", tmp_path / "list.pth", "--data", tmp_path], capsys)
    assert_one_line_error(code, err, "not a PyTorch state dict")


def test_pth_wrong_keys(tmp_path, capsys):
    import torch

    sd = torch.load(shared_path("weights", "prfdn_x2_pruned.pth"), weights_only=True)
    sd["B1234.c9_x.weight"] = sd.pop("B1234.c4.weight")
    torch.save(sd, tmp_path / "bad.pth")
    code, _, err = run(["upscale", ROOT / "examples" / "butterfly_lr.png", "-o", tmp_path / "o.png",
                        "--weights", tmp_path / "bad.pth"], capsys)
    assert_one_line_error(code, err, "B1234.c4.weight")
    assert not (tmp_path / "o.png").exists()


def test_scale_mismatch(tmp_path, capsys):
    code, _, err = run(["upscale", ROOT / "examples" / "butterfly_lr.png", "-o", tmp_path / "o.png",
                        "--model", "prfdn-x3", "--scale", 2], capsys)
    assert_one_line_error(code, err, "x3 model", "--scale 2")


def test_real_process_has_no_traceback(tmp_path):
    """The installed entry point: one line on stderr, non-zero exit, nothing written."""
    (tmp_path / "t.png").write_text("not an image")
    p = subprocess.run([sys.executable, "-m", "prfdn_jax.cli", "upscale", str(tmp_path / "t.png"), "-o",
                        str(tmp_path / "o.png")], capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


@pytest.mark.slow
def test_reparam_prune_eval_chain(tmp_path, capsys):
    """Issue 5's acceptance: reparam the B4S checkpoint, prune 0.5 in 2 steps, the result loads everywhere."""
    wide, pruned = tmp_path / "W.safetensors", tmp_path / "P.safetensors"
    assert run(["reparam", shared_path("weights", "rfdnb4s_branch_x4.pth"), wide], capsys)[0] == 0
    code, out, _ = run(["prune", wide, pruned, "--ratio", 0.5, "--steps", 2, "--importance", "magnitude",
                        "--size", "64x64"], capsys)
    assert code == 0 and "quality is not recovered" in out
    before, after = (int(s.replace(",", "")) for s in out.split("parameters ")[1].split(" (")[0].split(" -> "))
    assert after <= 0.6 * before
    code, out, _ = run(["models", "--weights", pruned, "--json"], capsys)
    assert code == 0 and last_json(out)["params"] == after and last_json(out)["form"] == "wide"
    data = tmp_path / "data"
    (data / "HR").mkdir(parents=True)
    Image.open(shared_path("data", "Set5", "HR", "bird.png")).save(data / "HR" / "bird.png")
    code, out, _ = run(["eval", "--weights", pruned, "--data", data, "--json"], capsys)
    assert code == 0 and last_json(out)["images"] == 1


def test_prune_flag_errors(tmp_path, capsys):
    code, _, err = run(["prune", shared_path("weights", "prfdn_x2_pruned.pth"), tmp_path / "p.safetensors",
                        "--ratio", 0.5, "--uniform", "--importance", "magnitude"], capsys)
    assert_one_line_error(code, err, "merged network")
    code, _, err = run(["prune", shared_path("weights", "prfdn_x2_pruned.pth"), tmp_path / "p.safetensors",
                        "--ratio", 1.5], capsys)
    assert_one_line_error(code, err, "--ratio")
    assert not (tmp_path / "p.safetensors").exists()
