"""Video end to end against the network alone, in the same run: is a clip upscaled at the network's speed?

    python experiments/video_pipeline.py --model prfdn-x2 --size 240x320 --frames 60 --presets medium,veryfast

Makes a clip (a crop panning across an Urban100 image from the shared data, else a synthetic pattern;
H.264 at crf 18, as a user's clip would be) and prints one markdown table:

- ``network``: the network alone at the frame size and batch, timed as ``prfdn bench`` times it (warm-up,
  median of timed calls; :func:`prfdn_jax.bench.bench_jax` itself is run once and printed above the table);
- ``pipelined`` (``prfdn upscale``'s path: decode, network and encode in three threads) and ``one thread``
  (the same stages one after the other, ``threads=False``) for each x264 preset: frames / wall time of
  :func:`prfdn_jax.video.upscale_video` (compilation excluded: the program is compiled by a warm-up call
  first), and the ratio to ``network``;
- the process's CPU time per frame of each (what the decoding and encoding add to the network's: on a
  CPU that the network already keeps busy, they cost wall time whatever overlaps).

Each video job runs between two timings of the network alone (the same compiled program, timed as
``prfdn bench`` times it), and its ratio is taken to their mean: a neighbour's load changes both alike.
The median over ``--rounds`` is printed, with every round's ratio; "steady state" leaves out the start
and the encoder's final flush (what a long clip approaches). ``--json``: the rows as one JSON line at the end.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path


def make_clip(path: Path, h: int, w: int, frames: int, fps: int = 25) -> Path:
    """A ``frames``-long H.264 clip (crf 18) of ``h x w`` frames: a crop panning across a real photo where the shared
    data has one (x264 then spends on it what it spends on real content), else a moving pattern."""
    import av
    import numpy as np

    from prfdn_jax.data import shared_path

    from PIL import Image

    src, root = None, shared_path("data/Urban100/HR")
    for p in sorted(root.glob("*.png")) if root.is_dir() else []:
        img = np.asarray(Image.open(p).convert("RGB"))
        if img.shape[0] >= h + 8 and img.shape[1] >= w + frames:
            src = img
            break
    c = av.open(str(path), "w")
    vs = c.add_stream("libx264", rate=fps)
    vs.width, vs.height, vs.pix_fmt, vs.options = w, h, "yuv420p", {"crf": "18"}
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(frames):
        if src is not None:
            f = src[4:4 + h, i:i + w]
        else:
            f = np.stack([128 + 100 * np.sin(xx / 9 + i / 3), 128 + 100 * np.cos(yy / 7 - i / 5),
                          128 + 80 * np.sin((xx + yy) / 13 + i / 4)], -1).astype(np.uint8)
        for pkt in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
            c.mux(pkt)
    for pkt in vs.encode(None):
        c.mux(pkt)
    c.close()
    return path


def network_fps(apply, x, runs: int) -> tuple[float, float]:
    """``(frames/s, CPU s per frame)`` of the compiled ``apply`` on the device array ``x``, timed as ``prfdn bench``
    times it (a warm-up call, then the median of ``runs`` calls each waiting for its result)."""
    import jax

    jax.block_until_ready(apply(x))
    ts, c = [], time.process_time()
    for _ in range(runs):
        t = time.perf_counter()
        jax.block_until_ready(apply(x))
        ts.append(time.perf_counter() - t)
    return x.shape[0] / statistics.median(ts), (time.process_time() - c) / (runs * x.shape[0])


def video_run(apply, scale: int, clip: Path, out: Path, batch: int, preset: str, threads: bool) -> dict:
    """One :func:`~prfdn_jax.video.upscale_video` job: frames/s of the whole job, of its steady state (from the
    progress calls: frames handed to the encoder after the first 10 %, so the start and the encoder's
    final flush are left out), and CPU seconds per frame."""
    from prfdn_jax.video import upscale_video

    marks: list[tuple[int, float]] = []
    t, c = time.perf_counter(), time.process_time()
    r = upscale_video(apply, scale, clip, out, batch=batch, preset=preset, threads=threads,
                      progress=lambda done, total, fps: marks.append((done, time.perf_counter())))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    first = next(m for m in marks if m[0] >= r.frames // 10)
    steady = (marks[-1][0] - first[0]) / max(marks[-1][1] - first[1], 1e-9)
    return {"fps": r.frames / wall, "steady": steady, "cpu": cpu / r.frames}


def measure(model_name: str, size: tuple[int, int], frames: int, batch: int, presets: list[str], rounds: int,
            dtype: str, suffix: str, one_thread: bool = True) -> tuple[dict, list[dict]]:
    """``(prfdn bench's result, rows)``: each video job timed between two timings of the network alone, ``rounds``
    times; its ratios are to the mean of those two, a row's the median over the rounds."""
    import jax
    import numpy as np

    from prfdn_jax import registry
    from prfdn_jax.bench import bench_jax
    from prfdn_jax.deploy import deploy

    h, w = size
    model = registry.load(model_name)
    apply = deploy(model, dtype=dtype)
    x = jax.device_put(np.random.default_rng(0).uniform(0, 255, (batch, h, w, 3)).astype(np.float32))
    runs = max(3, frames // (2 * batch))
    bench = bench_jax(model, np.asarray(x), dtype, warmup=1, runs=runs)
    modes = [("pipelined", p, True) for p in presets] + [("one thread", p, False) for p in presets if one_thread]
    got: dict = {m: [] for m in modes}
    with tempfile.TemporaryDirectory() as d:
        clip = make_clip(Path(d) / "in.mp4", h, w, frames)
        for _ in range(rounds):
            for m in modes:
                before = network_fps(apply, x, runs)
                v = video_run(apply, model.arch.scale, clip, Path(d) / f"out{suffix}", batch, m[1], m[2])
                after = network_fps(apply, x, runs)
                v["net"], v["net_cpu"] = (before[0] + after[0]) / 2, (before[1] + after[1]) / 2
                got[m].append(v)
    rows = []
    for m, v in got.items():
        med = lambda f: statistics.median(f(g) for g in v)  # noqa: E731
        rows.append({"mode": m[0], "preset": m[1], "network_fps": med(lambda g: g["net"]),
                     "fps": med(lambda g: g["fps"]), "ratio": med(lambda g: g["fps"] / g["net"]),
                     "ratios": [g["fps"] / g["net"] for g in v], "steady_ratio": med(lambda g: g["steady"] / g["net"]),
                     "network_cpu_ms": 1e3 * med(lambda g: g["net_cpu"]), "cpu_ms": 1e3 * med(lambda g: g["cpu"])})
    return bench, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="prfdn-x2")
    ap.add_argument("--size", default="240x320", help="frame HxW")
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--batch", type=int, default=None, help="frames per network call (default: the backend's)")
    ap.add_argument("--presets", default="medium,veryfast", help="x264 presets, comma-separated")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=".mp4", help="output container suffix")
    ap.add_argument("--no-one-thread", action="store_true", help="time the pipelined path only")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    from prfdn_jax.backends import choices, configure_xla_flags

    configure_xla_flags()
    batch = a.batch or choices().video_batch
    h, w = (int(v) for v in a.size.split("x"))
    bench, rows = measure(a.model, (h, w), a.frames, batch, a.presets.split(","), a.rounds, a.dtype, a.out,
                          not a.no_one_thread)
    import jax

    print(f"{a.model}, {w}x{h} frames, batch {batch}, {a.dtype}, {a.frames}-frame clip, {a.rounds} rounds, "
          f"{jax.devices()[0].device_kind}; prfdn bench: {batch / bench['median_ms'] * 1e3:.2f} frames/s\n")
    print("| mode | x264 preset | network frames/s | end-to-end frames/s | end to end / network (each round) | "
          "steady state / network | CPU ms per frame: network, end to end |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        each = ", ".join(f"{v:.2f}" for v in r["ratios"])
        print(f"| {r['mode']} | {r['preset']} | {r['network_fps']:.2f} | {r['fps']:.2f} | **{r['ratio']:.2f}** "
              f"({each}) | {r['steady_ratio']:.2f} | {r['network_cpu_ms']:.0f}, {r['cpu_ms']:.0f} |")
    if a.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
