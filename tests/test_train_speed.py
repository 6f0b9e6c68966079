"""Tests for training at accelerator speed: mixed precision, the EMA of the parameters (saved, resumed bit for
bit, used by validation, the returned network and `prfdn eval --weights WORKDIR`), throughput in the log,
the resolved apply path and dtype in the run log, and the training-step benchmark.

Tiny on purpose: the smoke RFDN (nf 8, one RFDB), 32 px HR patches, batch 4, 4 steps, a checkpoint every
step. The fp32 runs share one compiled step; the bf16 run and the benchmark compile their own.
"""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from prfdn_jax import train
from prfdn_jax.checkpoint import flat_params
from prfdn_jax.cli import main
from prfdn_jax.config import ConfigError, load_config
from prfdn_jax.backends import configure_xla_flags, default_impl
from prfdn_jax.workdir import load_workdir_model, workdir_manager

from helpers import ROOT, shared_path

configure_xla_flags()
SMOKE = str(ROOT / "experiments" / "smoke_x2.py")
D = 0.5  # ema_decay: large enough that 4 steps move the EMA visibly
STEPS = 4
# bf16 vs fp32: the per-step losses of the same 4 steps agree to this relative tolerance (measured: ~2e-4).
BF16_RTOL = 2e-2


@pytest.fixture(scope="module")
def cfg():
    return load_config(SMOKE).replace(data_dirs=(str(shared_path("data", "Set14", "HR")),), patch=32, steps=STEPS,
                                      ema_decay=D, ckpt_every=1, keep=STEPS + 1, log_every=1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cfg):
    """A: 4 steps in one go. B: 2 steps, copied to C (its checkpoints then stripped of their EMA, as written
    before EMAs existed), then resumed to 4."""
    root = tmp_path_factory.mktemp("speed")
    model_a, a = train.run(cfg, root / "A", verbose=False)
    train.run(cfg.replace(steps=2), root / "B", verbose=False)
    shutil.copytree(root / "B", root / "C")
    _, b = train.run(cfg, root / "B", verbose=False)
    return {"root": root, "A": a, "model_A": model_a, "B": b}


