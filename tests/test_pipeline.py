"""CPU smoke of the PRFDN pipeline (tiny settings): stage models, report.md, psnr_vs_gmac.png."""

from __future__ import annotations

import json

import pytest

from prfdn_jax import pipeline
from prfdn_jax.checkpoint import load_model_file
from prfdn_jax.cli import main
from prfdn_jax.config import load_config

from helpers import ROOT, shared_path
X2 = str(ROOT / "experiments" / "prfdn_x2.py")


@pytest.fixture(scope="module")
def set14():
    return str(shared_path("data", "Set14", "HR"))


@pytest.fixture(scope="module")
def tiny():
    # CPU time goes to compiling: stage 1 is not trained here (the same train.run is tested in
    # test_train); stage 2 trains the branch form; test_prune_stage finetunes the pruned (dense) net
    c = load_config(X2 + ":tiny")
    return c.replace(rfdn=c.rfdn.replace(steps=0), finetune=c.finetune.replace(steps=0))


@pytest.fixture(scope="module")
def three_stages(tmp_path_factory, tiny, set14):
    wd = tmp_path_factory.mktemp("pipeline")
    report = pipeline.run_pipeline(tiny.replace(stages=("rfdn", "branch", "reparam")), [set14], wd)
    return wd, report


def test_tiny_pipeline_writes_models_report_and_plot(three_stages):
    wd, report = three_stages
    assert report == wd / "report.md"
    text = report.read_text()
    assert "CPU latency (ms, 1x128x128x3 input, median of 2 after 2 warm-up)" in text
    assert "GMAC (1920x1080 in)" in text and "PSNR-Y Set5 (dB)" in text and "PSNR-Y Set14 (dB)" in text
    for stage in ("| 1 rfdn |", "| 2 branch |", "| 3 reparam |", "| 3 merged |"):
        assert stage in text
    assert (wd / "psnr_vs_gmac.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    forms = {}
    for name in ("1_rfdn", "2_branch", "3_wide", "3_merged"):
        forms[name] = load_model_file(wd / f"{name}.safetensors").arch
    assert forms["1_rfdn"].layout == "rfdn" and forms["2_branch"].layout == "b4s"
    assert [forms[k].form for k in ("2_branch", "3_wide", "3_merged")] == ["branch", "wide", "merged"]
    rows = {r["stage"]: r for r in json.loads((wd / "report.json").read_text())}
    assert rows["2 branch"]["params"] == rows["3 reparam"]["params"] < rows["3 merged"]["params"]
    assert rows["3 reparam"]["gmac_1080p"] > rows["1 rfdn"]["gmac_1080p"] > 0
    # re-parametrization is exact: same PSNR
    for s in ("psnr_Set5", "psnr_Set14"):
        assert rows["3 reparam"][s] == pytest.approx(rows["2 branch"][s], abs=1e-3)
        assert rows["3 merged"][s] == pytest.approx(rows["2 branch"][s], abs=1e-3)
    assert all(r["latency_ms"] > 0 for r in rows.values())
    # the training stages left resumable workdirs
    assert (wd / "branch" / "arch.json").is_file() and (wd / "branch" / "metrics.csv").is_file()


def test_prune_stage(three_stages, tiny, set14, capsys):
    wd, _ = three_stages
    c = tiny.replace(finetune=tiny.finetune.replace(steps=1))
    report = pipeline.run_pipeline(c, [set14], wd)
    out = capsys.readouterr().out
    assert "1_rfdn.safetensors exists: stage skipped" in out  # earlier stages are reused
    text = report.read_text()
    assert "| 4 pruned |" in text and "## Pruning steps" in text
    pruned = load_model_file(wd / "4_pruned.safetensors")
    assert pruned.arch.form == "merged"
    rows = {r["stage"]: r for r in json.loads((wd / "report.json").read_text())}
    assert rows["4 pruned"]["params"] < rows["3 merged"]["params"]
    hist = json.loads((wd / "prune_history.json").read_text())
    assert len(hist) == 2
    assert (wd / "prune" / "step1" / "arch.json").is_file()  # finetuned (dense form) between steps


def test_x3_config_is_a_b2s_recipe():
    c = load_config(str(ROOT / "experiments" / "prfdn_x3.py"))
    assert (c.scale, c.layout, c.rfdn.scale, c.branch.lr, c.finetune.lr) == (3, "b2s", 3, 1e-5, 1e-6)
    assert c.rfdn.init_weights.endswith("rfdn_aim_x4.pth") and not c.rfdn.init_strict
    t = load_config(str(ROOT / "experiments" / "prfdn_x3.py") + ":tiny")
    assert t.rfdn.nf == 8 and t.eval_crop % 3 == 0
    assert load_config("prfdn_jax.configs.prfdn_x3") == c and load_config("prfdn_jax.configs.prfdn_x3:tiny") == t


@pytest.mark.parametrize("argv, msg", [
    (["nope.py", "--workdir", "W"], "no such config file"),
    ([str(ROOT / "experiments" / "smoke_x2.py"), "--workdir", "W"], "not a pipeline config"),
])
def test_cli_bad_input(argv, msg, tmp_path, capsys):
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert main(["pipeline", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("prfdn: error: ") and err.count("\n") == 1 and msg in err, err


@pytest.mark.parametrize("argv, msg", [([X2], "--workdir"), ([X2, "--workdir", "W", "--stages", "nope"], "nope")])
def test_cli_usage_error_is_exit_2(argv, msg, tmp_path, capsys):
    argv = [str(tmp_path / "w") if a == "W" else a for a in argv]
    assert main(["pipeline", *argv]) == 2
    err = capsys.readouterr().err
    assert "prfdn pipeline: error:" in err and msg in err and "Traceback" not in err, err
