"""atomic_write: the content under the final name on success, nothing (and the old file intact) on any error."""

from __future__ import annotations

import os

import pytest

from prfdn_jax.fileio import atomic_write, default_mode


def test_content_and_mode_on_success(tmp_path):
    path = tmp_path / "sub" / "out.bin"
    with atomic_write(path) as tmp:
        assert tmp.parent == path.parent and tmp.name.startswith(".out.bin.") and tmp.exists()
        tmp.write_bytes(b"new")
        assert not path.exists()  # nothing under the final name before the block ends
    assert path.read_bytes() == b"new" and os.listdir(path.parent) == ["out.bin"]
    assert path.stat().st_mode & 0o777 == default_mode()  # not mkstemp's 0600
    with atomic_write(path, mode=0o644, suffix=".mp4") as tmp:
        assert tmp.suffix == ".mp4"
        tmp.write_bytes(b"newer")
    assert path.read_bytes() == b"newer" and path.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_no_file_left_on_an_exception(tmp_path, error):
    old = tmp_path / "old.txt"
    old.write_text("old")
    for path in (old, tmp_path / "new.txt"):
        with pytest.raises(type(error)):
            with atomic_write(path) as tmp:
                tmp.write_text("partial")
                raise error
    assert sorted(os.listdir(tmp_path)) == ["old.txt"] and old.read_text() == "old"


def test_a_folder_in_the_way_leaves_no_temp_file(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "d") as tmp:
            tmp.write_text("x")
    assert os.listdir(tmp_path) == ["d"] and os.listdir(tmp_path / "d") == []


def test_an_os_error_names_the_output_not_the_temp_file(tmp_path):
    dst = tmp_path / "out.bin"
    with pytest.raises(OSError) as ei:
        with atomic_write(dst) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    assert ei.value.filename == str(dst) and ei.value.errno == 28
    assert list(tmp_path.iterdir()) == []


def test_a_swallowed_stop_signal_still_blocks_the_commit(tmp_path):
    """Python ignores an exception a signal handler raises inside a gc callback (JAX's): the recorded
    stop is raised again before any output is committed."""
    from prfdn_jax import fileio
    from prfdn_jax.cli import Terminated

    fileio.record_stop(Terminated())
    try:
        with pytest.raises(Terminated):
            with atomic_write(tmp_path / "out.bin") as tmp:
                tmp.write_bytes(b"x")
        assert os.listdir(tmp_path) == []
    finally:
        fileio.record_stop(None)
    fileio.check_stop()  # cleared: nothing raised


SWALLOWED_SIGTERM = """
import prfdn_jax.cli as cli, prfdn_jax.commands.upscale as up
_orig = up._upscale_image
def _upscale_image(*a, **k):
    try:
        cli._terminate(15, None)
    except BaseException:
        pass  # what Python does with an exception raised inside a gc callback
    return _orig(*a, **k)
up._upscale_image = _upscale_image
"""


def test_upscale_after_a_swallowed_sigterm_exits_143_without_output(tmp_path):
    import numpy as np
    from PIL import Image

    from helpers import run_prfdn

    Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(tmp_path / "in.png")
    p = run_prfdn("upscale", tmp_path / "in.png", "-o", tmp_path / "out.png", pre=SWALLOWED_SIGTERM)
    assert p.returncode == 143, p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.strip()] == ["prfdn: terminated (SIGTERM)"]
    assert sorted(os.listdir(tmp_path)) == ["in.png"]


def test_a_stop_signal_just_after_the_temp_file_appears_removes_it(tmp_path, monkeypatch):
    """The signal lands between the temp file's creation and the body (seen under load: SIGTERM sent as soon as
    the temp file appeared left it behind): the file is still removed and the exception goes on."""
    real_close, calls = os.close, []

    def close_then_interrupt(fd):
        real_close(fd)
        if not calls:
            calls.append(fd)
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "close", close_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(tmp_path / "out.mp4", suffix=".mp4"):
            pytest.fail("the body must not run")
    monkeypatch.setattr(os, "close", real_close)
    assert calls and list(tmp_path.iterdir()) == []


def test_the_cli_keeps_quiet_about_a_stop_swallowed_in_a_gc_callback():
    """Python prints "Exception ignored in: <function _xla_gc_callback ...>" and a traceback for it (seen in CI);
    the stop is recorded and reported in one line, so the CLI's hook drops it and passes every other one on."""
    from types import SimpleNamespace

    from prfdn_jax import cli

    seen = []
    hook = cli._unraisable(seen.append)
    hook(SimpleNamespace(exc_value=cli.Terminated()))
    hook(SimpleNamespace(exc_value=KeyboardInterrupt()))
    other = SimpleNamespace(exc_value=ValueError("x"))
    hook(other)
    assert seen == [other]
