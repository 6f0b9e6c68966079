"""Stopping and sharing a training workdir: SIGTERM and Ctrl-C checkpoint the last completed step (and the
resume is bit-exact), one run at a time per workdir (the lock, released by SIGKILL too).

The runs use the smoke config with an EMA (``EMA``, as tests/test_train.py: the compiled step is shared).
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prfdn_jax import train
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.cli import main
from prfdn_jax.config import load_config
from prfdn_jax.workdir import WorkdirBusy, load_workdir_model, workdir_lock

from helpers import ROOT, shared_path

SMOKE = str(ROOT / "experiments" / "smoke_x2.py")
EMA = 0.9


@pytest.fixture(scope="module")
def set14():
    return str(shared_path("data", "Set14", "HR"))


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE).replace(ema_decay=EMA)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _steps(w: Path) -> list[int]:
    d = w / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []


def _metric_steps(w: Path) -> list[int]:
    try:
        with open(w / "metrics.csv", newline="") as f:
            return [int(r["step"]) for r in csv.DictReader(f) if r.get("step")]
    except (OSError, ValueError):
        return []


def _assert_same_run(a: Path, b: Path) -> None:
    """The parameters and the EMA of workdirs ``a`` and ``b`` are equal bit for bit."""
    for ema in (True, False):
        pa, pb = flat_params(load_workdir_model(a, ema=ema)), flat_params(load_workdir_model(b, ema=ema))
        assert pa.keys() == pb.keys()
        for k in pa:
            np.testing.assert_array_equal(pa[k], pb[k], err_msg=f"{k} (ema={ema})")


def _snapshot(w: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(w.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, set14):
    """``prfdn train`` in a subprocess (steps without end, no periodic checkpoint), sent SIGTERM once it
    has logged two steps."""
    w = tmp_path_factory.mktemp("sigterm") / "w"
    argv = [SMOKE, "--workdir", str(w), "--data", set14, "--steps", "1000000", "--set", "ckpt_every=1000000",
            "log_every=1", f"ema_decay={EMA}"]
    proc = subprocess.Popen([sys.executable, "-m", "prfdn_jax.cli", "train", *argv], env=_env(), cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and len(_metric_steps(w)) < 2:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"workdir": w, "argv": argv, "rc": proc.returncode, "err": err}


def test_sigterm_checkpoints_the_last_step_then_resumes_bit_exactly(sigterm_run, cfg, set14, tmp_path, capsys):
    w, err = sigterm_run["workdir"], sigterm_run["err"]
    assert sigterm_run["rc"] == 143, err[-3000:]
    steps = _steps(w)
    assert len(steps) == 1 and steps[0] >= 2, (steps, err[-3000:])
    stopped = steps[0]
    lines = [line for line in err.splitlines() if line.startswith("prfdn")]
    assert lines == [f"prfdn: stopped by SIGTERM at step {stopped}; checkpoint {w / 'checkpoints' / str(stopped)}; "
                     "resume with the same --workdir"], err[-3000:]
    assert _metric_steps(w)[-1] == stopped  # the steps since the last row were logged too
    assert not (w / ".lock").exists()
    # resumed here to two steps further, equal to a run that was never stopped
    total = stopped + 2
    argv = [a if a != "1000000" else str(total) for a in sigterm_run["argv"]]
    assert main(["train", *argv]) == 0
    assert f"steps {stopped}->{total}" in capsys.readouterr().out
    train.train(cfg, tmp_path / "ref", [set14], steps=total, verbose=False)
    _assert_same_run(tmp_path / "ref", w)


def test_ctrl_c_checkpoints_the_last_step_then_resumes_bit_exactly(cfg, set14, tmp_path, monkeypatch, capsys):
    real = train.cached_train_step

    def ctrl_c_during_step_3(*a, **k):
        step = real(*a, **k)

        def f(state, batch):
            if int(state.step) == 2:
                train.request_stop(signal.SIGINT)  # what the first Ctrl-C does (stop_on_signals)
            return step(state, batch)

        return f

    w = tmp_path / "w"
    argv = ["train", SMOKE, "--workdir", str(w), "--data", set14, "--steps", "6", "--set", "ckpt_every=100",
            "log_every=2", f"ema_decay={EMA}"]
    monkeypatch.setattr(train, "cached_train_step", ctrl_c_during_step_3)
    assert main(argv) == 130
    assert capsys.readouterr().err == (f"prfdn: interrupted (Ctrl-C) at step 3; checkpoint {w / 'checkpoints' / '3'}; "
                                       "resume with the same --workdir\n")
    assert _steps(w) == [3] and _metric_steps(w) == [2, 3] and not (w / ".lock").exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert _steps(w) == [3, 6] and _metric_steps(w) == [2, 3, 4, 6]
    train.train(cfg, tmp_path / "ref", [set14], steps=6, verbose=False)
    _assert_same_run(tmp_path / "ref", w)


def test_a_stop_before_any_step_saves_nothing(cfg, set14, tmp_path):
    train.request_stop(signal.SIGTERM)
    with pytest.raises(train.TrainingStopped, match="stopped by SIGTERM at step 0; nothing saved") as e:
        train.train(cfg, tmp_path / "w", [set14], steps=4, verbose=False)
    assert e.value.saved is None and train.stop_requested() is None
    assert not (tmp_path / "w" / "checkpoints").exists()


HOLD = """
import sys, time
from prfdn_jax.workdir import workdir_lock
with workdir_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def test_one_run_per_workdir_and_sigkill_frees_it(cfg, set14, tmp_path, capsys):
    w = tmp_path / "w"
    shutil.copytree(ROOT / "tests" / "data" / "old_workdir", w)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(w)], env=_env(), cwd=ROOT, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert (w / ".lock").read_text().strip() == str(holder.pid)
        before = _snapshot(w)
        argv = ["train", SMOKE, "--workdir", str(w), "--data", set14, "--steps", "6", "--set", f"ema_decay={EMA}",
                "keep=1"]
        r = subprocess.run([sys.executable, "-m", "prfdn_jax.cli", *argv], env=_env(), cwd=ROOT, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 1, r.stderr[-3000:]
        assert r.stderr == f"prfdn: error: {w}: the workdir is in use by another run (PID {holder.pid})\n"
        with pytest.raises(WorkdirBusy):  # in this process too
            train.train(cfg, w, [set14], steps=6, verbose=False)
        assert _snapshot(w) == before  # nothing touched
    finally:
        holder.kill()  # SIGKILL: the OS drops the lock; the stale .lock file is taken over
        holder.wait()
    assert (w / ".lock").exists()
    assert main(argv) == 0
    assert _steps(w) == [6] and not (w / ".lock").exists()
    with workdir_lock(w):  # and released again
        assert (w / ".lock").read_text().strip() == str(os.getpid())
    assert not (w / ".lock").exists()
    capsys.readouterr()
