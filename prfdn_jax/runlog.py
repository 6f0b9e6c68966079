"""A workdir's record of its runs (``arch.json``, ``config.json``, ``runs.jsonl``) and a run's metrics
(``metrics.csv``, TensorBoard events in ``tb/``, ``metrics.png``)."""

from __future__ import annotations

import csv
import json
import sys
import time
import warnings
from pathlib import Path

from prfdn_jax.fileio import atomic_write

# images_per_s: global batch x steps/s; data_wait: share of the interval's wall time spent waiting for the
# next batch (0: never, 1: always). Columns are only appended, so older files read by name still work.
CSV_FIELDS = ("step", "loss", "lr", "psnr_y", "steps_per_s", "elapsed_s", "images_per_s", "data_wait")


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


RUNS = "runs.jsonl"  # one JSON line per run: time, start_step, changes, skipped_checkpoints, config


def previous_config(workdir: Path) -> dict | None:
    """The config of the workdir's latest run (``config.json``, else the last line of ``runs.jsonl``)."""
    try:
        d = json.loads((workdir / "config.json").read_text())
        if isinstance(d, dict):
            return d
    except (OSError, ValueError):
        pass
    try:
        lines = (workdir / RUNS).read_text().splitlines()
        return json.loads(lines[-1])["config"] if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text)


def record_run(workdir: Path, *, arch_json: str, config: dict, start_step: int, changes: dict,
               skipped: list | None = None, resolved: dict | None = None) -> None:
    """Write ``arch.json`` and ``config.json`` (the latest run's) and append this run to ``runs.jsonl``.

    ``resolved``: what the config left to the machine, as this run chose it (apply path, compute dtype,
    backend, devices)."""
    _write_text(workdir / "arch.json", arch_json)
    _write_text(workdir / "config.json", json.dumps(config, indent=1, default=str))
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "start_step": start_step,
             "changes": {k: {"was": o, "now": n} for k, (o, n) in changes.items()}}
    if skipped:
        entry["skipped_checkpoints"] = [{"step": s, "why": why} for s, why in skipped]
    if resolved:
        entry["resolved"] = resolved
    entry["config"] = config
    with open(workdir / RUNS, "a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


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
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")  # older files: missing columns stay empty
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
            csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow(row)
        if self.tb is not None:
            step = int(row["step"])
            for key, tag in (("loss", "train/loss"), ("lr", "train/lr"), ("steps_per_s", "train/steps_per_s"),
                             ("images_per_s", "train/images_per_s"), ("data_wait", "train/data_wait"),
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
