"""Start-up of ``prfdn upscale one.png -o out.png``: the whole command, from the command line to the written
file, and where its time goes (imports, weights, deploy passes, compile, compute, reading and writing).

    python experiments/startup.py [--image examples/butterfly_lr.png] [--model prfdn-x2] [--repeats 3]

Each measurement is a fresh process (median of ``--repeats``). The whole command runs with the compile
cache off, with an empty cache and with the cache it filled; the split runs the command's steps one by
one in a process of its own (cache off). Prints markdown tables (BENCHMARKS.md, "Throughput").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "onnx", "onnxruntime", "av", "matplotlib", "orbax", "grain", "tensorstore", "optax", "flax", "jax")

SPLIT = r"""
import json, sys, time
t = {}
t0 = time.perf_counter()
from prfdn_jax.backends import configure_xla_flags
configure_xla_flags()
from prfdn_jax import registry
from prfdn_jax.deploy import deploy
from prfdn_jax.imaging import read_image, write_image
from prfdn_jax.inference import upscale_array
import jax
jax.numpy.zeros(1).block_until_ready()  # the backend started
t["import (and JAX backend start)"] = time.perf_counter() - t0
t0 = time.perf_counter(); img = read_image(sys.argv[1]); t["read the image"] = time.perf_counter() - t0
t0 = time.perf_counter(); model = registry.load(sys.argv[2]); t["load the weights, build the network"] = time.perf_counter() - t0
t0 = time.perf_counter(); d = deploy(model); t["deploy passes"] = time.perf_counter() - t0
x = img.rgb.astype("float32")[None]
t0 = time.perf_counter(); d(x).block_until_ready(); first = time.perf_counter() - t0
t0 = time.perf_counter(); d(x).block_until_ready(); t["compute (a compiled run)"] = time.perf_counter() - t0
t["trace, lower and compile (first run - compiled run)"] = first - t["compute (a compiled run)"]
t0 = time.perf_counter(); sr = upscale_array(d, img.rgb, model.arch.scale); write_image(sys.argv[3], sr, None)
t["upscale_array + write the PNG"] = time.perf_counter() - t0 - t["compute (a compiled run)"]
heavy = [m for m in sys.argv[4].split(",") if m in sys.modules]
print(json.dumps({"t": t, "heavy": heavy}))
"""


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def _wall(argv: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, cwd=tempfile.gettempdir())
    return time.perf_counter() - t0


def _imports(code: str, env: dict) -> list[str]:
    probe = f"{code}\nimport sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True,
                         cwd=tempfile.gettempdir())
    lines = out.stdout.strip().splitlines()
    return [m for m in lines[-1].split(",") if m] if lines else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(ROOT / "examples" / "butterfly_lr.png"))
    ap.add_argument("--model", default="prfdn-x2")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="prfdn-startup-"))
    out = tmp / "out.png"
    cmd = [sys.executable, "-m", "prfdn_jax.cli", "upscale", a.image, "-o", str(out), "--model", a.model]
    rows = []
    off = _env(PRFDN_CACHE_DIR="off")
    rows.append(("`prfdn --help`", [_wall([sys.executable, "-m", "prfdn_jax.cli", "--help"], off)
                                    for _ in range(a.repeats)]))
    rows.append(("upscale, compile cache off", [_wall(cmd + ["--overwrite"], off) for _ in range(a.repeats)]))
    empty = []
    for i in range(a.repeats):
        empty.append(_wall(cmd + ["--overwrite"], _env(PRFDN_CACHE_DIR=str(tmp / f"cache{i}"))))
    rows.append(("upscale, empty compile cache (first run)", empty))
    warm = _env(PRFDN_CACHE_DIR=str(tmp / "cache0"))
    rows.append(("upscale, warm compile cache (second run)", [_wall(cmd + ["--overwrite"], warm)
                                                              for _ in range(a.repeats)]))
    print("| command (fresh process each) | median s |\n|---|---|")
    for name, ts in rows:
        print(f"| {name} | {statistics.median(ts):.2f} |")
    splits = []
    for _ in range(a.repeats):
        res = subprocess.run([sys.executable, "-c", SPLIT, a.image, a.model, str(tmp / "split.png"), ",".join(HEAVY)],
                             env=off, check=True, capture_output=True, text=True, cwd=tempfile.gettempdir())
        splits.append(json.loads(res.stdout.strip().splitlines()[-1]))
    print(f"\n| {a.model}, {Path(a.image).name}: step (cache off) | median s |\n|---|---|")
    for k in splits[0]["t"]:
        print(f"| {k} | {statistics.median(s['t'][k] for s in splits):.3f} |")
    print("\n| path | heavy modules imported |\n|---|---|")
    helps = _imports("from prfdn_jax.cli import build_parser; build_parser([])", off)
    print(f"| `prfdn --help` | {', '.join(helps) or 'none'} |")
    run = f"from prfdn_jax.cli import main; main(['upscale', {a.image!r}, '-o', {str(out)!r}, '--overwrite'])"
    print(f"| `prfdn upscale one.png` | {', '.join(_imports(run, off))} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
