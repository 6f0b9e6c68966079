"""``prfdn bench folder [DIR]``: a folder of mixed image sizes upscaled as users run it, against one size.

Each run is a fresh ``prfdn upscale DIR -o OUT`` process (start-up, imports and compiles included), timed
from the command to its exit, with its peak memory (the process's maximum RSS). The mixed folder (DIR,
or :data:`COUNT` images of distinct sizes :data:`SIDES` made with a fixed seed) runs twice per
``--bucket`` mode: first with an empty compile cache, then again with the cache the first run filled.
The same-run baseline is a folder of as many images at one size holding the same pixels in all, also
run twice. The ratio is each mixed run's time over the baseline's run of the same kind (first, second).
The jobs run interleaved, so a machine's changing load reaches them alike; the CPU seconds of each process
(user + system) are given too, steadier than wall time where other jobs share the machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

COUNT = 60           # images in the made folder
SIDES = (100, 400)   # their heights and widths, each drawn in this range (all sizes distinct)
SEED = 0
BUCKETS = ("off", "auto", "128")
TARGETS = {"first": 3.0, "second": 1.5}  # issue 18: times the one-size baseline; peak under 1 GB
PEAK_TARGET_MB = 1000


def _image(rng, h: int, w: int) -> np.ndarray:
    """A smooth random colour image (a small random field, bicubic-enlarged) with a little noise."""
    from PIL import Image

    small = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    img = np.asarray(small.resize((w, h), Image.BICUBIC), np.int16) + rng.integers(-8, 9, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_mixed(folder: Path, count: int = COUNT, sides: tuple[int, int] = SIDES, seed: int = SEED) -> list:
    """``count`` PNG images of distinct random sizes (each side in ``sides``) in ``folder``; their sizes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes: list[tuple[int, int]] = []
    while len(sizes) < count:
        s = tuple(int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
        if s not in sizes:
            sizes.append(s)
    folder.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(_image(rng, h, w)).save(folder / f"mixed_{i:03d}_{w}x{h}.png")
    return sizes


def make_one_size(folder: Path, count: int, side: int, seed: int = SEED) -> None:
    """``count`` PNG images of ``side x side`` pixels in ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.fromarray(_image(rng, side, side)).save(folder / f"one_{i:03d}.png")


def run_upscale(src: Path, out: Path, cache: Path, extra: list[str]) -> dict:
    """One ``prfdn upscale src -o out`` process with the compile cache in ``cache``: seconds and peak MB."""
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PRFDN_CACHE_DIR=str(cache), PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    shutil.rmtree(out, ignore_errors=True)
    argv = [sys.executable, "-c", "import sys; from prfdn_jax.cli import main; sys.exit(main(sys.argv[1:]))",
            "upscale", str(src), "-o", str(out), *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tempfile.gettempdir())
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    seconds = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        raise RuntimeError(f"prfdn upscale {src} failed ({p.returncode}): {err.decode().strip()[-300:]}")
    return {"seconds": seconds, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024}


def bench_folder(folder: Path | None, model_args: list[str], buckets=BUCKETS, work: Path | None = None,
                 count: int = COUNT, rounds: int = 1) -> dict:
    """Rows of the folder benchmark (module doc); ``folder`` None: a mixed folder is made. The jobs run
    interleaved (every first run, then every second run) ``rounds`` times, each round with empty caches;
    a row holds the median. Everything it writes (made folders, outputs, compile caches) goes to ``work``,
    by default a temporary folder removed at the end."""
    if work is None:
        with tempfile.TemporaryDirectory(prefix="prfdn-bench-folder-") as tmp:
            return bench_folder(folder, model_args, buckets, Path(tmp), count, rounds)
    from prfdn_jax.imaging import list_images
    from prfdn_jax.throughput import image_size

    work = Path(work)
    if folder is None:
        folder = work / "mixed"
        make_mixed(folder, count)
    sizes = [s for s in (image_size(p) for p in list_images(folder)) if s]
    if not sizes:
        raise ValueError(f"{folder}: no readable images")
    side = int(round(np.sqrt(np.mean([h * w for h, w in sizes]))))
    make_one_size(work / "one", len(sizes), side)
    jobs = [(f"one size ({side}x{side})", work / "one", [])] + [
        (f"mixed, --bucket {b}", folder, ["--bucket", b]) for b in buckets]
    runs: dict = {}
    for k in range(rounds):
        for run in ("first", "second"):
            for i, (label, src, extra) in enumerate(jobs):
                r = run_upscale(src, work / "out", work / f"cache-{k}-{i}", [*extra, *model_args])
                runs.setdefault((label, run), []).append(r)
    rows = [{"job": label, "run": run, "images": len(sizes),
             "seconds": float(np.median([r["seconds"] for r in rs])),
             "cpu_s": float(np.median([r["cpu_s"] for r in rs])),
             "peak_mb": float(max(r["peak_mb"] for r in rs))} for (label, run), rs in runs.items()]
    rows.sort(key=lambda r: ([j[0] for j in jobs].index(r["job"]), r["run"] != "first"))
    base = {r["run"]: r for r in rows[:2]}
    for r in rows:
        r["images_per_s"] = r["images"] / r["seconds"]
        r["ratio"] = r["seconds"] / base[r["run"]]["seconds"]
        r["cpu_ratio"] = r["cpu_s"] / base[r["run"]]["cpu_s"]
    made = folder == work / "mixed"
    return {"rows": rows, "folder": f"made (seed {SEED})" if made else str(folder), "images": len(sizes),
            "distinct": len(set(sizes)), "pixels": int(sum(h * w for h, w in sizes)), "side": side,
            "rounds": rounds}


def format_folder(res: dict) -> str:
    """The benchmark as a markdown table, with the targets of the default (``--bucket auto``)."""
    lines = [f"{res['images']} images ({res['distinct']} distinct sizes, {res['pixels'] / 1e6:.2f} Mpx), folder "
             f"{res['folder']}; one-size baseline: as many images of {res['side']}x{res['side']} (same pixels); "
             f"median of {res.get('rounds', 1)} round(s), peak: the largest",
             "", "| job | run (compile cache) | s | images/s | peak MB | vs one size | CPU s | CPU vs one size |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        cache = "empty" if r["run"] == "first" else "warm"
        lines.append(f"| {r['job']} | {r['run']} ({cache}) | {r['seconds']:.1f} | {r['images_per_s']:.2f} | "
                     f"{r['peak_mb']:.0f} | {r['ratio']:.2f} | {r['cpu_s']:.1f} | {r['cpu_ratio']:.2f} |")
    auto = [r for r in res["rows"] if r["job"] == "mixed, --bucket auto"]
    if auto:
        verdict = [f"{r['run']} run {r['ratio']:.2f}x (target <= {TARGETS[r['run']]:g}x: "
                   f"{'met' if r['ratio'] <= TARGETS[r['run']] else 'missed'})" for r in auto]
        peak = max(r["peak_mb"] for r in auto)
        verdict.append(f"peak {peak:.0f} MB (target < {PEAK_TARGET_MB} MB: {'met' if peak < PEAK_TARGET_MB else 'missed'})")
        lines += ["", "default (--bucket auto): " + "; ".join(verdict)]
    return "\n".join(lines)
