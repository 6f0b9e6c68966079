"""Tests for prfdn_jax.metrics: PSNR / SSIM / Y conversion conventions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prfdn_jax.metrics import evaluate_pair, gaussian_kernel, psnr, rgb_to_y, ssim


def _img(seed=0, shape=(40, 36, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _noisy(x, sigma=8.0, seed=1):
    n = np.random.default_rng(seed).normal(0, sigma, x.shape)
    return np.clip(np.round(x + n), 0, 255).astype(np.uint8)


def test_rgb_to_y_white_black_and_gray():
    white = np.full((2, 3, 3), 255, np.uint8)
    black = np.zeros((2, 3, 3), np.uint8)
    np.testing.assert_allclose(rgb_to_y(white), 235.0, atol=1e-9)
    np.testing.assert_allclose(rgb_to_y(black), 16.0, atol=1e-12)
    px = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    np.testing.assert_allclose(rgb_to_y(px)[0], [16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-9)
    y = rgb_to_y(np.full((1, 1, 3), 100, np.uint8))
    assert y.dtype == np.float64 and y[0, 0] != round(y[0, 0])  # not rounded
    g = _img(shape=(5, 4))
    np.testing.assert_allclose(rgb_to_y(g), rgb_to_y(np.repeat(g[:, :, None], 3, 2)), atol=1e-12)


def test_psnr_identical_is_inf():
    x = _img()
    assert psnr(x, x) == math.inf
    assert psnr(x, x, crop=4, y_channel=True) == math.inf


def test_psnr_known_value():
    x = np.full((16, 16, 3), 100, np.uint8)
    y = x + 1
    assert psnr(x, y) == pytest.approx(10 * math.log10(255**2), abs=1e-12)
    assert psnr(x, y) == pytest.approx(48.1308, abs=1e-4)
    # difference 2 on one of four pixels: mse = 1
    a = np.zeros((2, 2), np.uint8)
    b = a.copy()
    b[0, 0] = 2
    assert psnr(a, b) == pytest.approx(48.1308036, abs=1e-6)


def test_psnr_uint8_no_wraparound():
    a = np.zeros((4, 4), np.uint8)
    b = np.full((4, 4), 255, np.uint8)
    assert psnr(a, b) == pytest.approx(0.0, abs=1e-12)


def test_psnr_y_of_constant_difference():
    x = np.full((8, 8, 3), 50, np.uint8)
    y = x + 1
    # Y difference is 219/255 per grey level
    expect = 10 * math.log10(255**2 / (219 / 255) ** 2)
    assert psnr(x, y, y_channel=True) == pytest.approx(expect, abs=1e-9)


def test_crop_behaviour():
    x = np.full((20, 20, 3), 100, np.uint8)
    y = x.copy()
    y[:3, :, :] = 0  # damage only a 3-pixel border
    y[:, -3:, :] = 0
    assert psnr(x, y) < 30
    assert psnr(x, y, crop=2) < 30
    assert psnr(x, y, crop=3) == math.inf
    assert ssim(_img(2, (40, 40, 3)), _img(2, (40, 40, 3)), crop=3) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        psnr(x, y, crop=10)
    with pytest.raises(ValueError):
        psnr(x, y, crop=-1)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="shapes"):
        psnr(_img(shape=(10, 10, 3)), _img(shape=(10, 11, 3)))


def test_ssim_identical_and_noisy():
    x = _img()
    assert ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    assert ssim(x, x, y_channel=True) == pytest.approx(1.0, abs=1e-12)
    y = _noisy(x)
    s = ssim(x, y)
    assert 0 < s < 1
    assert ssim(y, x) == pytest.approx(s, abs=1e-12)  # symmetric
    assert ssim(x, _noisy(x, sigma=30)) < s  # more noise, lower SSIM


def test_gaussian_kernel():
    g = gaussian_kernel(11, 1.5)
    assert g.shape == (11,) and g.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(g, g[::-1])
    assert g[5] / g[4] == pytest.approx(math.exp(1 / (2 * 1.5**2)))


def _ssim_reference(x, y):
    """Direct (non-separable) 11x11 window SSIM on one 2-D channel, loops over positions."""
    x = x.astype(np.float64)
    y = y.astype(np.float64)
    g = gaussian_kernel()
    w = np.outer(g, g)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    vals = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            px, py = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            mx, my = (w * px).sum(), (w * py).sum()
            vx = (w * px * px).sum() - mx * mx
            vy = (w * py * py).sum() - my * my
            cxy = (w * px * py).sum() - mx * my
            vals.append(((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
    return float(np.mean(vals))


def test_ssim_matches_direct_window_formula():
    x = _img(3, (24, 22, 3))
    y = _noisy(x, 12.0)
    expect = np.mean([_ssim_reference(x[:, :, c], y[:, :, c]) for c in range(3)])
    assert ssim(x, y) == pytest.approx(expect, abs=1e-12)
    expect_y = _ssim_reference(rgb_to_y(x)[2:-2, 2:-2], rgb_to_y(y)[2:-2, 2:-2])
    assert ssim(x, y, crop=2, y_channel=True) == pytest.approx(expect_y, abs=1e-12)


def test_ssim_grayscale_and_small():
    g = _img(4, (30, 30))
    assert ssim(g, _noisy(g)) < 1
    with pytest.raises(ValueError, match="11x11"):
        ssim(_img(shape=(10, 30, 3)), _img(shape=(10, 30, 3)))


def test_evaluate_pair():
    hr = _img(5, (50, 46, 3))
    sr = _noisy(hr[:48, :44])
    m = evaluate_pair(sr, hr, 4)  # hr cropped top-left to 48x44
    assert set(m) == {"psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb"}
    h = hr[:48, :44]
    assert m["psnr_rgb"] == pytest.approx(psnr(sr, h))
    assert m["ssim_rgb"] == pytest.approx(ssim(sr, h))
    assert m["psnr_y"] == pytest.approx(psnr(sr, h, crop=4, y_channel=True))
    assert m["ssim_y"] == pytest.approx(ssim(sr, h, crop=4, y_channel=True))
    same = evaluate_pair(h, hr, 2)
    assert same["psnr_y"] == math.inf and same["psnr_rgb"] == math.inf
    assert same["ssim_y"] == pytest.approx(1.0) and same["ssim_rgb"] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        evaluate_pair(hr, sr, 4)  # hr smaller than sr


def test_evaluate_pair_grayscale_equals_replicated():
    hr = _img(6, (32, 32))
    sr = _noisy(hr)
    a = evaluate_pair(sr, hr, 2)
    b = evaluate_pair(np.repeat(sr[:, :, None], 3, 2), np.repeat(hr[:, :, None], 3, 2), 2)
    assert a == pytest.approx(b)