def _flat(w, step=None, ema=True):
    return flat_params(load_workdir_model(w, step, ema=ema))


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _close(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


def test_ema_is_saved_each_checkpoint_and_returned(runs, cfg):
    a = runs["root"] / "A"
    assert all((a / "checkpoints" / str(s) / "ema").is_dir() for s in range(1, STEPS + 1))
    prev = flat_params(train.init_model(cfg))  # the EMA starts from the initial parameters
    for s in range(1, STEPS + 1):
        raw, ema = _flat(a, s, ema=False), _flat(a, s)
        _close(ema, {k: D * prev[k] + (1 - D) * raw[k] for k in raw})
        prev = ema
    assert any(not np.array_equal(prev[k], raw[k]) for k in raw)
    assert runs["A"]["ema"] is True
    _same(flat_params(runs["model_A"]), _flat(a))  # run() returns the EMA


def test_ema_resumes_bit_exactly(runs):
    root = runs["root"]
    assert runs["B"]["start_step"] == 2
    _same(_flat(root / "A"), _flat(root / "B"))
    _same(_flat(root / "A", ema=False), _flat(root / "B", ema=False))
    assert runs["A"]["losses"][2:] == runs["B"]["losses"]


def test_checkpoint_without_ema_restores_and_old_metrics_csv_is_kept(runs, cfg, capsys):
    c = runs["root"] / "C"
    for step in (c / "checkpoints").iterdir():
        shutil.rmtree(step / "ema")
    _same(_flat(c), _flat(c, ema=False))  # no EMA: the parameters
    old = ("step", "loss", "lr", "psnr_y", "steps_per_s", "elapsed_s")  # metrics.csv before the throughput columns
    rows = list(csv.DictReader(open(c / "metrics.csv")))
    with open(c / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, old, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    capsys.readouterr()
    train.run(cfg, c, verbose=False)
    assert capsys.readouterr().err.startswith(f"note: {c}: checkpoint 2 holds no EMA; the EMA starts from its "
                                              "parameters\n")
    a = runs["root"] / "A"
    _same(_flat(c, ema=False), _flat(a, ema=False))  # the parameters do not depend on the EMA
    ema = _flat(a, 2, ema=False)
    for s in (3, 4):
        raw = _flat(a, s, ema=False)
        ema = {k: D * ema[k] + (1 - D) * raw[k] for k in raw}
    _close(_flat(c), ema)
    rows = list(csv.DictReader(open(c / "metrics.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [r["images_per_s"] == "" for r in rows] == [True, True, False, False]


def test_throughput_in_metrics_summary_and_run_log(runs, cfg):
    a = runs["root"] / "A"
    rows = list(csv.DictReader(open(a / "metrics.csv")))
    assert {"steps_per_s", "images_per_s", "data_wait"} <= set(rows[0])
    for r in rows:
        assert 0.0 <= float(r["data_wait"]) <= 1.0
        assert float(r["images_per_s"]) == pytest.approx(float(r["steps_per_s"]) * cfg.batch, rel=1e-2, abs=0.02)
    s = runs["A"]
    assert s["images_per_s"] > 0 and 0.0 <= s["data_wait"] <= 1.0
    assert s["impl"] == default_impl() and s["compute_dtype"] == "float32"  # auto on CPU
    entry = json.loads((a / "runs.jsonl").read_text().splitlines()[-1])
    assert entry["resolved"] == {"impl": default_impl(), "compute_dtype": "float32", "backend": "cpu", "devices": 1}


def test_bf16_matches_fp32_and_keeps_fp32_state(runs, cfg, tmp_path):
    import orbax.checkpoint as ocp

    w = tmp_path / "bf16"
    _, s = train.run(cfg.replace(compute_dtype="bfloat16", impl="grouped"), w, verbose=False)
    ref = dict(runs["A"]["losses"])
    got = dict(s["losses"])
    assert sorted(got) == sorted(ref) == [1, 2, 3, 4]
    for k in got:
        assert got[k] == pytest.approx(ref[k], rel=BF16_RTOL), (k, got[k], ref[k])
    assert s["compute_dtype"] == "bfloat16" and s["impl"] == "grouped"
    entry = json.loads((w / "runs.jsonl").read_text().splitlines()[-1])
    assert entry["config"]["impl"] == "grouped" and entry["config"]["compute_dtype"] == "bfloat16"
    assert entry["resolved"]["impl"] == "grouped" and entry["resolved"]["compute_dtype"] == "bfloat16"
    mngr = workdir_manager(w)
    try:
        r = mngr.restore(STEPS, args=ocp.args.Composite(model=ocp.args.StandardRestore(),
                                                        opt=ocp.args.StandardRestore(),
                                                        ema=ocp.args.StandardRestore()))
    finally:
        mngr.close()
    assert set(r["model"]) == set(r["ema"]) == {"float32"} and set(r["opt"]) <= {"float32", "int32"}


def test_bad_settings_are_config_errors(cfg, tmp_path):
    for change, msg in (({"compute_dtype": "float16"}, "unknown compute_dtype"), ({"ema_decay": 1.0}, "ema_decay"),
                        ({"impl": "fast"}, "unknown apply path"), ({"loss": "l3"}, "unknown loss")):
        with pytest.raises(ConfigError, match=msg):
            train.train(cfg.replace(**change), tmp_path / "w", verbose=False)


def test_eval_of_a_workdir_uses_the_ema(runs, tmp_path, capsys):
    from PIL import Image

    from prfdn_jax.evaluate import evaluate, load_eval_set

    hr = np.asarray(Image.open(shared_path("data", "Set5", "HR", "bird.png")).convert("RGB"))[100:164, 100:164]
    (tmp_path / "set" / "HR").mkdir(parents=True)
    Image.fromarray(hr).save(tmp_path / "set" / "HR" / "bird.png")
    a = runs["root"] / "A"
    assert main(["eval", "--weights", str(a), "--data", str(tmp_path / "set"), "--json"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["psnr_y"]
    items = load_eval_set(str(tmp_path / "set"), 2)
    ema = evaluate(load_workdir_model(a), items, 2, with_ssim=False)["psnr_y"]
    raw = evaluate(load_workdir_model(a, ema=False), items, 2, with_ssim=False)["psnr_y"]
    assert got == pytest.approx(ema, abs=1e-6) and abs(ema - raw) > 1e-4


def test_bench_train_tiny(capsys):
    pytest.importorskip("torch")
    from prfdn_jax.bench import bench_train, print_train

    res = bench_train(layout="rfdn", nf=8, scale=2, batch=2, patch=32, dtypes=("float32",), warmup=0, runs=1,
                      torch_modes=("eager",))
    for k in ("jax_ms", "torch_ms", "torch_mode", "ratio", "device"):
        assert k in res, k
    assert res["jax_ms"] > 0 and res["torch_mode"] == "eager" and res["ratio"] == res["jax_ms"] / res["torch_ms"]
    print_train(res)
    out = capsys.readouterr().out
    assert "| JAX " in out and "(default)" in out and "| PyTorch eager |" in out


def test_bench_train_of_given_weights(tmp_path, capsys):
    """`prfdn bench train --weights`: the step of that network (its form, widths and scale)."""
    pytest.importorskip("torch")
    from prfdn_jax.checkpoint import save_model
    from prfdn_jax.reparam import wide_to_merged
    from prfdn_jax.spec import default_arch
    from prfdn_jax.train import random_init

    merged = wide_to_merged(random_init(default_arch("b2", nf=6, scale=3, form="wide")))
    path = save_model(tmp_path / "m.safetensors", merged)
    code = main(["bench", "train", "--weights", str(path), "--batch", "2", "--patch", "48", "--dtype", "float32",
                 "--warmup", "0", "--runs", "1", "--torch-modes", "eager", "--json"])
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and res["form"] == "merged" and res["scale"] == 3 and res["params"] == sum(
        v.size for v in flat_params(merged).values()) and res["torch_mode"] == "eager" and res["jax_ms"] > 0
