"""Folder jobs as Real-ESRGAN users run them (prfdn_jax.commands.folder_jobs): --suffix, --ext, --quality,
--outscale, --skip-existing (also after a killed job), WebP in and out, bad values."""

import signal
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from helpers import error_lines, make_video, prfdn_command, prfdn_env, run_prfdn, temp_files
from prfdn_jax.cli import main
from prfdn_jax.imaging import read_image
from prfdn_jax.resize import resize_lanczos

H, W = 20, 33  # one size: one compiled program per run


def _pattern(i: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([xx * 7 + i * 20, yy * 9, (xx + yy) * 5], -1).astype(np.uint8)


def _folder(tmp_path, exts=("png", "jpg", "webp"), n=3):
    d = tmp_path / "in"
    d.mkdir()
    for i in range(n):
        ext = exts[i % len(exts)]
        Image.fromarray(_pattern(i)).save(d / f"img{i}.{ext}", **({"lossless": True} if ext == "webp" else {}))
    return d


def test_suffix_and_ext(tmp_path, capsys):
    src = _folder(tmp_path)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out), "--suffix", "_x2", "--ext", "auto"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["img0_x2.png", "img1_x2.jpg", "img2_x2.webp"]
    assert [Image.open(p).format for p in sorted(out.iterdir())] == ["PNG", "JPEG", "WEBP"]
    assert "upscaled 3/3 images x2" in capsys.readouterr().out
    assert main(["upscale", str(src), "-o", str(tmp_path / "default")]) == 0  # default: PNG, the stem
    assert sorted(p.name for p in (tmp_path / "default").iterdir()) == ["img0.png", "img1.png", "img2.png"]


