"""``prfdn verify``: the same input through JAX, the PyTorch reference and an ONNX file; compare them.

:func:`verify` runs one image (or a deterministic random 64x64 one) through

* ``jax``: the deployed network (:func:`prfdn_jax.deploy.deploy`, what ``prfdn upscale`` runs);
* ``torch``: the PyTorch reference (:mod:`converters.torch_modules`) holding the model's exported
  state dict, or an exported ``.pth`` given as ``torch_path`` (needs the ``torch`` extra);
* ``onnx`` (when ``onnx_path`` is given): that file in onnxruntime on the CPU (the ``onnx`` extra);

and reports, for each pair, the max abs difference and the PSNR between the float outputs on
[0, 255] (before clamping and rounding). A pair passes when its max abs difference is at most
``tolerance + rtol * range``, ``range`` being the spread (max - min) of the JAX output: an absolute
part for ordinary outputs and a relative one for large ones (rfdn-x4 on a checkerboard returns values
near 8000, where float32 sums taken in another order differ by up to 2e-4 of the range). An output
holding NaN or Inf fails its pairs, whatever the tolerance. :attr:`VerifyResult.ok` is False when a
pair fails, so the CLI can exit non-zero; :meth:`VerifyResult.to_dict` is valid JSON (no NaN / Inf).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os

import numpy as np

from prfdn_jax.extras import require_torch

__all__ = ["DEFAULT_RTOL", "DEFAULT_TOLERANCE", "Comparison", "VerifyError", "VerifyResult", "random_input", "verify"]

DEFAULT_TOLERANCE = 1e-2  # absolute, on the [0, 255] output
DEFAULT_RTOL = 5e-4       # of the JAX output's range (max - min)
RANDOM_SIZE = 64


class VerifyError(ValueError):
    """The check could not run (bad input, outputs of different shapes); one line."""


@dataclasses.dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    max_abs: float         # inf when an output is not finite
    psnr: float            # dB on [0, 255]; inf when identical, nan when an output is not finite
    nonfinite: tuple = ()  # ((output name, count of NaN / Inf values), ...) of the outputs that hold any

    def line(self) -> str:
        if self.nonfinite:
            bad = ", ".join(f"{name} output holds {n} NaN/Inf value{'s' if n > 1 else ''}"
                            for name, n in self.nonfinite)
            return f"{self.a} vs {self.b}: {bad}"
        psnr = "inf" if math.isinf(self.psnr) else f"{self.psnr:.2f}"
        return f"{self.a} vs {self.b}: max abs diff {self.max_abs:.3g}, PSNR {psnr} dB"


def _finite_or_none(v: float):
    return v if math.isfinite(v) else None


@dataclasses.dataclass(frozen=True)
class VerifyResult:
    input: str             # 'random 64x64 (seed 0)' or the image path
    shape: tuple           # (H, W) of the input
    tolerance: float       # absolute
    comparisons: tuple     # of Comparison, one per pair of runtimes
    rtol: float = 0.0      # relative to output_range
    output_range: float = 255.0  # max - min of the JAX output (its finite values)

    @property
    def allowed(self) -> float:
        """The largest max abs difference a pair may have: ``tolerance + rtol * output_range``."""
        return self.tolerance + self.rtol * self.output_range

    @property
    def ok(self) -> bool:
        return all(not c.nonfinite and c.max_abs <= self.allowed for c in self.comparisons)

    @property
    def worst(self) -> float:
        return max(c.max_abs for c in self.comparisons)

    def lines(self) -> list[str]:
        """The report: one line per pair, then a verdict line."""
        h, w = self.shape
        verdict = "OK" if self.ok else "FAILED"
        bad = sorted({name for c in self.comparisons for name, _ in c.nonfinite})
        worst = f"{', '.join(bad)} output not finite (NaN/Inf)" if bad else f"largest difference {self.worst:.3g}"
        where = self.input if self.input.startswith("random") else f"{self.input} ({w}x{h})"
        return ([c.line() for c in self.comparisons] +
                [f"{verdict}: {worst} (allowed {self.allowed:.3g} = tolerance {self.tolerance:g} + rtol "
                 f"{self.rtol:g} x output range {self.output_range:.4g}) on {where}"])

    def to_dict(self) -> dict:
        """JSON-ready: a NaN / Inf number is ``None`` (``json.dumps(allow_nan=False)`` accepts it)."""
        return {"input": self.input, "height": self.shape[0], "width": self.shape[1], "tolerance": self.tolerance,
                "rtol": self.rtol, "output_range": _finite_or_none(self.output_range),
                "allowed": _finite_or_none(self.allowed), "ok": self.ok,
                "comparisons": [{"a": c.a, "b": c.b, "max_abs": _finite_or_none(c.max_abs),
                                 "psnr": _finite_or_none(c.psnr), "nonfinite": dict(c.nonfinite)}
                                for c in self.comparisons]}


def random_input(size: int = RANDOM_SIZE, seed: int = 0) -> np.ndarray:
    """A deterministic ``(size, size, 3)`` uint8 image: a smooth colour ramp plus noise (image-like)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    base = np.stack([xx, yy, 1 - (xx + yy) / 2], -1) * 200 + 20
    return np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)


