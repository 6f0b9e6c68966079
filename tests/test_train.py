"""Tests for prfdn_jax.train: exact resume (also after SIGKILL), data parallelism, NaN stop, workdirs, `prfdn train`.

The tiny smoke config (experiments/smoke_x2.py, here with an EMA of the parameters: ``EMA``) compiles one
train step per process and runs in this process share it (train's jit cache); compiling dominates the
run time on a CPU. Resumes are checked bit for bit on both the parameters and their EMA.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prfdn_jax import train
from prfdn_jax.checkpoint import flat_params, load_any
from prfdn_jax.cli import main
from prfdn_jax.config import ConfigError, TrainConfig, check_config, load_config, override
from prfdn_jax.workdir import WorkdirError, load_workdir_model, workdir_manager

from helpers import ROOT, shared_path

SMOKE = str(ROOT / "experiments" / "smoke_x2.py")
EMA = 0.9  # ema_decay of the runs here (one compiled step for all of them)


@pytest.fixture(scope="module")
def set14():
    return str(shared_path("data", "Set14", "HR"))


@pytest.fixture(scope="module")
def set5():
    return str(shared_path("data", "Set5", "HR"))


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE).replace(ema_decay=EMA)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cfg, set14, set5):
    """A: 6 steps in one go (with validation); B: 3 steps, then resumed to 6."""
    root = tmp_path_factory.mktemp("runs")
    a = train.train(cfg.replace(val_dirs=(set5,), val_every=3, val_limit=1, ckpt_every=10), root / "A", [set14],
                    steps=6)
    b3 = train.train(cfg, root / "B", [set14], steps=3)
    b6 = train.train(cfg, root / "B", [set14], steps=6)
    return {"root": root, "A": a, "B3": b3, "B6": b6}


def _params(workdir, ema=True):
    return flat_params(load_workdir_model(workdir, ema=ema))


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_resume_is_bit_identical(runs):
    root = runs["root"]
    assert runs["B3"]["step"] == 3 and runs["B6"]["start_step"] == 3 and runs["B6"]["step"] == 6
    _assert_same_params(_params(root / "A"), _params(root / "B"))  # the EMA
    _assert_same_params(_params(root / "A", ema=False), _params(root / "B", ema=False))  # the parameters
    ema, raw = _params(root / "A"), _params(root / "A", ema=False)
    assert any(not np.array_equal(ema[k], raw[k]) for k in ema)
    assert [s for s, _ in runs["A"]["losses"]] == [1, 2, 3, 4, 5, 6]
    assert runs["A"]["losses"][3:] == runs["B6"]["losses"]  # the resumed run saw the same batches


def test_workdir_files_and_metrics(runs):
    a = runs["root"] / "A"
    for name in ("arch.json", "config.json", "metrics.csv", "metrics.png"):
        assert (a / name).is_file(), name
    assert list((a / "tb").glob("events.out.tfevents.*"))
    assert (a / "metrics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import csv

    rows = list(csv.DictReader(open(a / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    psnr = {int(r["step"]): r["psnr_y"] for r in rows if r["psnr_y"]}
    assert sorted(psnr) == [3, 6] and all(0 < float(v) < 60 for v in psnr.values())
    assert runs["A"]["psnr_y"] == pytest.approx(float(psnr[6]))
    # the resumed run rewrote its CSV without duplicates
    rows_b = list(csv.DictReader(open(runs["root"] / "B" / "metrics.csv")))
    assert [int(r["step"]) for r in rows_b] == [1, 2, 3, 4, 5, 6]
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["nf"] == 8 and cfg["steps"] == 6
    # runs.jsonl: one line per run, with what changed against the run before
    runs_b = [json.loads(line) for line in (runs["root"] / "B" / "runs.jsonl").read_text().splitlines()]
    assert [r["start_step"] for r in runs_b] == [0, 3]
    assert runs_b[0]["changes"] == {} and runs_b[1]["changes"] == {"steps": {"was": 3, "now": 6}}
    assert runs_b[1]["config"] == json.loads((runs["root"] / "B" / "config.json").read_text())


def test_load_workdir_model_and_load_any(runs, tmp_path):
    a = runs["root"] / "A"
    m = load_any(a)
    assert m.arch.to_json() == (a / "arch.json").read_text()
    _assert_same_params(flat_params(m), _params(a))
    with pytest.raises(WorkdirError, match="not a training workdir"):
        load_workdir_model(tmp_path)
    (tmp_path / "arch.json").write_text((a / "arch.json").read_text())
    with pytest.raises(WorkdirError, match="without checkpoints"):
        load_workdir_model(tmp_path)


def test_resume_with_another_network_is_refused(runs, cfg, set14):
    from prfdn_jax.networks import default_arch

    other = train.random_init(default_arch("rfdn", nf=12, scale=2))
    with pytest.raises(ConfigError, match="another network"):
        train.train(cfg, runs["root"] / "A", [set14], steps=7, model=other)


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _finished_steps(workdir: Path) -> list[int]:
    d = workdir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


KILL_STEPS = 30


@pytest.fixture(scope="module", autouse=True)
def killed_run(tmp_path_factory, set14):
    """``prfdn train`` (``python -m prfdn_jax.cli train``) in a subprocess, SIGKILLed once its first checkpoint is written.

    Started before the tests (it compiles in parallel with this process); a thread watches and kills.
    """
    import threading

    from prfdn_jax.prepare import prepare

    tmp = tmp_path_factory.mktemp("killed")
    w = tmp / "w"
    data = str(tmp / "set14_x2.array_record")  # prepared pairs: the fast input path, resumed exactly too
    prepare([set14], data, scale=2)
    argv = [SMOKE, "--workdir", str(w), "--data", data, "--steps", str(KILL_STEPS), "--set", "ckpt_every=2",
            "log_every=5", f"ema_decay={EMA}"]
    log = open(tmp / "log.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "prfdn_jax.cli", "train", *argv], env=_env(), cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    state = {"killed": False}

    def watch():
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if _finished_steps(w):
                os.kill(proc.pid, signal.SIGKILL)
                state["killed"] = True
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    yield {"proc": proc, "thread": t, "state": state, "workdir": w, "argv": argv, "log": log, "data": data}
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path, cfg, set14, killed_run, capsys):
    ref = train.train(cfg.replace(ckpt_every=KILL_STEPS), tmp_path / "ref", [killed_run["data"]], steps=KILL_STEPS,
                      verbose=False)
    assert ref["step"] == KILL_STEPS
    killed_run["thread"].join(300)
    rc = killed_run["proc"].wait(60)
    killed_run["log"].seek(0)
    assert killed_run["state"]["killed"] and rc == -signal.SIGKILL, \
        f"the run was not killed mid-way (rc {rc}): {killed_run['log'].read()[-2000:]}"
    w = killed_run["workdir"]
    killed_at = _finished_steps(w)[-1]
    assert 0 < killed_at < KILL_STEPS
    # resume here with the same command line (this process has the step compiled already)
    assert main(["train", *killed_run["argv"]]) == 0
    assert f"steps {killed_at}->{KILL_STEPS}" in capsys.readouterr().out
    _assert_same_params(_params(tmp_path / "ref"), _params(w))  # the EMA
    _assert_same_params(_params(tmp_path / "ref", ema=False), _params(w, ema=False))


_SHARDED = r"""
import json, sys
import jax
from prfdn_jax import train
from prfdn_jax.config import ConfigError, load_config
cfg = load_config(sys.argv[1])
s = train.train(cfg, sys.argv[2], [sys.argv[3]], steps=3, verbose=False)
try:
    train.train(cfg.replace(batch=6), sys.argv[2] + "_b6", [sys.argv[3]], steps=1)
    err = None
