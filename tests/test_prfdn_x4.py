"""prfdn-x4, the built-in made by this project (issue 16): ``--scale 4`` picks it, and its tiles, video and
half precision behave as the other built-ins'. Tiny inputs; the quality figures are in tests/test_cli.py."""

import json

import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, frames_of, make_video, run_prfdn
from prfdn_jax import registry
from prfdn_jax.deploy import deploy
from prfdn_jax.inference import upscale_array
from prfdn_jax.metrics import psnr as _psnr
from prfdn_jax.spec import LAYOUTS


@pytest.fixture(scope="module")
def x4():
    return deploy(registry.load("prfdn-x4"))


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth uint8 RGB image (``h x w``): what tiles are measured on (noise has no structure to keep)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([128 + 100 * np.sin(x / 7 + c) * np.cos(y / 9 - c) for c in range(3)], -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_scale_4_upscales_with_prfdn_x4(tmp_path, x4):
    img = _smooth(24, 32)
    Image.fromarray(img).save(tmp_path / "in.png")
    p = run_prfdn("upscale", "--scale", "4", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"))
    assert p.returncode == 0, error_lines(p.stderr)[-3:]
    got = np.asarray(Image.open(tmp_path / "out.png"))
    assert got.shape == (96, 128, 3)
    np.testing.assert_array_equal(got, upscale_array(x4, img, 4))  # prfdn-x4's output, not rfdn-x4's
    assert registry.DEFAULT_BY_SCALE[4] == "prfdn-x4" and "rfdn-x4" in registry.MODELS


def test_tiles_stay_close_to_the_whole_image(x4):
    """ESA pools over the whole input, so tiles are not exact: within 0.5 grey levels RMS of the whole."""
    img = _smooth(72, 96)
    whole = upscale_array(x4, img, 4)
    tiled = upscale_array(x4, img, 4, tile=48, overlap=8)
    assert tiled.shape == whole.shape == (288, 384, 3)
    assert _psnr(tiled, whole) > 54  # RMS < 0.5


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_stays_close_to_float32(dtype, x4):
    img = _smooth(32, 40)
    ref = upscale_array(x4, img, 4)
    half = upscale_array(deploy(registry.load("prfdn-x4"), dtype=dtype), img, 4)
    assert _psnr(half, ref) > (45 if dtype == "float16" else 35)


def test_lossless_video_frames_equal_the_image_path(tmp_path, x4):
    pytest.importorskip("av")
    from prfdn_jax.video import upscale_video

    src = make_video(tmp_path / "in.mkv", w=32, h=24, fps=5, seconds=1, audio=None)
    res = upscale_video(x4, 4, src, tmp_path / "out.mkv", lossless=True)
    got, frames = frames_of(tmp_path / "out.mkv"), frames_of(src)
    assert res.frames == len(got) == len(frames) == 5 and got[0].shape == (96, 128, 3)
    for a, b in zip(got, frames):
        np.testing.assert_array_equal(a, upscale_array(x4, b, 4))


def test_recipe_prune_overrides_are_typed_and_checked():
    """``experiments/prfdn_x4.py --prune K=V``: typed like ``--set``, one-line refusals, the rest kept."""
    from experiments import prfdn_x4

    cpu = prfdn_x4.PROFILES["cpu"]
    got = prfdn_x4.prune_overrides(["prune_ft_steps=250", "prune_patch=256", "prune_lr=1e-4"], cpu)
    assert got == {**{k: cpu[k] for k in prfdn_x4.PRUNE_KEYS}, "prune_ft_steps": 250, "prune_patch": 256,
                   "prune_lr": 1e-4}
    assert isinstance(prfdn_x4.prune_overrides(["prune_lr=1"], cpu)["prune_lr"], float)
    assert prfdn_x4.prune_overrides(["prune_keep=esa,distilled"], cpu)["prune_keep"] == "esa,distilled"
    for bad, why in (("steps=3", "expected KEY=VALUE"), ("calib=x", "calib must be an integer"),
                     ("prune_keep=c5", "prune_keep: 'c5'")):
        with pytest.raises(SystemExit, match=why) as e:
            prfdn_x4.prune_overrides([bad], cpu)
        assert "\n" not in str(e.value) and "--prune" in str(e.value)


def test_recipe_prune_overrides_must_take_effect(tmp_path):
    """``--prune`` is refused where it would be ignored: a second stage, or a run pruned with other settings."""
    from experiments import prfdn_x4

    p = {**prfdn_x4.PROFILES["cpu"], **prfdn_x4.prune_overrides(["prune_ft_steps=250"], prfdn_x4.PROFILES["cpu"])}
    prfdn_x4.check_prune_settings(tmp_path, p, ["prune_ft_steps=250"], False)  # nothing pruned yet
    with pytest.raises(SystemExit, match="second stage"):
        prfdn_x4.check_prune_settings(tmp_path, p, ["prune_ft_steps=250"], True)
    (tmp_path / "pruned.safetensors").write_bytes(b"")
    with pytest.raises(SystemExit, match="already pruned with other settings"):
        prfdn_x4.check_prune_settings(tmp_path, p, ["prune_ft_steps=250"], False)
    (tmp_path / "prune.json").write_text(json.dumps({k: p[k] for k in prfdn_x4.PRUNE_KEYS}))
    prfdn_x4.check_prune_settings(tmp_path, p, ["prune_ft_steps=250"], False)  # the same command resumes


def test_recipe_source_is_recorded_and_kept(tmp_path):
    """``--source``: a run keeps the released network it was pruned from (b4s before it was recorded)."""
    from experiments import prfdn_x4

    assert prfdn_x4.run_source(tmp_path) == "b4s" and prfdn_x4.run_source(tmp_path, "b2") == "b2"
    (tmp_path / "prune.json").write_text(json.dumps({"prune_ratio": 0.9}))  # an older record: b4s
    assert prfdn_x4.run_source(tmp_path) == "b4s"
    (tmp_path / "prune.json").write_text(json.dumps({"prune_ratio": 0.9, "source": "b2"}))
    assert prfdn_x4.run_source(tmp_path) == prfdn_x4.run_source(tmp_path, "b2") == "b2"
    with pytest.raises(SystemExit, match="was pruned from b2") as e:
        prfdn_x4.run_source(tmp_path, "b4s")
    assert "\n" not in str(e.value)
    assert set(prfdn_x4.SOURCES) == {"b4s", "b2", "rfdn"}
    assert set(prfdn_x4.SOURCES) <= set(LAYOUTS)  # --ship names the source from the network's layout


def test_recipe_widened_start_is_the_same_function(tmp_path, x4):
    """``--start W --widen-esa F``: the second stage starts from W with wider ESAs, computing the same image."""
    from experiments import prfdn_x4
    from prfdn_jax.checkpoint import load_model_file

    src = registry.info("prfdn-x4").path
    prfdn_x4.copy_start(src, tmp_path / "start.safetensors", esa=16)
    wide = load_model_file(tmp_path / "start.safetensors")
    assert all(w == (16, 16) for k, w in wide.arch.widths if k.endswith("esa.conv2"))
    img = _smooth(24, 28)
    got, ref = (upscale_array(m, img, 4).astype(int) for m in (deploy(wide), x4))
    assert np.abs(got - ref).max() <= 1 and (got == ref).mean() > 0.999  # float rounding only
    with pytest.raises(SystemExit, match="would narrow") as e:
        prfdn_x4.copy_start(src, tmp_path / "narrow.safetensors", esa=3)
    assert "\n" not in str(e.value) and not (tmp_path / "narrow.safetensors").exists()
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    for esa in (None, 12):
        with pytest.raises(SystemExit, match="not a readable safetensors") as e:
            prfdn_x4.copy_start(tmp_path / "bad.safetensors", tmp_path / "out.safetensors", esa=esa)
        assert "\n" not in str(e.value) and not (tmp_path / "out.safetensors").exists()


def test_recipe_soup_ingredients(tmp_path):
    """``--soup`` takes weight files (named by SHA-256) or run folders (their EMA); anything else is one line."""
    import hashlib

    from experiments import prfdn_x4

    src = registry.info("prfdn-x4").path
    model, ident = prfdn_x4.soup_ingredient(str(src))
    assert ident == hashlib.sha256(src.read_bytes()).hexdigest() and model.arch.layout == "b2"
    with pytest.raises(SystemExit, match="neither a weight file nor a run folder") as e:
        prfdn_x4.soup_ingredient(str(tmp_path / "missing"))
    assert "\n" not in str(e.value)
    (tmp_path / "bad.safetensors").write_bytes(b"not weights")
    with pytest.raises(SystemExit, match="not a readable safetensors") as e:
        prfdn_x4.soup_ingredient(str(tmp_path / "bad.safetensors"))
    assert "\n" not in str(e.value)
