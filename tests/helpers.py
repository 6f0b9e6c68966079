"""Helpers shared by the tests (imported as ``from helpers import ...``; fixtures stay in conftest.py):
the shared data folder, random inputs and architectures, data-iterator checks, small test videos."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prfdn_jax.spec import LAYOUTS, Arch, check_widths, default_arch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PRFDN_SHARED", ROOT.parent / "shared"))
FPS, SECONDS, W, H = 10, 2, 64, 48  # the default test video


def shared_path(*parts) -> Path:
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found: {p} (set PRFDN_SHARED)")
    return p


def prfdn_command(*args, pre: str = "") -> list[str]:
    """The argv of a real ``prfdn`` process (``pre``: Python run first, e.g. a monkeypatch)."""
    code = f"import sys; {pre}\nfrom prfdn_jax.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, *map(str, args)]


def prfdn_env() -> dict:
    """The environment of a ``prfdn`` subprocess: this checkout first on the import path."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def run_prfdn(*args, pre: str = "", cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``prfdn *args`` in a subprocess; stdout and stderr as text."""
    return subprocess.run(prfdn_command(*args, pre=pre), capture_output=True, text=True, cwd=cwd, env=prfdn_env(),
                          timeout=timeout)


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr``."""
    return [ln for ln in stderr.splitlines() if ln.strip()]


def random_image(h=24, w=20, seed=0, batch=1) -> np.ndarray:
    """(B, H, W, 3) float32 in [0, 255]."""
    return np.random.default_rng(seed).uniform(0, 255, (batch, h, w, 3)).astype(np.float32)


def take(it, n: int, close: bool = False) -> list:
    """The next ``n`` batches of a data iterator; ``close``: close it afterwards (worker processes)."""
    try:
        return [next(it) for _ in range(n)]
    finally:
        if close:
            it.close()


def assert_same_batches(a, b) -> None:
    """Batches ``a`` and ``b`` hold the same HR and LR arrays, pair by pair."""
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["hr"], y["hr"])
        np.testing.assert_array_equal(x["lr"], y["lr"])


# ----------------------------------------------------------------------------- random architectures
def _block(rng, p: str, n_in: int, steps: int, cat_p: bool, n_out: int | None = None) -> dict:
    """Random consistent widths of one RFDB/SRFDB (every conv its own width, as after free pruning)."""
    r = lambda: int(rng.integers(2, 9))  # noqa: E731
    w = {}
    for i in range(1, steps + 1):
        w[f"{p}c{i}_d"] = (n_in, r())
        w[f"{p}c{i}_r"] = (n_in, n_in)
    w[f"{p}c4"] = (n_in, r())
    cat_w = sum(w[f"{p}c{i}_d"][1] for i in range(1, steps + 1)) + w[f"{p}c4"][1]
    if cat_p:
        w[f"{p}cat_p"] = (cat_w, r())
        cat_w = w[f"{p}cat_p"][1]
    out = n_out or r() + 2
    w[f"{p}c5"] = (cat_w, out)
    f1, f2, f3, f4, f5 = (r() for _ in range(5))
    w.update({f"{p}esa.conv1": (out, f1), f"{p}esa.conv_f": (f1, f5), f"{p}esa.conv_max": (f2, f3),
              f"{p}esa.conv2": (f1, f2), f"{p}esa.conv3": (f3, f4), f"{p}esa.conv3_": (f4, f5),
              f"{p}esa.conv4": (f5, out)})
    return w


def _stages(rng, w: dict, n_in: int, depth: int, cat_p: bool) -> list[int]:
    """Random widths of the ``depth`` RFDB stages chained from ``n_in`` channels into ``w``; their outputs."""
    outs = []
    for d in range(depth):
        blk = _block(rng, f"stages.{d}.", n_in, 3, cat_p=cat_p)
        w.update(blk)
        n_in = blk[f"stages.{d}.c5"][1]
        outs.append(n_in)
    return outs


def random_merged_arch(seed: int, layout: str, scale: int) -> Arch:
    rng = np.random.default_rng(seed)
    r = lambda lo=3, hi=10: int(rng.integers(lo, hi))  # noqa: E731
    n, s, _ = LAYOUTS[layout]
    depth = LAYOUTS[layout].depth
    w = {"fea": (3 * n, r())}
    f_w = w["fea"][1]
    if s:
        w["split_left"], w["split_right"] = (f_w, r()), (f_w, r())
        sr = _block(rng, "srfdb.", w["split_right"][1], 1, cat_p=s > 1)
        w.update(sr)
        f_w = w["split_left"][1] + sr["srfdb.c5"][1]
    outs = _stages(rng, w, f_w, depth, cat_p=True)
    c_in = sum(outs)
    if depth > 1:
        w["cat_p"] = (c_in, r())
        c_in = w["cat_p"][1]
    nf = r()
    w.update({"c": (c_in, r()), "split": (f_w, nf)})
    w["LR_conv"] = (w["c"][1], nf)
    w["upsampler"] = (nf, 3 * scale * scale)
    arch = Arch.make("merged", layout, scale, w)
    check_widths(arch)
    return arch


def random_branch_arch(seed: int, layout: str, scale: int, form: str = "branch") -> Arch:
    """Uniformly pruned branch net: per-conv widths differ from the defaults, equal over branches."""
    rng = np.random.default_rng(seed)
    n, s, _ = LAYOUTS[layout]
    nf = int(rng.integers(4, 10))
    depth = default_arch(layout).depth
    w = {"fea": (3, nf)}
    if s:
        w.update(_block(rng, "srfdb.", nf, 1, cat_p=False, n_out=nf))
    outs = _stages(rng, w, nf, depth, cat_p=False)
    c = int(rng.integers(3, 9))
    w.update({"c": (n * sum(outs), c), "LR_conv": (c, nf), "upsampler": (nf, 3 * scale * scale)})
    arch = Arch.make(form, layout, scale, w)
    check_widths(arch)
    return arch


# ----------------------------------------------------------------------------- videos (PyAV)
def make_video(path, w=W, h=H, fps=FPS, seconds=SECONDS, vcodec="libx264", pix_fmt="yuv420p", audio="aac",
               sample_rate=16000, layout="mono", colour=None, noise=False):
    """A moving smooth colour pattern (``noise``: random pixels, large packets) and a 440 Hz sine as
    ``audio`` (``layout`` mono or stereo), written with PyAV; ``colour``: codec colour tags
    (``{"color_primaries": 1, ...}``)."""
    import av

    c = av.open(str(path), "w")
    vs = c.add_stream(vcodec, rate=fps)
    vs.width, vs.height, vs.pix_fmt = w, h, pix_fmt
    for tag, value in (colour or {}).items():
        setattr(vs.codec_context, tag, value)
    a = None
    if audio:
        a = c.add_stream(audio, rate=sample_rate)
        a.layout = layout
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(0)
    for i in range(fps * seconds):
        img = np.stack([128 + 100 * np.sin(xx / 9 + i / 3), 128 + 100 * np.cos(yy / 7 - i / 5),
                        128 + 80 * np.sin((xx + yy) / 13 + i / 4)], -1).astype(np.uint8)
        if noise:
            img = rng.integers(0, 256, (h, w, 3), np.uint8)
        for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
    for p in vs.encode(None):
        c.mux(p)
    if a is not None:
        n, ch = sample_rate * seconds, 2 if layout == "stereo" else 1
        for s in range(0, n, 1024):
            t = np.arange(s, min(s + 1024, n)) / sample_rate
            x = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
            fr = av.AudioFrame.from_ndarray(np.repeat(x, ch)[None], format="s16", layout=layout)
            fr.sample_rate, fr.pts = sample_rate, s
            for p in a.encode(fr):
                c.mux(p)
        for p in a.encode(None):
            c.mux(p)
    c.close()
    return path


def audio_samples(path) -> int:
    """Audio samples (per channel) decoded from the first audio stream of ``path``."""
    import av

    with av.open(str(path)) as c:
        return sum(f.samples for f in c.decode(audio=0))


def temp_files(folder) -> list[str]:
    """Hidden (temp) files left in ``folder``."""
    return sorted(p for p in os.listdir(folder) if p.startswith("."))


def frames_of(path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def info(path) -> dict:
    import av

    with av.open(str(path)) as c:
        v = c.streams.video[0]
        return {"rate": v.average_rate, "size": (v.codec_context.width, v.codec_context.height),
                "audio": [s.codec_context.name for s in c.streams.audio], "codec": v.codec_context.name,
                "colour": {t: getattr(v.codec_context, t)
                           for t in ("color_primaries", "color_trc", "colorspace", "color_range")}}
