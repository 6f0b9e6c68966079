"""Super-resolution image-quality metrics (numpy, float64).

Two conventions are used by :func:`evaluate_pair` (see ``docs/benchmark-protocol.md``):

* papers: PSNR / SSIM on the BT.601 luma Y, with ``scale`` pixels cropped from every border;
* NTIRE 2023 RTSR (the scored one): PSNR / SSIM on RGB, no border crop.

PSNR uses peak 255 in both cases (also for Y, whose range is 16..235), as BasicSR does.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Y_WEIGHTS", "rgb_to_y", "psnr", "ssim", "evaluate_pair", "gaussian_kernel"]

Y_WEIGHTS = (65.481, 128.553, 24.966)  # BT.601 luma: Y = 16 + sum(w * C / 255), C in 0..255 (R, G, B)
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 luma of an (H, W, 3) RGB image with values 0..255 (uint8 or float).

    Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B = img / 255. Returns (H, W) float64 in
    16..235, not rounded. An (H, W) input is treated as gray (R = G = B).
    """
    a = np.asarray(img, dtype=np.float64)
    wr, wg, wb = Y_WEIGHTS
    if a.ndim == 2:
        return 16.0 + (wr + wg + wb) * (a / 255.0)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects (H, W, 3) or (H, W), got shape {a.shape}")
    a = a / 255.0
    return 16.0 + wr * a[:, :, 0] + wg * a[:, :, 1] + wb * a[:, :, 2]


def _prepare(a: np.ndarray, b: np.ndarray, crop: int, y_channel: bool) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair, optionally convert to Y, crop borders; returns float64 arrays (H, W[, C])."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"expected (H, W) or (H, W, C) images, got shape {a.shape}")
    crop = int(crop)
    if crop < 0:
        raise ValueError(f"crop must be >= 0, got {crop}")
    if y_channel:
        if a.ndim == 3 and a.shape[2] == 1:
            a, b = a[:, :, 0], b[:, :, 0]
        a, b = rgb_to_y(a), rgb_to_y(b)
    else:
        a, b = a.astype(np.float64), b.astype(np.float64)
    if crop:
        if a.shape[0] <= 2 * crop or a.shape[1] <= 2 * crop:
            raise ValueError(f"crop {crop} leaves nothing of a {a.shape[0]}x{a.shape[1]} image")
        a = a[crop:-crop, crop:-crop]
        b = b[crop:-crop, crop:-crop]
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, crop: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB between two images (H, W, 3) or (H, W), values 0..255 (uint8), compared in float64.

    Peak 255; ``crop`` pixels removed from every border (after the Y conversion when ``y_channel``).
    Returns ``inf`` for identical images.
    """
    x, y = _prepare(a, b, crop, y_channel)
    mse = float(np.mean((x - y) ** 2))
    if mse == 0:
        return float("inf")
    return float(10.0 * np.log10(255.0**2 / mse))


def gaussian_kernel(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps, float64 (as OpenCV's ``getGaussianKernel``)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _filter_valid(img: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Separable 'valid' 2-D correlation of (H, W) float64 with the outer product of ``g``."""
    k = g.size
    rows = np.lib.stride_tricks.sliding_window_view(img, k, axis=0)  # (H-k+1, W, k)
    tmp = rows @ g  # (H-k+1, W)
    cols = np.lib.stride_tricks.sliding_window_view(tmp, k, axis=1)  # (H-k+1, W-k+1, k)
    return cols @ g


def _ssim_2d(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> float:
    mu1 = _filter_valid(x, g)
    mu2 = _filter_valid(y, g)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1 = _filter_valid(x * x, g) - mu1_sq
    s2 = _filter_valid(y * y, g) - mu2_sq
    s12 = _filter_valid(x * y, g) - mu12
    m = ((2 * mu12 + _C1) * (2 * s12 + _C2)) / ((mu1_sq + mu2_sq + _C1) * (s1 + s2 + _C2))
    return float(m.mean())


def ssim(a: np.ndarray, b: np.ndarray, crop: int = 0, y_channel: bool = False) -> float:
    """SSIM of two images (H, W, 3) or (H, W), values 0..255, as BasicSR's ``calculate_ssim``.

    11x11 Gaussian window (sigma 1.5), C1 = (0.01*255)^2, C2 = (0.03*255)^2, 'valid' filtering,
    per channel then averaged (on Y only when ``y_channel``); ``crop`` pixels cut from every border
    first. Each (cropped) side must be at least 11 pixels.
    """
    x, y = _prepare(a, b, crop, y_channel)
    if x.shape[0] < 11 or x.shape[1] < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 pixels, got {x.shape[0]}x{x.shape[1]}")
    g = gaussian_kernel(11, 1.5)
    if x.ndim == 2:
        return _ssim_2d(x, y, g)
    return float(np.mean([_ssim_2d(x[:, :, c], y[:, :, c], g) for c in range(x.shape[2])]))


def _as_rgb(img: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(img)
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8, got {a.dtype}")
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 1:
        return np.repeat(a, 3, axis=2)
    if a.ndim == 3 and a.shape[2] == 3:
        return a
    raise ValueError(f"{name} must be (H, W, 3) or (H, W), got shape {a.shape}")


def evaluate_pair(sr: np.ndarray, hr: np.ndarray, scale: int, with_ssim: bool = True) -> dict[str, float]:
    """Metrics of a super-resolved image against its ground truth (both uint8, (H, W, 3) or (H, W)).

    Returns ``{'psnr_y', 'ssim_y'}`` (Y channel, ``scale`` pixels cropped from every border: papers'
    convention) and ``{'psnr_rgb', 'ssim_rgb'}`` (RGB, no crop: NTIRE convention). If ``hr`` is larger
    than ``sr`` (an HR not divisible by the scale), ``hr`` is cropped top-left to ``sr``'s size first,
    which is the modcrop used to make the LR. Grayscale inputs count as three equal channels.
    ``with_ssim=False`` leaves out the two SSIMs (the slow part), e.g. for validation during training.
    """
    sr3 = _as_rgb(sr, "sr")
    hr3 = _as_rgb(hr, "hr")
    h, w = sr3.shape[:2]
    if hr3.shape[0] < h or hr3.shape[1] < w:
        raise ValueError(f"hr {hr3.shape[:2]} is smaller than sr {sr3.shape[:2]}")
    hr3 = hr3[:h, :w]
    s = int(scale)
    if not with_ssim:
        return {"psnr_y": psnr(sr3, hr3, crop=s, y_channel=True), "psnr_rgb": psnr(sr3, hr3)}
    return {
        "psnr_y": psnr(sr3, hr3, crop=s, y_channel=True),
        "ssim_y": ssim(sr3, hr3, crop=s, y_channel=True),
        "psnr_rgb": psnr(sr3, hr3),
        "ssim_rgb": ssim(sr3, hr3),
    }
