"""Progress of long jobs (prfdn_jax.progress): plain periodic lines in a log (no carriage returns) for a
folder, eval, video and training; a bar on a terminal."""

import io
import sys

import numpy as np
from PIL import Image

from helpers import make_video, run_prfdn
from prfdn_jax import progress as prog
from prfdn_jax.cli import main


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_every_interval_and_a_bar_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "1e-9")
    bar = prog.progress(None, 3, "job", unit="img")
    assert isinstance(bar, prog.ProgressLines)
    bar.set_postfix(loss="0.5")
    for _ in range(3):
        bar.update(1)
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [ln[:9] for ln in lines] == ["job: 1/3 ", "job: 2/3 ", "job: 3/3 "]
    assert all(ln.endswith(", loss=0.5)") for ln in lines), lines
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "3600")  # a job shorter than the interval: no line ...
    bar = prog.progress(None, 3, "job", unit="img")
    bar.update(3)
    assert capsys.readouterr().err == ""
    bar = prog.progress(None, 3, "job", unit="img", final=True)  # ... but the final one where asked
    bar.update(3)
    assert capsys.readouterr().err.startswith("job: 3/3 img (0 s")
    assert prog.progress(None, 1, "one").disable  # one item: no bar, no line
    monkeypatch.setattr(sys, "stderr", Terminal())
    bar = prog.progress(None, 3, "job")
    assert not isinstance(bar, prog.ProgressLines)  # tqdm
    bar.close()


def test_lines_have_count_rate_and_postfix(monkeypatch, capsys):
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "1e-9")
    bar = prog.ProgressLines(None, None, "train", unit="step", initial=10)
    bar.set_postfix(loss="0.0123")
    bar.update(5)
    line = capsys.readouterr().err
    assert line.startswith("train: 15 step (0 s, ") and " step/s, loss=0.0123)" in line and "\r" not in line
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "nonsense")
    assert prog.every_s() == prog.PROGRESS_EVERY_S == 10


def test_training_progress_in_a_log(tmp_path, monkeypatch, capsys):
    from prfdn_jax.runlog import Progress

    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "1e-9")
    (tmp_path / "wd").mkdir()
    p = Progress(tmp_path / "wd", 0, 4, batch=2, sched=lambda s: 1e-3, enabled=True, verbose=True)
    for step in range(1, 5):
        p.tick()
        if step % 2 == 0:
            p.write(p.interval(step, [0.5]))
    p.close()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 4, err
    assert lines[0].startswith("wd: 1/4 step (") and lines[-1].startswith("wd: 4/4 step (")
    assert "loss=0.5" in lines[-1]


def test_eval_and_folder_write_lines_not_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "1e-9")
    hr = tmp_path / "set" / "HR"
    hr.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), np.uint8)).save(hr / f"{i}.png")
    assert main(["eval", "--model", "prfdn-x2", "--data", str(tmp_path / "set")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and [ln[:10] for ln in err.splitlines()] == ["eval: 1/3 ", "eval: 2/3 ", "eval: 3/3 "]
    assert main(["upscale", str(hr), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "x2 prfdn-x2: 2/3 img (" in err and "x2 prfdn-x2: 3/3 img (" in err


def test_video_progress_lines_in_a_log(tmp_path, monkeypatch):
    monkeypatch.setenv("PRFDN_PROGRESS_EVERY", "1e-9")
    src = make_video(tmp_path / "in.mp4", seconds=1, audio=None)
    p = run_prfdn("upscale", src, "-o", tmp_path / "out.mp4")
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    assert "\r" not in p.stderr and lines, p.stderr
    assert all(ln.startswith("x2 in.mp4: ") and "/10 frame (" in ln for ln in lines), p.stderr
    assert lines[-1].startswith("x2 in.mp4: 10/10 frame (")
