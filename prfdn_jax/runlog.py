"""A training run's metrics and progress: ``metrics.csv``, TensorBoard events in ``tb/``, ``metrics.png``
(:class:`MetricsLog`), timing, the progress bar and the summary (:class:`Progress`). The file names
and the rest of a workdir: :mod:`prfdn_jax.workdir`."""

from __future__ import annotations

import csv
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from prfdn_jax.workdir import METRICS, METRICS_PLOT, TB_DIR

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


class MetricsLog:
    """metrics.csv (kept up to the resume step), TensorBoard events in tb/, metrics.png at close."""

    def __init__(self, workdir: Path, start_step: int, enabled: bool = True):
        self.enabled = enabled
        self.path = workdir / METRICS
        self.plot_path = workdir / METRICS_PLOT
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
            self.tb = SummaryWriter(str(workdir / TB_DIR), purge_step=start_step or None, flush_secs=30)
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


class Progress:
    """A training loop's bookkeeping: batch waits and steps/s, the metrics rows (a :class:`MetricsLog`), the
    progress bar, the summary. ``steps``: the run's last step; ``batch``: the global batch; ``sched``: lr of a
    (0-based) step; ``enabled``: this process writes metrics; ``verbose``: progress bar and a closing line."""

    def __init__(self, workdir: Path, start: int, steps: int, batch: int, sched, *, enabled: bool = True,
                 verbose: bool = True):
        self.workdir, self.start, self.steps, self.batch, self.sched = workdir, start, steps, batch, sched
        self.verbose = verbose and enabled
        self.log = MetricsLog(workdir, start, enabled=enabled)
        self.pbar = None
        if self.verbose:
            from prfdn_jax.progress import progress

            # a bar on a terminal, else a plain line every PRFDN_PROGRESS_EVERY seconds (10)
            self.pbar = progress(None, steps, workdir.name, unit="step", initial=min(start, steps), min_total=1)
        self.losses: list[tuple[int, float]] = []  # (step, mean loss) and (step, PSNR-Y) of the logged rows
        self.psnrs: list[tuple[int, float]] = []
        self.batch_shards = None  # set by the loop: the LR batch shapes this process's devices hold
        self.t0 = time.perf_counter()
        self.t_last, self.s_last = self.t0, start
        self.wait, self.wait_total = 0.0, 0.0  # seconds blocked in next(it): this log interval, the whole run

    def next_batch(self, it):
        t = time.perf_counter()
        batch = next(it)
        self.wait += time.perf_counter() - t
        return batch

    def interval(self, step: int, losses: list[float]) -> dict:
        """The metrics row of the log interval ending at ``step`` (its losses ``losses``)."""
        now = time.perf_counter()
        sps = (step - self.s_last) / max(now - self.t_last, 1e-9)
        share = self.wait / max(now - self.t_last, 1e-9)
        self.t_last, self.s_last, self.wait_total, self.wait = now, step, self.wait_total + self.wait, 0.0
        mean_loss = float(np.mean(losses))
        self.losses.append((step, mean_loss))
        return {"step": step, "loss": mean_loss, "lr": float(self.sched(step - 1)), "steps_per_s": round(sps, 3),
                "elapsed_s": round(now - self.t0, 3), "images_per_s": round(sps * self.batch, 2),
                "data_wait": round(share, 4)}

    def write(self, row: dict) -> None:
        if "psnr_y" in row:
            self.psnrs.append((row["step"], row["psnr_y"]))
        self.log.write(row)
        if self.pbar is not None:
            self.pbar.set_postfix(loss=f"{row['loss']:.4g}", **{"img/s": f"{row['images_per_s']:.4g}",
                                                                "data": f"{row['data_wait']:.0%}"},
                                  **({"psnr": f"{row['psnr_y']:.2f}"} if "psnr_y" in row else {}))

    def tick(self) -> None:
        if self.pbar is not None:
            self.pbar.update(1)

    def close(self) -> None:
        if self.pbar is not None:
            self.pbar.close()
        self.log.close()

    def summary(self, step: int) -> dict:
        wall, done, start = time.perf_counter() - self.t0, step - self.start, self.start
        timed = done and wall > 0
        psnrs = self.psnrs
        s = {"start_step": start, "step": step, "steps": self.steps,
             "loss": self.losses[-1][1] if self.losses else None,
             "psnr_y": psnrs[-1][1] if psnrs else None, "best_psnr_y": max(p for _, p in psnrs) if psnrs else None,
             "wall_s": round(wall, 3), "steps_per_s": round(done / wall, 3) if timed else None,
             "images_per_s": round(done * self.batch / wall, 2) if timed else None,
             "data_wait": round((self.wait_total + self.wait) / wall, 4) if timed else None,
             "losses": self.losses, "batch_shards": self.batch_shards}
        if self.verbose:
            msg = f"[train] {self.workdir}: steps {start}->{step} in {wall:.1f}s"
            if done:
                msg += (f" ({s['steps_per_s']} steps/s, {s['images_per_s']} img/s, "
                        f"{s['data_wait']:.0%} waiting for data), loss {s['loss']:.5g}")
            if psnrs:
                msg += f", PSNR-Y {s['psnr_y']:.3f} dB (best {s['best_psnr_y']:.3f})"
            print(msg, flush=True)
        return s


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
