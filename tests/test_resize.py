"""Tests for prfdn_jax.resize: the MATLAB-bicubic oracle (the shared LR images) and resize behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image as PILImage

from prfdn_jax.imaging import read_image
from prfdn_jax.resize import downscale, imresize_matlab, modcrop, ntire_degrade
from helpers import SHARED

DATA = SHARED / "data"


def _have_set(name: str) -> bool:
    return (DATA / name / "HR").is_dir() and (DATA / name / "LR_bicubic").is_dir()


needs_data = pytest.mark.skipif(
    not (_have_set("Set5") and _have_set("Set14")),
    reason=f"shared benchmark data not found at {DATA} (set PRFDN_SHARED to the shared/ folder)",
)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _load(path) -> np.ndarray:
    """Raw pixel array as Pillow gives it (closes the file)."""
    with PILImage.open(path) as im:
        return np.asarray(im).copy()


# --------------------------------------------------------------------------------------------------
# MATLAB oracle
# --------------------------------------------------------------------------------------------------


def _pairs(set_name: str, scale: int):
    for hr_path in sorted((DATA / set_name / "HR").glob("*.png")):
        lr_path = DATA / set_name / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        yield hr_path, lr_path


@needs_data
@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("set_name", ["Set5", "Set14"])
def test_matlab_oracle_exact(set_name, scale):
    """downscale(HR, s, 'matlab') equals the shipped MATLAB LR files, every pixel."""
    bad = []
    n = 0
    for hr_path, lr_path in _pairs(set_name, scale):
        hr = _load(hr_path)  # raw arrays: bridge is (H, W) mode L
        lr = _load(lr_path)
        out = downscale(hr, scale, "matlab")
        assert out.dtype == np.uint8
        if out.shape != lr.shape or not np.array_equal(out, lr):
            diff = (
                np.abs(out.astype(int) - lr.astype(int)).max() if out.shape == lr.shape else "shape"
            )
            bad.append(f"{hr_path.stem}: {diff}")
        # The read_image path (grayscale replicated to RGB) gives the same answer per channel.
        rgb_out = downscale(read_image(hr_path).rgb, scale, "matlab")
        lr3 = lr if lr.ndim == 3 else np.repeat(lr[:, :, None], 3, axis=2)
        if not np.array_equal(rgb_out, lr3):
            bad.append(f"{hr_path.stem} via read_image")
        n += 1
    assert n > 0
    assert not bad, f"{set_name} x{scale} mismatches: {bad}"


@needs_data
def test_matlab_oracle_x8_set5_float_pipeline():
    """Set5 X8 (SwinIR's files) was made in double precision, rounded once at the end.

    With a float input, imresize_matlab keeps float64 between passes; rounding its result
    reproduces those files exactly. (The uint8 path, rounding after each pass, is off by <= 2.)
    """
    for hr_path, lr_path in _pairs("Set5", 8):
        hr = _load(hr_path)
        lr = _load(lr_path)
        f = downscale(hr.astype(np.float64), 8, "matlab")
        assert f.dtype == np.float64
        out = np.clip(np.floor(f + 0.5), 0, 255).astype(np.uint8)
        assert np.array_equal(out, lr), hr_path.stem
        d = np.abs(downscale(hr, 8, "matlab").astype(int) - lr.astype(int))
        assert d.max() <= 2


@needs_data
def test_matlab_oracle_x8_set14_close():
    """Set14 X8 (PAN's files) match no flavour exactly; ours is close (documented bound)."""
    diffs = []
    for hr_path, lr_path in _pairs("Set14", 8):
        hr = read_image(hr_path).rgb
        lr = read_image(lr_path).rgb  # bridge X8 is stored as RGB
        diffs.append(np.abs(downscale(hr, 8, "matlab").astype(int) - lr.astype(int)).mean())
    assert max(diffs) < 0.3


# --------------------------------------------------------------------------------------------------
# Resize behaviour
# --------------------------------------------------------------------------------------------------


def test_resize_2d_equals_per_channel():
    x = _rng().integers(0, 256, (37, 29, 3), dtype=np.uint8)
    for s in (1 / 2, 1 / 3, 2.0):
        full = imresize_matlab(x, s)
        per = np.stack([imresize_matlab(x[:, :, c], s) for c in range(3)], axis=2)
        assert np.array_equal(full, per)


def test_resize_shapes_and_dtypes():
    x = _rng().integers(0, 256, (30, 45, 3), dtype=np.uint8)
    assert imresize_matlab(x, 1 / 3).shape == (10, 15, 3)
    assert imresize_matlab(x, 1 / 4).shape == (8, 12, 3)  # ceil, as MATLAB
    up = imresize_matlab(x, 4)
    assert up.shape == (120, 180, 3) and up.dtype == np.uint8
    assert imresize_matlab(x, output_shape=(17, 90)).shape == (17, 90, 3)
    f = imresize_matlab(x.astype(np.float32) / 255, 1 / 2)
    assert f.dtype == np.float64
    with pytest.raises(ValueError):
        imresize_matlab(x)
    with pytest.raises(ValueError):
        imresize_matlab(x, 0.5, output_shape=(15, 22))


def test_resize_identity_and_constant():
    x = _rng().integers(0, 256, (20, 21), dtype=np.uint8)
    assert np.array_equal(imresize_matlab(x, 1), x)
    c = np.full((24, 24, 3), 77, np.uint8)
    for s in (1 / 2, 1 / 3, 1 / 4, 2, 3):
        assert np.all(imresize_matlab(c, s) == 77)


def test_resize_float_is_not_rounded_and_uint8_rounds_each_pass():
    x = _rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    f = imresize_matlab(x.astype(np.float64), 1 / 4)
    assert not np.allclose(f, np.round(f))  # real fractions kept
    u = imresize_matlab(x, 1 / 4)
    # rounding only at the end vs after each pass: at most a small difference, but a difference
    assert np.abs(u.astype(int) - np.round(f)).max() <= 2


def test_resize_float_matches_direct_separable_formula():
    """Upscale x2 of a tiny signal against weights computed independently from MATLAB's formula."""
    x = np.array([0.0, 10.0, 20.0, 50.0], dtype=np.float64)
    out = imresize_matlab(x[None, :].repeat(3, 0), output_shape=(3, 8))[0]

    def cubic(t):
        t = abs(t)
        if t <= 1:
            return 1.5 * t**3 - 2.5 * t**2 + 1
        if t <= 2:
            return -0.5 * t**3 + 2.5 * t**2 - 4 * t + 2
        return 0.0

    expect = []
    for j in range(1, 9):
        u = j / 2 + 0.5 * (1 - 1 / 2)
        num = den = 0.0
        for k in range(int(np.floor(u - 2)), int(np.floor(u - 2)) + 6):
            w = cubic(u - k)
            kk = k
            if k < 1:
                kk = 1 - k  # symmetric: index 0 -> 1, -1 -> 2
            elif k > 4:
                kk = 2 * 4 + 1 - k
            num += w * x[kk - 1]
            den += w
        expect.append(num / den)
    np.testing.assert_allclose(out, expect, rtol=0, atol=1e-12)


def test_modcrop():
    x = np.zeros((10, 13, 3), np.uint8)
    assert modcrop(x, 4).shape == (8, 12, 3)
    assert modcrop(x[:, :, 0], 3).shape == (9, 12)
    assert modcrop(x, 1).shape == x.shape
    with pytest.raises(ValueError):
        modcrop(x, 0)


def test_downscale_flavours():
    x = _rng(2).integers(0, 256, (51, 38, 3), dtype=np.uint8)
    m = downscale(x, 4, "matlab")
    p = downscale(x, 4, "pil")
    assert m.shape == p.shape == (12, 9, 3)
    cropped = x[:48, :36]
    expect = np.asarray(PILImage.fromarray(cropped).resize((9, 12), PILImage.BICUBIC))
    assert np.array_equal(p, expect)
    assert not np.array_equal(m, p)
    assert downscale(x[:, :, 0], 2, "pil").shape == (25, 19)
    with pytest.raises(ValueError, match="flavour"):
        downscale(x, 2, "bicubic")
    with pytest.raises(ValueError):
        downscale(x, 2.5, "matlab")


def test_ntire_degrade():
    x = _rng(3).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    lr = ntire_degrade(x, 2)
    assert lr.shape == (32, 24, 3) and lr.dtype == np.uint8
    assert not np.array_equal(lr, downscale(x, 2, "pil"))  # JPEG changed it
    assert np.array_equal(lr, ntire_degrade(x, 2))  # deterministic
