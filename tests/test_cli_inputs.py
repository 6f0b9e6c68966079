"""The `prfdn` command on bad or unusual input: every option checked first, one line per error, no silent
surprises (issue "Reliability": automatic tiles, prune finetuning defaults, wrong outputs, internal errors,
output paths, messages, help)."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, shared_path
from prfdn_jax import inference, registry
from prfdn_jax.cli import build_parser, main
from prfdn_jax.commands import common, upscale

BUTTERFLY = ROOT / "examples" / "butterfly_lr.png"


def run(args, capsys):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("prfdn: error: "), err
    for f in fragments:
        assert f in lines[0], lines[0]


def noise(path, h=40, w=48, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), np.uint8)).save(path)
    return path


def prfdn(*args, cwd=None, timeout=600, pre=""):
    code = f"import sys; {pre}from prfdn_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture
def no_model(monkeypatch):
    """Fail if a command gets as far as loading a network (its input checks must come first)."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the options were checked")
    monkeypatch.setattr(upscale, "resolve_model", refuse)


# ----------------------------------------------------------------------------- 1. automatic tiles
def test_tile_choice_follows_image_model_and_budget():
    x2, x4 = registry.load("prfdn-x2").arch, registry.load("rfdn-x4").arch
    assert inference.choose_tile(x2, 480, 640, 2e9) == 0  # fits whole
    t2 = inference.choose_tile(x2, 4000, 6000, 2e9)
    t4 = inference.choose_tile(x4, 4000, 6000, 4e9)
    assert inference.MIN_AUTO_TILE <= t4 < t2 < 4000 and t2 % 16 == 0
    assert inference.peak_bytes(x2, 4000, 6000, t2)[0] <= 2e9 < inference.peak_bytes(x2, 4000, 6000, t2 + 16)[0]
    with pytest.raises(MemoryError, match="even in 64x64 tiles"):
        inference.choose_tile(x2, 4000, 6000, 0.7e9)
    assert 1.0 <= inference.default_budget_gb() <= 2.0


def test_upscale_tiles_large_images_automatically_with_a_note(tmp_path, capsys):
    from prfdn_jax.deploy import deploy

    src = noise(tmp_path / "in.png", 300, 400)
    arch = registry.load("prfdn-x2").arch
    budget = round(inference.peak_bytes(arch, 300, 400, 96)[0] / 1e9, 4)  # fits 96 px tiles, not the whole image
    tile = inference.choose_tile(arch, 300, 400, budget * 1e9)
    code, _, err = run(["upscale", src, "-o", tmp_path / "o.png", "--memory-budget", budget], capsys)
    assert code == 0 and 96 <= tile < 300
    assert f"note: {src} is 400x300: upscaling in {tile}x{tile} tiles to stay within {budget:g} GB" in err
    want = inference.upscale_array(deploy(registry.load("prfdn-x2")), np.asarray(Image.open(src)), 2, tile=tile)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "o.png")), want)
    code, _, err = run(["upscale", src, "-o", tmp_path / "w.png", "--memory-budget", budget, "--tile", 400], capsys)
    assert code == 0 and "tiles" not in err  # an explicit --tile wins


def test_eval_tiles_images_over_the_budget(tmp_path, capsys):
    import json

    (tmp_path / "HR").mkdir()
    Image.open(shared_path("data", "Set5", "HR", "baby.png")).save(tmp_path / "HR" / "baby.png")  # LR 256x256
    arch = registry.load("prfdn-x2").arch
    budget = round(inference.peak_bytes(arch, 256, 256, 80)[0] / 1e9, 4)
    tile = inference.choose_tile(arch, 256, 256, budget * 1e9)
    code, out, err = run(["eval", "--model", "prfdn-x2", "--data", tmp_path, "--json", "--memory-budget", budget], capsys)
    assert code == 0 and 80 <= tile < 256 and f"note: baby is 256x256: upscaling in {tile}x{tile} tiles" in err
    code, out2, err2 = run(["eval", "--model", "prfdn-x2", "--data", tmp_path, "--json"], capsys)
    assert code == 0 and "tiles" not in err2
    tiled, whole = (json.loads(o.strip().splitlines()[-1])["psnr_y"] for o in (out, out2))
    assert tiled != whole and abs(tiled - whole) < 0.1


def test_out_of_memory_is_one_line_with_a_hint(tmp_path, capsys, monkeypatch):
    def oom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(inference, "upscale_array", oom)
    code, _, err = run(["upscale", BUTTERFLY, "-o", tmp_path / "o.png", "--tile", 64], capsys)
    assert_one_line_error(code, err, "out of memory; try --tile PX or a lower --memory-budget")


