"""The pruning report: one row per pruning step (cost and quality), ``pareto.csv`` and ``pareto.png``.

A row: ``step, ratio, params, gmac`` (``macs.macs`` at the report's input size, the NTIRE organisers'
definition), ``gmac_1080p``, ``latency_ms`` (the deployed network on the CPU at that size: the timing code
of ``prfdn bench``, :func:`prfdn_jax.bench.bench_jax`), and ``psnr_<set>`` (Y-PSNR, ``scale`` border pixels,
the code of ``prfdn eval``) for every validation set. The picture plots PSNR against GMAC, one labelled
point per step and set: the curve a user picks a network from.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from flax import nnx

from prfdn_jax import macs

CSV_NAME, PNG_NAME = "pareto.csv", "pareto.png"
BASE_FIELDS = ("step", "ratio", "params", "gmac", "gmac_1080p", "latency_ms")


def measurer(size: tuple[int, int], val_sets: Mapping[str, list] | None = None, *, latency: bool = True,
             latency_runs: int = 3) -> Callable[[nnx.Module], dict]:
    """``measure(model) -> {'gmac', 'latency_ms', 'psnr_<set>'...}`` at input ``size`` (H, W).

    val_sets: ``{name: [(name, lr, hr)]}`` from :func:`prfdn_jax.evaluate.load_eval_set`.
    """
    import jax
    import numpy as np

    def measure(model: nnx.Module) -> dict:
        from prfdn_jax.evaluate import evaluate, forward

        out = {"gmac": macs.summary(model, *size)["gmac"]}
        if latency:
            from prfdn_jax.bench import bench_jax

            with jax.default_device(jax.devices("cpu")[0]):
                x = np.zeros((1, *size, 3), np.float32)
                out["latency_ms"] = bench_jax(model, x, warmup=1, runs=latency_runs)["median_ms"]
        f = forward(model) if val_sets else None
        for name, items in (val_sets or {}).items():
            out[f"psnr_{name}"] = evaluate(f, items, model.arch.scale, with_ssim=False)["psnr_y"]
        return out

    return measure


def fields(rows: Sequence[dict]) -> list[str]:
    """The CSV columns: the base fields, then every ``psnr_<set>`` in first-seen order."""
    extra = [k for r in rows for k in r if k.startswith("psnr_")]
    return list(BASE_FIELDS) + list(dict.fromkeys(extra))


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    from prfdn_jax.fileio import atomic_write

    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields(rows), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    return path


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: _num(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _num(v: str):
    if v in ("", None):
        return None
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


def plot(rows: Sequence[dict], path: str | Path, size: tuple[int, int], title: str = "") -> Path:
    """PSNR against GMAC at ``size``, one point per step and validation set, labelled with the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prfdn_jax.fileio import atomic_write

    sets = [k for k in fields(rows) if k.startswith("psnr_")]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key in sets:
        pts = [(r["gmac"], r[key], r["step"]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key.removeprefix("psnr_"))
        for x, y, s in pts:
            ax.annotate(str(s), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if sets:
        ax.legend(title="Y-PSNR")
    else:
        ax.text(0.5, 0.5, "no validation set (--val)", ha="center", transform=ax.transAxes)
    ax.set(xlabel=f"GMAC at a {size[1]}x{size[0]} input", ylabel="PSNR-Y (dB)",
           title=title or "PSNR against GMAC, one point per pruning step")
    ax.grid(alpha=0.3)
    ax.margins(x=0.12, y=0.12)
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def write_report(rows: Sequence[dict], folder: str | Path, size: tuple[int, int], title: str = "") -> tuple[Path, Path]:
    """``(pareto.csv, pareto.png)`` in ``folder``."""
    folder = Path(folder)
    return write_csv(rows, folder / CSV_NAME), plot(rows, folder / PNG_NAME, size, title)