except ConfigError as e:
    err = str(e)
print("RESULT " + json.dumps({"devices": s["devices"], "jax_devices": len(jax.devices()),
                              "shards": s["batch_shards"], "losses": s["losses"], "err": err}))
"""


@pytest.fixture(scope="module", autouse=True)
def sharded_run(tmp_path_factory, set14):
    """The 4-device run, started first so that it compiles while this process compiles too."""
    tmp = tmp_path_factory.mktemp("sharded")
    env = _env(XLA_FLAGS="--xla_force_host_platform_device_count=4")
    log = open(tmp / "log.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-c", _SHARDED, SMOKE, str(tmp / "w4"), set14], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT, text=True)
    yield proc, log
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    log.close()


def test_data_parallel_over_4_devices_matches_1_device(runs, sharded_run):
    proc, log = sharded_run
    rc = proc.wait(300)
    log.seek(0)
    text = log.read()
    assert rc == 0, text[-3000:]
    out = json.loads(next(line for line in text.splitlines() if line.startswith("RESULT "))[7:])
    assert out["devices"] == out["jax_devices"] == 4
    assert out["shards"] == [[1, 24, 24, 3]] * 4  # batch 4 split over 4 devices
    one = dict(runs["A"]["losses"][:3])
    four = dict(out["losses"])
    assert sorted(four) == [1, 2, 3]
    for s in four:
        assert abs(four[s] - one[s]) < 1e-5, (s, four[s], one[s])
    assert "batch 6 is not divisible by the 4 devices" in out["err"]


def test_non_finite_loss_stops_without_a_checkpoint(tmp_path, cfg, set14):
    from prfdn_jax.checkpoint import set_flat_params

    model = train.init_model(cfg)  # the smoke network, with a NaN bias
    flat = flat_params(model)
    flat["LR_conv.bias"] = np.full_like(flat["LR_conv.bias"], np.nan)
    set_flat_params(model, flat)
    with pytest.raises(train.TrainingDiverged, match="step 1 .*no checkpoint"):
        train.train(cfg, tmp_path, [set14], steps=4, model=model, verbose=False)
    assert workdir_manager(tmp_path).latest_step() is None


def test_divergence_keeps_the_last_good_checkpoint(tmp_path, set14, monkeypatch, capsys):
    real = train.cached_train_step
    calls = {"n": 0}

    def poisoned(*a, **k):
        step = real(*a, **k)

        def f(state, batch):
            calls["n"] += 1
            state, m = step(state, batch)
            if calls["n"] == 4:
                return state, {"loss": m["loss"] * np.nan, "ok": m["ok"] & False}
            return state, m

        return f

    monkeypatch.setattr(train, "cached_train_step", poisoned)
    rc = main(["train", SMOKE, "--workdir", str(tmp_path), "--data", set14, "--steps", "6", "--set",
               f"ema_decay={EMA}"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.startswith("prfdn: error: ") and err.count("\n") == 1
    assert "step 4" in err and "last good checkpoint: step 2" in err
    assert workdir_manager(tmp_path).latest_step() == 2
    assert all(np.isfinite(v).all() for v in _params(tmp_path).values())


def test_init_from_x4_rfdn_body(tmp_path):
    pth = str(shared_path("weights", "rfdn_aim_x4.pth"))
    c = TrainConfig(layout="rfdn", nf=50, scale=2, init_weights=pth, init_strict=False)
    with pytest.warns(UserWarning, match="randomly initialised: upsampler.bias, upsampler.kernel"):
        m = train.init_model(c)
    src = flat_params(load_any(pth))
    got = flat_params(m)
    assert got["upsampler.kernel"].shape == (3, 3, 50, 12)
    for k in got:
        if not k.startswith("upsampler"):
            np.testing.assert_array_equal(got[k], src[k])
    with pytest.raises(ConfigError, match="x4 network"):
        train.init_model(c.replace(init_strict=True))


def test_schedules():
    c = TrainConfig(lr=1.0, steps=100)
    _, s = train.make_optimizer(c.replace(schedule="multistep", milestones=(0.5, 0.75), gamma=0.1))
    assert float(s(0)) == 1.0 and float(s(60)) == pytest.approx(0.1) and float(s(80)) == pytest.approx(0.01)
    _, s = train.make_optimizer(c.replace(schedule="cosine"))
    assert float(s(0)) == 1.0 and float(s(100)) == pytest.approx(0.0, abs=1e-6)
    _, s = train.make_optimizer(c.replace(warmup=10))
    assert float(s(0)) == 0.0 and float(s(10)) == 1.0


def test_load_config_variants():
    import importlib

    cfg = load_config(SMOKE)
    assert load_config("prfdn_jax.configs.smoke_x2") == cfg
    assert load_config(importlib.import_module("prfdn_jax.configs.smoke_x2")) == cfg
    assert load_config(cfg.to_dict()) == cfg
    p = load_config(str(ROOT / "experiments" / "prfdn_x2.py") + ":tiny")
    assert p.branch.nf == 8 and p.layout == "b4s"
    assert load_config(p.to_dict()) == p
    assert override(cfg, ["lr=0.001", "patch=64"]).patch == 64
    assert override(cfg, ["patch=64", "patch_sizes=[48,64]"]).patch_sizes == (48, 64)
    with pytest.raises(ConfigError, match="bad --set"):
        override(cfg, ["nope=1"])
    with pytest.raises(ConfigError, match="go beyond the patch"):
        check_config(override(cfg, ["patch=64", "patch_sizes=[48,80]"]))


@pytest.mark.parametrize("argv, msg", [
    (["missing_config.py", "--workdir", "W"], "no such config file"),
    ([SMOKE, "--workdir", "W", "--data", "/nonexistent/folder"], "no such folder"),
    ([str(ROOT / "experiments" / "prfdn_x2.py"), "--workdir", "W"], "pipeline config: pass --stage"),
    ([SMOKE, "--workdir", "W", "--data", "/nonexistent/folder", "--set", "nope=1"], "bad --set"),
])
def test_cli_bad_input_is_one_line_exit_1(argv, msg, tmp_path, capsys):
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert main(["train", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prfdn: error: ") and err.count("\n") == 1 and msg in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, msg", [
    ([SMOKE, "--workdir", "W", "--steps", "x"], "invalid int value"),
    ([SMOKE], "--workdir"),
])
def test_cli_usage_error_is_exit_2(argv, msg, tmp_path, capsys):
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "prfdn train: error:" in err and msg in err and "Traceback" not in err, err