def test_row_strips_blend_exactly_like_a_full_size_buffer():
    """Tiles accumulate one row at a time into the uint8 output: the same values as one float buffer."""
    def op(t):  # not local: each tile's mean leaks into every pixel, like ESA's attention
        t = np.asarray(t, np.float32)
        return np.repeat(np.repeat(t, 3, 1), 3, 2) * 0.8 + t.mean(axis=(1, 2, 3), keepdims=True) * 0.2

    img = np.random.default_rng(0).integers(0, 256, (83, 101, 3)).astype(np.uint8)
    for tile, overlap in ((32, 8), (40, 0), (30, 20)):
        h, w = img.shape[:2]
        ys, xs = inference.tile_starts(h, tile, overlap), inference.tile_starts(w, tile, overlap)
        acc, wsum = np.zeros((3 * h, 3 * w, 3), np.float32), np.zeros((3 * h, 3 * w, 1), np.float32)
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                wt = (inference._ramp(h, ys, tile, i, 3)[:, None] * inference._ramp(w, xs, tile, j, 3)[None])[..., None]
                acc[3 * y:3 * (y + tile), 3 * x:3 * (x + tile)] += op(img[None, y:y + tile, x:x + tile])[0] * wt
                wsum[3 * y:3 * (y + tile), 3 * x:3 * (x + tile)] += wt
        seen = []
        got = inference.upscale_array(op, img, 3, tile=tile, overlap=overlap, progress=lambda d, t: seen.append((d, t)))
        np.testing.assert_array_equal(got, np.clip(np.rint(acc / wsum), 0, 255).astype(np.uint8))
        assert seen[-1] == (len(ys) * len(xs),) * 2


def test_tile_progress_bar_only_for_many_tiles(monkeypatch):
    import io

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    bar = upscale._TileBar("x")
    bar(4, 8)
    assert bar.bar is None  # 8 tiles: no bar
    bar(4, 20)
    bar(20, 20)
    assert bar.bar is not None and bar.bar.n == 20 and "/20 [" in term.getvalue()
    bar.close()


# ----------------------------------------------------------------------------- 4. prune options
@pytest.fixture
def tiny_x3(tmp_path):
    pytest.importorskip("torch_pruning")
    from prfdn_jax.checkpoint import save_model
    from prfdn_jax.spec import default_arch
    from prfdn_jax.train import random_init

    return save_model(tmp_path / "tiny3.safetensors", random_init(default_arch("rfdn", nf=8, scale=3, n_blocks=1)))


