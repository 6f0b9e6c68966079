"""`prfdn prepare` and `prfdn bench data` as a user runs them."""

from __future__ import annotations

import json

from helpers import shared_path
from prfdn_jax.cli import main


def test_prepare_then_bench_data(tmp_path, capsys):
    out = tmp_path / "s5.array_record"
    code = main(["prepare", str(shared_path("data", "Set5", "HR")), "--out", str(out), "--scale", "2",
                 "--sub-size", "96", "--step", "96"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and "prepared" in text
    code = main(["bench", "data", "--data", str(out), "--scale", "2", "--patch", "48", "--batch", "4",
                 "--seconds", "0.5", "--json"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and rows[0]["pipeline"] == "prepared" and rows[0]["pairs_per_s"] > 0


def test_prepare_bad_input_is_one_line(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "nothing"), "--out", str(tmp_path / "o.array_record"), "--scale", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("prfdn: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.array_record").exists()
