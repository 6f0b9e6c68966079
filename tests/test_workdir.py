"""Tests for training workdirs that must not break or lie: unreadable checkpoints, config changes, failed starts.

One tiny run (experiments/smoke_x2.py with an EMA, 6 steps, checkpoints at 4 and 6) is trained once; every case
works on a copy of it (shutil.copytree). Resuming shares the run's compiled train step (train's jit cache).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from prfdn_jax import train
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.cli import main
from prfdn_jax.config import ConfigError, load_config
from prfdn_jax.workdir import WorkdirError, load_workdir_model

from helpers import ROOT, shared_path

SMOKE = str(ROOT / "experiments" / "smoke_x2.py")
STEPS = 6  # the smoke config checkpoints every 2 steps and keeps 2: steps 4 and 6 remain


@pytest.fixture(scope="module")
def set14():
    return str(shared_path("data", "Set14", "HR"))


@pytest.fixture(scope="module")
def cfg(set14):
    return load_config(SMOKE).replace(data_dirs=(set14,), steps=STEPS, ema_decay=0.9)


@pytest.fixture(scope="module")
def base(tmp_path_factory, cfg):
    """The uninterrupted run: its workdir, summary and final parameters."""
    w = tmp_path_factory.mktemp("base") / "w"
    s = train.train(cfg, w, verbose=False)
    assert _steps(w) == [4, 6]
    return {"workdir": w, "summary": s, "params": _params(w), "params4": flat_params(load_workdir_model(w, 4)),
            "raw": flat_params(load_workdir_model(w, ema=False)),
            "raw4": flat_params(load_workdir_model(w, 4, ema=False))}


def _steps(w: Path) -> list[int]:
    return sorted(int(p.name) for p in (w / "checkpoints").iterdir() if p.name.isdigit())


def _params(w) -> dict:
    return flat_params(load_workdir_model(w))


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _copy(base, tmp_path) -> Path:
    w = tmp_path / "w"
    shutil.copytree(base["workdir"], w)
    return w


def _largest_file(d: Path) -> Path:
    return max((f for f in d.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)


def _truncate(step: Path):
    f = _largest_file(step / "model")
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garble(step: Path):
    f = _largest_file(step / "opt")
    f.write_bytes(np.random.default_rng(0).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _garble_ema(step: Path):
    f = _largest_file(step / "ema")
    f.write_bytes(np.random.default_rng(1).integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _drop_model(step: Path):
    shutil.rmtree(step / "model")


def _empty(step: Path):
    shutil.rmtree(step)
    step.mkdir()


def _bad_metadata(step: Path):
    (step / "model" / "_METADATA").write_text('{"tree_metadata": {')


CORRUPTIONS = {
    "truncated": (_truncate, "truncated file in model/"),
    "garbled": (_garble, "corrupt file in opt/"),
    "garbled_ema": (_garble_ema, "corrupt file in ema/"),
    "no_model_item": (_drop_model, "missing item model/"),
    "empty_step": (_empty, "empty step folder"),
    "bad_json": (_bad_metadata, "corrupt file model/_METADATA: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_unreadable_latest_checkpoint_falls_back(case, base, cfg, tmp_path, capsys):
    corrupt, why = CORRUPTIONS[case]
    w = _copy(base, tmp_path)
    corrupt(w / "checkpoints" / "6")
    config_before = (w / "config.json").read_bytes()

    # loading the network reads the EMA (default) or the parameters (ema=False), never the optimizer state
    ema = {"garbled": None, "garbled_ema": True}.get(case, False)
    if ema is not None:
        m = load_workdir_model(w, ema=ema)
        err = capsys.readouterr().err
        assert err == f"warning: {w}: checkpoint 6 is unreadable ({why}); using step 4\n"
        _assert_same(flat_params(m), base["params4" if ema else "raw4"])

    s = train.train(cfg, w, verbose=False)
    err = capsys.readouterr().err
    assert err == (f"warning: {w}: checkpoint 6 is unreadable ({why}), moved to {w / 'corrupt_checkpoints' / '6'}; "
                   "resuming from step 4\n")
    assert s["start_step"] == 4 and s["step"] == STEPS and s["skipped_checkpoints"] == [(6, why)]
    assert s["losses"] == base["summary"]["losses"][4:]  # the same batches as the uninterrupted run
    _assert_same(_params(w), base["params"])  # bit-identical: the EMA
    _assert_same(flat_params(load_workdir_model(w, ema=False)), base["raw"])  # and the parameters
    assert _steps(w) == [4, 6] and (w / "corrupt_checkpoints" / "6").is_dir()
    assert (w / "config.json").read_bytes() == config_before
    runs = [json.loads(line) for line in (w / "runs.jsonl").read_text().splitlines()]
    assert runs[-1]["start_step"] == 4 and runs[-1]["skipped_checkpoints"] == [{"step": 6, "why": why}]
    # the rewritten step 6 reads, and nothing is skipped any more
    train.train(cfg, w, verbose=False)
    assert capsys.readouterr().err == ""


def test_no_readable_checkpoint_is_one_line_error(base, cfg, set14, tmp_path, capsys):
    w = _copy(base, tmp_path)
    _empty(w / "checkpoints" / "6")
    _truncate(w / "checkpoints" / "4")
    before = {p: p.read_bytes() for p in w.rglob("*") if p.is_file()}
    msg = (f"{w}: no readable checkpoint: checkpoints 6, 4 are unreadable "
           "(6: empty step folder; 4: truncated file in model/)")
    with pytest.raises(WorkdirError) as e:
        load_workdir_model(w, ema=False)  # (the EMA of step 4 still reads: load_workdir_model(w) gives it)
    assert str(e.value) == msg
    with pytest.raises(WorkdirError) as e:
        train.train(cfg, w, verbose=False)
    assert str(e.value) == msg
    assert main(["train", SMOKE, "--workdir", str(w), "--data", set14, "--steps", str(STEPS)]) == 1
    assert capsys.readouterr().err == f"prfdn: error: {msg}\n"
    # nothing was moved or rewritten
    assert {p: p.read_bytes() for p in w.rglob("*") if p.is_file()} == before
    assert not (w / "corrupt_checkpoints").exists()


@pytest.mark.parametrize("change, named", [
    ({"nf": 16}, "nf 16 (was 8): the network cannot change"),
    ({"n_blocks": 2}, "n_blocks 2 (was 1): the network cannot change"),
    ({"layout": "b4s"}, "layout b4s (was rfdn): the network cannot change"),
    ({"scale": 3}, "scale 3 (was 2): the network cannot change"),
    ({"form": "wide"}, "form wide (was branch): the network cannot change"),
    ({"init_weights": "x.safetensors"}, "init_weights x.safetensors (was null): the network cannot change"),
    ({"workers": 1}, "workers 1 (was 0): cannot change when resuming (the saved data-loader state is per worker "
                     "process); keep workers=0 or use a new workdir"),
    ({"steps": 4}, "steps 4 is below its checkpoint's step 6; use steps >= 6 or a new workdir"),
])
def test_refused_config_change(change, named, base, cfg, tmp_path):
    w = _copy(base, tmp_path)
    before = {name: (w / name).read_bytes() for name in ("config.json", "arch.json", "runs.jsonl")}
    with pytest.raises(ConfigError) as e:
        train.train(cfg.replace(**change), w, verbose=False)
    assert str(e.value).startswith(f"{w}: {named}") and "\n" not in str(e.value)
    assert {name: (w / name).read_bytes() for name in before} == before
    assert _steps(w) == [4, 6]


def test_refused_change_on_the_command_line(base, set14, tmp_path, capsys):
    w = _copy(base, tmp_path)
    before = (w / "config.json").read_bytes()
    argv = ["train", SMOKE, "--workdir", str(w), "--data", set14, "--steps", str(STEPS), "--set", "nf=16"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"prfdn: error: {w}: nf 16 (was 8): the network cannot change") and err.count("\n") == 1
    assert (w / "config.json").read_bytes() == before


def test_allowed_config_change_is_noted_and_recorded(base, cfg, tmp_path, capsys):
    w = _copy(base, tmp_path)
    new = cfg.replace(steps=8, lr=1e-4, schedule="cosine", warmup=1, clip_norm=1.0, patch=64, seed=3, log_every=2,
                      ckpt_every=4, keep=3)
    s = train.train(new, w, verbose=False)
    assert s["start_step"] == STEPS and s["step"] == 8
    assert capsys.readouterr().err == (
        f"note: {w}: continuing with patch 64 (was 48), seed 3 (was 0), steps 8 (was 6), lr 0.0001 (was 0.0005), "
        "schedule cosine (was constant), warmup 1 (was 0), clip_norm 1.0 (was 0.0), log_every 2 (was 1), "
        "ckpt_every 4 (was 2), keep 3 (was 2)\n")
    conf = json.loads((w / "config.json").read_text())
    assert conf["steps"] == 8 and conf["lr"] == 1e-4 and conf["patch"] == 64  # the config of the latest run
    runs = [json.loads(line) for line in (w / "runs.jsonl").read_text().splitlines()]
    assert [r["start_step"] for r in runs] == [0, STEPS]
    assert runs[0]["changes"] == {} and runs[0]["config"]["steps"] == STEPS
    assert runs[1]["changes"]["steps"] == {"was": STEPS, "now": 8}
    assert runs[1]["changes"]["lr"] == {"was": 5e-4, "now": 1e-4}
    assert runs[1]["config"] == conf
    assert _steps(w) == [4, 6, 8]
    # the same config again: nothing to note, one more line
    train.train(new, w, verbose=False)
    assert capsys.readouterr().err == ""
    runs = [json.loads(line) for line in (w / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 3 and runs[2]["changes"] == {} and runs[2]["start_step"] == 8


@pytest.mark.parametrize("bad", ["data", "val"])
@pytest.mark.parametrize("existed", [False, True])
def test_failed_start_leaves_no_empty_checkpoints_folder(bad, existed, cfg, tmp_path):
    w = tmp_path / "w"
    if existed:
        w.mkdir()
    c = cfg.replace(data_dirs=(str(tmp_path / "missing"),)) if bad == "data" else \
        cfg.replace(val_dirs=(str(tmp_path / "missing"),))
    with pytest.raises(ValueError, match="missing"):
        train.train(c, w, verbose=False)
    assert not (w / "checkpoints").exists()
    assert w.is_dir() == existed  # a workdir this run created is removed again, an existing one is kept
    if existed:
        assert list(w.iterdir()) == []


OLD = ROOT / "tests" / "data"


def test_workdir_written_before_the_refactor_resumes_bit_exactly(cfg, tmp_path):
    """tests/data/old_workdir was written by the code of 3792689 (tests/data/make_old_workdir.py: the smoke
    config with EMA 0.9, 4 steps, a checkpoint every 2, keep 1); resumed to step 6 now, its parameters and
    EMA equal bit for bit those that code resumed to (tests/data/old_workdir_step6.npz)."""
    w = tmp_path / "w"
    shutil.copytree(OLD / "old_workdir", w)
    s = train.train(cfg.replace(keep=1), w, verbose=False)
    assert s["start_step"] == 4 and s["step"] == STEPS
    want = np.load(OLD / "old_workdir_step6.npz")
    for item, ema in (("params", False), ("ema", True)):
        _assert_same(flat_params(load_workdir_model(w, ema=ema)),
                     {k.split("/", 1)[1]: want[k] for k in want.files if k.startswith(item + "/")})
    assert not (w / ".lock").exists()


@pytest.mark.parametrize("error", ["orbax", "oserror"])
def test_full_disk_is_one_line_naming_the_workdir(error, base, set14, tmp_path, monkeypatch, capsys):
    """A checkpoint save on a full disk: orbax logs its background thread's traceback and raises tensorstore's
    RESOURCE_EXHAUSTED (or a plain write raises OSError 28): one line naming the workdir, nothing else."""
    import errno
    import logging

    w = _copy(base, tmp_path)

    def full(*a, **k):
        err = OSError(errno.ENOSPC, "No space left on device")
        if error == "oserror":
            raise err
        e = ValueError('RESOURCE_EXHAUSTED: Error writing local file "x/manifest.ocdbt": Failed to write 114 bytes '
                       "to file 12: No space left on device [os_error_code='28']")
        logging.getLogger("absl").error("[process=0] Failed to run 4 Handler Commit operations", exc_info=e)
        raise e

    monkeypatch.setattr(train, "save_checkpoint", full)
    assert main(["train", SMOKE, "--workdir", str(w), "--data", set14, "--steps", str(STEPS + 2), "--set",
                 "ema_decay=0.9"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == f"note: {w}: continuing with steps {STEPS + 2} (was {STEPS})", err
    (line,) = err.splitlines()[1:]
    assert line.startswith(f"prfdn: error: {w}: no space left on device (")
    assert "B free; a checkpoint takes about " in line
    assert line.endswith("training stopped; free some space and resume"), err