def _compare(a: str, b: str, ya: np.ndarray, yb: np.ndarray) -> Comparison:
    if ya.shape != yb.shape:
        raise VerifyError(f"{a} and {b} give outputs of different shapes: {ya.shape} vs {yb.shape}")
    bad = tuple((name, n) for name, y in ((a, ya), (b, yb)) if (n := int(y.size - np.isfinite(y).sum())))
    if bad:  # np.max of a difference holding NaN is NaN, and Python's max() skips it: never compare those
        return Comparison(a, b, math.inf, math.nan, bad)
    d = ya.astype(np.float64) - yb.astype(np.float64)
    mse = float(np.mean(d * d))
    return Comparison(a, b, float(np.abs(d).max()), math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse))


def verify(model, image: str | os.PathLike | np.ndarray | None = None, onnx_path: str | os.PathLike | None = None,
           tolerance: float = DEFAULT_TOLERANCE, torch_path: str | os.PathLike | None = None,
           seed: int = 0, rtol: float = DEFAULT_RTOL) -> VerifyResult:
    """Run ``image`` (a path, an ``(H, W, 3)`` uint8 array, or None: :func:`random_input`) through the
    deployed JAX network, the PyTorch reference (``model``'s own weights, or the export ``torch_path``)
    and ``onnx_path`` if given; compare every pair (see the module doc)."""
    from prfdn_jax.deploy import deploy
    from prfdn_jax.spec import MIN_SIZE

    if not tolerance >= 0:
        raise VerifyError(f"tolerance must be >= 0, got {tolerance}")
    if not rtol >= 0:
        raise VerifyError(f"rtol must be >= 0, got {rtol}")
    if image is None:
        img, label = random_input(seed=seed), f"random {RANDOM_SIZE}x{RANDOM_SIZE} (seed {seed})"
    elif isinstance(image, np.ndarray):
        img, label = image, "the given array"
    else:
        from prfdn_jax.imaging import read_image

        img, label = read_image(image).rgb, str(image)
    if img.ndim != 3 or img.shape[2] != 3 or min(img.shape[:2]) < MIN_SIZE:
        raise VerifyError(f"{label}: need an (H, W, 3) image of at least {MIN_SIZE}x{MIN_SIZE} pixels, "
                          f"got shape {img.shape}")
    x = np.asarray(img, np.float32)[None]
    outs = {"jax": np.asarray(deploy(model)(x))[0]}
    what = "prfdn verify (the PyTorch reference)"
    require_torch(what)
    from converters.export_torch import TorchExportError, load_reference, reference_module, torch_forward

    try:
        if torch_path is not None:
            ref = load_reference(torch_path)
        else:
            from prfdn_jax.checkpoint import flat_params

            ref = reference_module(flat_params(model), model.arch)
    except TorchExportError as e:
        raise VerifyError(str(e)) from None
    outs["torch"] = torch_forward(ref, x)[0]
    if onnx_path is not None:
        from prfdn_jax.export import ExportError, run_onnx

        try:
            outs["onnx"] = run_onnx(onnx_path, x)[0]
        except ExportError as e:
            raise VerifyError(str(e)) from None
    pairs = tuple(_compare(a, b, outs[a], outs[b]) for a, b in itertools.combinations(outs, 2))
    finite = outs["jax"][np.isfinite(outs["jax"])]
    spread = float(finite.max() - finite.min()) if finite.size else 0.0
    return VerifyResult(label, tuple(img.shape[:2]), float(tolerance), pairs, float(rtol), spread)
