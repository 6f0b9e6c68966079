"""`prfdn prepare` and `prfdn bench data` as a user runs them."""

from __future__ import annotations

import json

from helpers import shared_path
from prfdn_jax.cli import main


def test_prepare_then_bench_data(tmp_path, capsys):
    out = tmp_path / "s5.array_record"
    code = main(["prepare", str(shared_path("data", "Set5", "HR")), "--out", str(out), "--scale", "2",
                 "--sub-size", "96", "--step", "96", "--rescale", "1", "0.5"])
    text = capsys.readouterr().out
    assert code == 0 and out.is_file() and "from 5 images at sizes x1, x0.5" in text
    code = main(["bench", "data", "--data", str(out), "--scale", "2", "--patch", "48", "--batch", "4",
                 "--seconds", "0.5", "--json"])
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and rows[0]["pipeline"] == "prepared" and rows[0]["pairs_per_s"] > 0


def test_prepare_bad_input_is_one_line(tmp_path, capsys):
    code = main(["prepare", str(tmp_path / "nothing"), "--out", str(tmp_path / "o.array_record"), "--scale", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("prfdn: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.array_record").exists()
    code = main(["prepare", str(shared_path("data", "Set5", "HR")), "--out", str(tmp_path / "o.array_record"),
                 "--scale", "2", "--rescale", "1", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err == "prfdn: error: rescale must be distinct numbers in (0, 1], got [1.0, 0.0]\n"
    assert not (tmp_path / "o.array_record").exists()


def test_prepare_with_skipped_images_succeeds_and_says_why(tmp_path):
    """Issue 17.4: skipping an image used to end in `internal error (TypeError)`, exit 1, after a full write."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image

    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(src / "good.png")
    Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(src / "tiny.png")
    (src / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "o.array_record"
    p = subprocess.run([sys.executable, "-m", "prfdn_jax.cli", "prepare", str(src), "--out", str(out), "--scale",
                        "2", "--sub-size", "32", "--step", "32"], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "skipped 2 images (1 unreadable, 1 smaller than 30x30" in p.stdout and out.is_file()
    assert "internal error" not in p.stderr and "tiny.png" in p.stderr and "broken.png" in p.stderr