def test_prune_checks_every_option_before_pruning(tmp_path, tiny_x3, capsys, monkeypatch):
    import prfdn_jax.prune

    monkeypatch.setattr(prfdn_jax.prune, "prune_model", lambda *a, **k: pytest.fail("pruning started"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "small").mkdir()
    noise(tmp_path / "small" / "s.png", 40, 40)  # below the 72 px x3 finetuning patch
    dst = tmp_path / "p.safetensors"
    base = ["prune", tiny_x3, dst, "--ratio", 0.5]
    cases = [
        (["--steps", 0], "--steps must be >= 1"),
        (["--finetune-steps", -1], "--finetune-steps must be >= 0"),
        (["--finetune-steps", 2], "needs --data"),
        (["--config", "x.py"], "--config is for finetuning: add --finetune-steps"),
        ([], "or choose --importance magnitude"),  # Taylor, the default, needs a calibration batch
        (["--importance", "magnitude", "--size", "12"], "expected HEIGHTxWIDTH"),
        (["--importance", "magnitude", "--target-gmac", "0"], "--target-gmac must be > 0"),
        (["--finetune-steps", 2, "--data", tmp_path / "nope"], "no such folder"),
        (["--finetune-steps", 2, "--data", tmp_path / "empty"], "holds no images"),
        (["--finetune-steps", 2, "--data", tmp_path / "small"], "no image of at least 72x72"),
        (["--finetune-steps", 2, "--data", tmp_path / "small", "--config", "nope.py"], "no such config file"),
        (["--val", tmp_path / "nope"], "--val"),
        (["--val", tmp_path / "empty"], "no HR/ folder"),
    ]
    for extra, msg in cases:
        code, _, err = run(base + extra, capsys)
        assert_one_line_error(code, err, msg)
    code, _, err = run(["prune", registry.info("rfdn-x4").path, dst, "--ratio", 0.5, "--finetune-steps", 1, "--data",
                        tmp_path / "small", "--config", "prfdn_jax.configs.smoke_x2"], capsys)
    assert_one_line_error(code, err, "LR patch 12 is below 15", "x4")  # a given config is not adapted
    code, _, err = run(base[:2] + [dst, "--importance", "magnitude"], capsys)
    assert_one_line_error(code, err, "give --ratio R, or a budget")
    code, _, err = run(base[:2] + [tmp_path / "p.pth", "--ratio", 0.5, "--importance", "magnitude"], capsys)
    assert_one_line_error(code, err, "use a .safetensors name")
    assert not dst.exists() and not (tmp_path / "p.pth").exists()


@pytest.mark.slow
def test_prune_finetunes_from_any_folder_at_x3(tmp_path, tiny_x3):
    """The default finetuning config (a module) works outside the project, patch derived from the scale."""
    data = tmp_path / "data"
    data.mkdir()
    Image.open(shared_path("data", "Set5", "HR", "bird.png")).save(data / "bird.png")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    p = prfdn("prune", tiny_x3, "out.safetensors", "--ratio", 0.25, "--finetune-steps", 1, "--data", data, cwd=cwd)
    assert p.returncode == 0, p.stderr
    assert (cwd / "out.safetensors").exists() and "quality is not recovered" not in p.stdout


# ----------------------------------------------------------------------------- 5. silently wrong output
def test_32bit_integer_image_is_not_darkened(tmp_path, capsys):
    v = np.random.default_rng(0).integers(0, 256, (40, 48)).astype(np.int32)
    Image.fromarray(v, "I").save(tmp_path / "i.tif")
    code, _, err = run(["upscale", tmp_path / "i.tif", "-o", tmp_path / "o.png"], capsys)
    out = np.asarray(Image.open(tmp_path / "o.png"), np.float64)
    assert code == 0 and abs(out.mean() - v.mean()) < 8 and "16-bit" not in err and "used as 8-bit" in err
    Image.fromarray(np.full((40, 48), 1 << 20, np.int32), "I").save(tmp_path / "w.tif")
    code, _, err = run(["upscale", tmp_path / "w.tif", "-o", tmp_path / "w.png"], capsys)
    assert_one_line_error(code, err, "w.tif", "outside 0..65535")
    assert not (tmp_path / "w.png").exists()


@pytest.mark.parametrize("extra, msg", [
    (["--tile", -5], "--tile -5: a tile needs at least 15 px"),
    (["--tile", 10], "--tile 10: a tile needs at least 15 px"),
    (["--overlap", -4], "--overlap -4"),
    (["--tile", 32, "--overlap", 32], "--overlap 32: need 0 <= overlap < tile (32)"),
    (["--memory-budget", 0], "--memory-budget must be more than 0 GB"),
])
def test_tile_options_refused_not_adjusted(extra, msg, tmp_path, capsys, no_model):
    code, _, err = run(["upscale", BUTTERFLY, "-o", tmp_path / "o.png", *extra], capsys)
    assert_one_line_error(code, err, msg)
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("name, msg", [("out.pth", "use a .safetensors name (for a PyTorch .pth, run prfdn export"),
                                       ("out.pt", "use a .safetensors name"),
                                       ("out.bin", "unknown model file extension '.bin'"),
                                       ("out", "unknown model file extension '(none)'")])
def test_reparam_output_format_from_extension(name, msg, tmp_path, capsys):
    code, _, err = run(["reparam", tmp_path / "missing.pth", tmp_path / name], capsys)
    assert_one_line_error(code, err, msg)  # checked before the source is even read
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- 6. internal errors that are bad input
@pytest.mark.parametrize("kv, msg", [("lr=abc", "lr must be a number, got 'abc'"),
                                     ("steps=1.5", "steps must be an integer"),
                                     ("augment=yes", "augment must be True or False"),
                                     ("milestones=0.5", "milestones must be a tuple"),
                                     ("impl=3", "impl must be a string or None")])
def test_train_set_values_checked_against_field_types(kv, msg, tmp_path, capsys):
    code, _, err = run(["train", "prfdn_jax.configs.smoke_x2", "--workdir", tmp_path / "w", "--set", kv], capsys)
    assert_one_line_error(code, err, f"bad --set '{kv}'", msg)
    assert not (tmp_path / "w").exists()


def test_set_values_that_fit_are_converted():
    from prfdn_jax.config import load_config, override

    c = override(load_config("prfdn_jax.configs.smoke_x2"), ["lr=1", "data_dirs=/x", "impl=None", "milestones=[0.5]"])
    assert c.lr == 1.0 and isinstance(c.lr, float) and c.data_dirs == ("/x",) and c.impl is None
    assert c.milestones == (0.5,)


@pytest.mark.parametrize("kv, msg", [("seed=-1", "seed must be >= 0, got -1"),
                                     ("workers=-1", "workers must be >= 0, got -1")])
def test_train_set_values_checked_against_field_ranges(kv, msg, tmp_path, capsys):
    code, _, err = run(["train", "prfdn_jax.configs.smoke_x2", "--workdir", tmp_path / "w", "--set", kv], capsys)
    assert_one_line_error(code, err, msg)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("name", ["this", "os.path", "experiments.smoke_x2", "prfdn_jax.configs._recipe",
                                  "prfdn_jax.configs.nope", "prfdn_jax.cli:main"])
def test_train_config_is_a_file_or_a_packaged_config(name, tmp_path, capsys):
    """A config name that is not a file is looked up in prfdn_jax.configs only: no other module is imported."""
    before = set(sys.modules)
    code, _, err = run(["train", name, "--workdir", tmp_path / "w"], capsys)
    assert_one_line_error(code, err, f"{name.split(':')[0]}: not a config file or a packaged config "
                                     "(prfdn_jax.configs.NAME; packaged: ")
    assert "smoke_x2" in err and "_recipe" not in err.split("packaged: ")[1]
    assert "this" not in set(sys.modules) - before  # `import this` prints the Zen of Python


@pytest.mark.parametrize("argv, msg", [
    (["upscale", BUTTERFLY, "-o", "{tmp}/o.png", "--model", "nosuch"], "unknown model 'nosuch'; built-in models: "),
    (["eval", "--model", "nosuch", "--data", "{tmp}"], "unknown model 'nosuch'"),
    (["bench", "--model", "nosuch", "--backend", "jax"], "unknown model 'nosuch'"),
    (["bench", "--size", "10", "--backend", "jax"], "--size '10': expected HxW"),
    (["bench", "paths", "--size", "10"], "--size '10'"),
    (["bench", "paths", "--model", "prfdn-x2"], "--model: an option of `prfdn bench`, not of `prfdn bench paths`"),
    (["bench", "--nf", "8", "--backend", "jax"], "--nf: an option of `prfdn bench paths` only"),
    (["bench", "paths", "--repeats", "0"], "--repeats must be >= 1"),
    (["bench", "--backend", "jax", "--torch-modes", "eager"], "--torch-modes needs --backend torch or both"),
    (["train", "prfdn_jax.configs.smoke_x2", "--workdir", "{tmp}/w", "--stage", "rfdn"], "--stage is for pipeline configs"),
    (["train", "prfdn_jax.configs.smoke_x2", "--workdir", "{tmp}/w", "--init", "{tmp}/nope.pth"], "--init"),
    (["train", "prfdn_jax.configs.smoke_x2", "--workdir", str(ROOT / "README.md")], "exists and is not a folder"),
    (["train", "prfdn_jax.configs.smoke_x2", "--workdir", "{tmp}/w", "--val", "{tmp}/nope"], "--val"),
    (["pipeline", "prfdn_jax.configs.prfdn_x2", "--workdir", str(ROOT / "README.md")], "exists and is not a folder"),
])
def test_every_option_is_one_line(argv, msg, tmp_path, capsys):
    code, _, err = run([a.format(tmp=tmp_path) if isinstance(a, str) else a for a in argv], capsys)
    assert_one_line_error(code, err, msg)


# ----------------------------------------------------------------------------- 7. output paths
def test_several_inputs_need_a_folder_name(tmp_path, capsys, no_model):
    a, b = noise(tmp_path / "a.png"), noise(tmp_path / "b.png", seed=1)
    code, _, err = run(["upscale", a, b, "-o", tmp_path / "x.png"], capsys)
    assert_one_line_error(code, err, "x.png: 2 images need an output folder", "without an image extension")
    assert not (tmp_path / "x.png").exists()


def test_output_equal_to_an_input_needs_overwrite(tmp_path, capsys):
    a = noise(tmp_path / "a.png")
    before = a.read_bytes()
    code, _, err = run(["upscale", a, "-o", a], capsys)
    assert_one_line_error(code, err, "would overwrite the input", "--overwrite")
    code, _, err = run(["upscale", tmp_path, "-o", tmp_path], capsys)  # a folder into itself
    assert_one_line_error(code, err, "would overwrite the input")
    assert a.read_bytes() == before
    code, _, _ = run(["upscale", a, "-o", a, "--overwrite"], capsys)
    assert code == 0 and Image.open(a).size == (96, 80)


def test_unwritable_output_found_before_the_network_runs(tmp_path, capsys, no_model):
    a = noise(tmp_path / "a.png")
    (tmp_path / "file").write_text("x")
    code, _, err = run(["upscale", a, "-o", tmp_path / "file" / "sub" / "o.png"], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")
    code, _, err = run(["upscale", a, noise(tmp_path / "b.png"), "-o", tmp_path / "file" / "out"], capsys)
    assert_one_line_error(code, err, "is a file, not a folder")


# ----------------------------------------------------------------------------- 8. messages
def test_one_line_messages_are_clean():
    esc = "\x1b[1mdo those steps only if you trust the source\x1b[0m"
    assert "\x1b" not in common.clean_message(f"a.pth: failed ({esc})")
    assert common.one_line(EOFError()) == "truncated or empty file"
    assert common.clean_message("w.pth: not a loadable PyTorch state dict (EOFError)").endswith(
        "(truncated or empty file)")
    assert common.clean_message("w.pth: not a loadable PyTorch state dict (101)").endswith(
        "(corrupt or truncated file)")
    assert common.one_line(KeyError(101)) == "KeyError (101)"


def test_a_failed_image_write_names_the_output_not_its_temporary_file(tmp_path, capsys, monkeypatch):
    import os

    def disk_full(fd):
        raise OSError(28, "No space left on device", str(tmp_path / ".o.png.a1b2c3d4.tmp"))

    monkeypatch.setattr(os, "fsync", disk_full)
    code, _, err = run(["upscale", BUTTERFLY, "-o", tmp_path / "o.png"], capsys)
    assert_one_line_error(code, err, f"{tmp_path / 'o.png'}: could not write image (No space left on device)")
    assert ".tmp" not in err and list(tmp_path.iterdir()) == []


def test_torch_weights_only_refusal_is_plain(tmp_path, capsys):
    torch = pytest.importorskip("torch")

    class Code:
        def __reduce__(self):
            return (print, ("pickled code",))

    torch.save({"w": Code()}, tmp_path / "code.pth")
    code, _, err = run(["models", "--weights", tmp_path / "code.pth"], capsys)
    assert_one_line_error(code, err, "code.pth", "never runs")
    assert "\x1b" not in err and "weights_only=False" not in err and "`weights_only`" not in err
    assert "pickled code" not in err  # nothing was run
    (tmp_path / "empty.pth").write_bytes(b"")
    code, _, err = run(["models", "--weights", tmp_path / "empty.pth"], capsys)
    assert_one_line_error(code, err, "truncated or empty file")


def test_python_warnings_are_one_line(tmp_path):
    a = noise(tmp_path / "a.png")  # 1920 pixels: over a lowered Pillow limit (a warning, not an error)
    p = prfdn("upscale", a, "-o", tmp_path / "o.png", pre="import PIL.Image; PIL.Image.MAX_IMAGE_PIXELS = 1500; ")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert lines == [f"prfdn: warning: {a}: Image size (1920 pixels) exceeds limit of 1500 pixels, could be "
                     "decompression bomb DOS attack."], p.stderr
    with warnings.catch_warnings(record=True):  # main() leaves the process's warning display as it was
        assert warnings.formatwarning.__module__ == "warnings"


# ----------------------------------------------------------------------------- 9. help, version
def test_every_option_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and isinstance(a.choices, dict))
    missing = [f"{name} {a.option_strings or a.dest}" for name, p in sub.choices.items() for a in p._actions
               if not a.help and a.dest != "help"]
    assert not missing, missing
    assert "checks that the model is xS" in sub.choices["eval"].format_help()


def test_version(capsys):
    from importlib.metadata import version

    code, out, _ = run(["--version"], capsys)
    assert code == 0 and out.strip() == f"prfdn {version('prfdn-jax')}"


# ----------------------------------------------------------------------------- 10. CI needs the shared data
def test_ci_fails_without_the_shared_folder(tmp_path):
    import os

    p = subprocess.run(["bash", str(ROOT / ".ci" / "run")], capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PRFDN_SHARED=str(tmp_path / "missing")))
    assert p.returncode == 1 and "shared data folder not found" in p.stderr and "missing" in p.stderr