def test_quality_and_webp_round_trip(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    Image.fromarray(_pattern()).save(d / "p.png")
    Image.fromarray(_pattern()).save(d / "w.webp", lossless=True)  # read exactly: the same pixels as p.png
    Image.fromarray(_pattern()).save(d / "j.jpg", quality=95)
    sizes = {}
    for q in (30, 95):
        assert main(["upscale", str(d), "-o", str(tmp_path / f"q{q}"), "--ext", "auto", "--quality", str(q)]) == 0
        sizes[q] = [(tmp_path / f"q{q}" / n).stat().st_size for n in ("j.jpg", "w.webp")]
    assert sizes[30][0] < sizes[95][0] and sizes[30][1] < sizes[95][1]
    ref = read_image(tmp_path / "q95" / "p.png").rgb.astype(int)  # the network output, lossless
    back = read_image(tmp_path / "q95" / "w.webp").rgb.astype(int)
    assert back.shape == ref.shape == (2 * H, 2 * W, 3) and np.abs(back - ref).mean() < 3  # lossy at 95: close


def test_webp_alpha_is_kept(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., 0], rgba[5:15, 8:24, 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(d / "a.webp", lossless=True)
    assert main(["upscale", str(d), "-o", str(tmp_path / "out"), "--ext", "webp"]) == 0
    img = read_image(tmp_path / "out" / "a.webp")
    assert img.alpha is not None and img.rgb.shape == (2 * H, 2 * W, 3)
    assert img.alpha[0, 0] < 10 and img.alpha[H, W] > 245  # transparent corner, opaque centre


def test_outscale_is_the_network_then_lanczos(tmp_path, capsys):
    src = _folder(tmp_path, exts=("png",), n=1)
    assert main(["upscale", str(src), "-o", str(tmp_path / "x2")]) == 0
    x2 = np.asarray(Image.open(tmp_path / "x2" / "img0.png"))
    for f in (3.5, 1.0, 2.0):
        out = tmp_path / f"o{f}.png"
        assert main(["upscale", str(src / "img0.png"), "-o", str(out), "--outscale", str(f)]) == 0
        got = np.asarray(Image.open(out))
        assert got.shape == (int(f * H), int(f * W), 3)  # Real-ESRGAN's int(F x size): 115 of 3.5 x 33
        want = x2 if f == 2.0 else resize_lanczos(x2, (int(f * W), int(f * H)))
        np.testing.assert_array_equal(got, want)
    assert "(33x20 -> 115x70, prfdn-x2)" in capsys.readouterr().out


def test_skip_existing_counts_and_redoes_an_incomplete_file(tmp_path, capsys):
    src = _folder(tmp_path, exts=("png",), n=3)
    out = tmp_path / "out"
    assert main(["upscale", str(src), "-o", str(out)]) == 0
    good = (out / "img0.png").read_bytes()
    (out / "img1.png").write_bytes(good[: len(good) // 2])  # someone else's half-copied file
    (out / "img2.png").unlink()
    (out / ".img2.png.abc123.tmp").write_bytes(b"partial")  # what a SIGKILL mid-write leaves
    capsys.readouterr()
    assert main(["upscale", str(src), "-o", str(out), "--skip-existing"]) == 0
    o = capsys.readouterr()
    assert "upscaled 2/3 images x2 with prfdn-x2 -> " in o.out and "1 skipped: already there" in o.out
    assert f"note: {out / 'img1.png'}: exists but is not a complete image: upscaled again" in o.err
    assert (out / "img0.png").read_bytes() == good and read_image(out / "img1.png").rgb.shape == (2 * H, 2 * W, 3)
    assert main(["upscale", str(src), "-o", str(out), "--skip-existing"]) == 0
    assert "nothing to upscale: all 3 outputs are already there (--skip-existing)" in capsys.readouterr().out


SLOW_WRITES = """
import time
from prfdn_jax import imaging
_write = imaging.write_image
def write_image(*a, **k):
    time.sleep(0.4)
    return _write(*a, **k)
imaging.write_image = write_image
"""


@pytest.mark.slow
def test_a_killed_job_resumes_with_skip_existing(tmp_path):
    src = _folder(tmp_path, exts=("png",), n=6)
    out = tmp_path / "out"
    proc = subprocess.Popen(prfdn_command("upscale", src, "-o", out, pre=SLOW_WRITES), env=prfdn_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while len(list(out.glob("*.png"))) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = sorted(p.name for p in out.glob("*.png"))
    assert 2 <= len(done) < 6, done
    p = run_prfdn("upscale", src, "-o", out, "--skip-existing")
    assert p.returncode == 0, p.stderr
    assert f"upscaled {6 - len(done)}/6 images" in p.stdout and f"{len(done)} skipped" in p.stdout, p.stdout
    assert main(["upscale", str(src), "-o", str(tmp_path / "clean")]) == 0
    for i in range(6):  # every output whole and what an uninterrupted job writes
        assert (out / f"img{i}.png").read_bytes() == (tmp_path / "clean" / f"img{i}.png").read_bytes()
    assert all(n.endswith(".tmp") for n in temp_files(out))  # at most the killed write's temp file


@pytest.mark.parametrize("args, message", [
    (["--outscale", "0"], "argument --outscale: '0' is not a number > 0"),
    (["--outscale", "-1.5"], "argument --outscale: '-1.5' is not a number > 0"),
    (["--outscale", "nan"], "argument --outscale: 'nan' is not a number > 0"),
    (["--quality", "0"], "argument --quality: '0' is not an integer in 1..100"),
    (["--quality", "high"], "argument --quality: 'high' is not an integer in 1..100"),
    (["--ext", "gif"], "argument --ext: invalid choice: 'gif'"),
])
def test_bad_values_exit_2_with_argparse_line(tmp_path, capsys, args, message):
    assert main(["upscale", str(tmp_path), "-o", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert message in error_lines(err)[-1] and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_bad_combinations_are_one_line(tmp_path, capsys):
    src = _folder(tmp_path, exts=("png",), n=1)
    clip = make_video(tmp_path / "in.mp4", seconds=1, audio=None)
    for args, message in (
        ([src, "-o", tmp_path / "o", "--suffix", "a/b"], "--suffix 'a/b': a suffix cannot hold a path separator"),
        ([src / "img0.png", "-o", tmp_path / "o.png", "--ext", "jpg"],
         f"--ext names the files written into an output folder; {tmp_path / 'o.png'} is one file (name it as you "
         "want it)"),
        ([clip, "-o", tmp_path / "o.mp4", "--outscale", "3"], "--outscale applies to images, not to a video"),
    ):
        assert main(["upscale", *map(str, args)]) == 1
        assert error_lines(capsys.readouterr().err) == [f"prfdn: error: {message}"]
    p = run_prfdn("upscale", clip, "-o", tmp_path / "o.mp4", "--skip-existing")
    assert p.returncode == 1 and error_lines(p.stderr) == [
        "prfdn: error: --skip-existing applies to images, not to a video"], p.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.mp4").exists()
