"""A training run's metrics: ``metrics.csv``, TensorBoard events in ``tb/``, ``metrics.png``."""

from __future__ import annotations

import csv
import sys
import warnings
from pathlib import Path

CSV_FIELDS = ("step", "loss", "lr", "psnr_y", "steps_per_s", "elapsed_s")


def summary_writer_class():
    """tensorboardX's SummaryWriter, imported without importing torch when torch is not loaded yet.

    tensorboardX imports torch only to recognise torch tensors; scalars never need it, and torch
    costs seconds to import (and is an optional dependency).
    """
    if "torch" in sys.modules or "tensorboardX" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # makes `import torch` inside tensorboardX raise ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricsLog:
    """metrics.csv (kept up to the resume step), TensorBoard events in tb/, metrics.png at close."""

    def __init__(self, workdir: Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = workdir / "metrics.csv"
        self.plot_path = workdir / "metrics.png"
        self.rows: list[dict] = []
        self.tb = None
        if not enabled:
            return
        if self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= start_step]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(self.rows)
        try:
            SummaryWriter = summary_writer_class()
            self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start_step or None, flush_secs=30)
        except ImportError:
            warnings.warn("tensorboardX is not installed: no TensorBoard events", stacklevel=2)

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        row = {k: ("" if row.get(k) is None else repr(row[k]) if isinstance(row[k], float) else row[k])
               for k in CSV_FIELDS}
        self.rows.append(row)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("steps_per_s", "train/steps_per_s"),
                             ("psnr_y", "val/psnr_y")):
                if row[key] != "":
                    self.tb.add_scalar(tag, float(row[key]), step)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            self.tb.close()
        plot_metrics(self.rows, self.plot_path)


def plot_metrics(rows: list[dict], path: Path) -> None:
    """Loss (log scale) and validation PSNR-Y against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
        return ([p[0] for p in pts], [p[1] for p in pts])

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.9, wspace=0.25)
    x, y = series("loss")
    a.plot(x, y, lw=1)
    a.set(xlabel="step", ylabel="L1 loss / 255", title="training loss")
    if y and min(y) > 0:
        a.set_yscale("log")
    x, y = series("psnr_y")
    b.plot(x, y, "o-", ms=3)
    if not x:
        b.text(0.5, 0.5, "no validation set", ha="center", va="center", transform=b.transAxes)
    b.set(xlabel="step", ylabel="dB", title="validation PSNR-Y")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
