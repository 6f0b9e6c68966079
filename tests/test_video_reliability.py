"""Video reliability (issue 17): frames tiled within --memory-budget as images are, the audio plan made
before any frame, damaged inputs upscaled as far as they go (with a warning), SIGTERM and a full disk
leaving no file and one line, the colour tags and every audio packet kept."""

import re
import signal
import subprocess
import time

import numpy as np
import pytest

from helpers import (audio_samples, frames_of, info, make_video, prfdn_command, prfdn_env, run_prfdn,
                     temp_files)
from prfdn_jax import registry
from prfdn_jax.cli import main
from prfdn_jax.deploy import deploy
from prfdn_jax.inference import GB, choose_tile, peak_bytes, upscale_array
from prfdn_jax.video import upscale_video

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def x2():
    return deploy(registry.load("prfdn-x2"))


def _psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


# ----------------------------------------------------------------------------- case 5: tiles and budget
def test_video_frames_are_tiled_within_the_budget_as_images_are(tmp_path, x2, capsys):
    src = make_video(tmp_path / "in.mp4", w=256, h=192, fps=5, seconds=1, audio=None)
    arch = registry.load("prfdn-x2").arch
    whole, tiled = peak_bytes(arch, 192, 256)[0], peak_bytes(arch, 192, 256, 64)[0]
    assert tiled < whole
    budget = (whole + tiled) / 2 / GB  # the frame does not fit whole, 64 px tiles do
    tile = choose_tile(arch, 192, 256, budget * GB)
    assert 64 <= tile < 192
    frames = frames_of(src)
    for args, t in ((["--memory-budget", f"{budget:.6f}"], tile), (["--tile", "64"], 64)):
        out = tmp_path / f"out{t}.mkv"
        assert main(["upscale", str(src), "-o", str(out), "--lossless", *args]) == 0
        err = capsys.readouterr().err
        if t == tile:
            assert f"frames are 256x192: upscaling in {tile}x{tile} tiles to stay within" in err, err
        got = frames_of(out)
        assert len(got) == len(frames) == 5
        for a, b in zip(got, frames):
            np.testing.assert_array_equal(a, upscale_array(x2, b, 2, tile=t))
    assert not np.array_equal(got[0], upscale_array(x2, frames[0], 2))  # tiles do change pixels: routing seen


# ----------------------------------------------------------------------------- case 6: audio plan
def test_pcm_mkv_to_mp4_reencodes_the_audio_before_any_frame(tmp_path):
    src = make_video(tmp_path / "pcm.mkv", seconds=1, audio="pcm_s16le", layout="stereo")
    out = tmp_path / "out.mp4"
    p = run_prfdn("upscale", src, "-o", out)
    assert p.returncode == 0, p.stderr
    assert f"note: {src}: audio (pcm_s16le) re-encoded to AAC: mp4 cannot hold it as it is" in p.stderr, p.stderr
    assert "error" not in p.stderr and ".out.mp4." not in p.stderr + p.stdout
    assert info(out)["audio"] == ["aac"] and len(frames_of(out)) == 10
    assert 0 <= audio_samples(out) - audio_samples(src) <= 2048  # AAC's priming and padding
    assert temp_files(tmp_path) == []


# ----------------------------------------------------------------------------- case 7: damaged inputs
def test_a_cut_mkv_says_where_it_ended(tmp_path):
    full = make_video(tmp_path / "full.mkv", seconds=4)
    cut = tmp_path / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out.mp4"
    p = run_prfdn("upscale", cut, "-o", out)
    assert p.returncode == 0, p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.startswith("prfdn")]
    assert len(warnings) == 1, p.stderr
    m = re.fullmatch(rf"prfdn: warning: {re.escape(str(cut))}: the input ended early: after frame (\d+) at "
                     r"([\d.]+) s of 4\.\d\d s, about 40 frames; the output holds the (\d+) frames before the end",
                     warnings[0])
    assert m, warnings[0]
    n = int(m[3])
    assert 5 < n < 35 and int(m[1]) == n and 0.5 < float(m[2]) < 3.5
    assert len(frames_of(out)) == n and f"({n} frames" in p.stdout
    assert temp_files(tmp_path) == []


def test_undecodable_frames_are_skipped_and_counted(tmp_path):
    src = make_video(tmp_path / "noise.mp4", seconds=4, audio=None, noise=True)  # ~70 kB of video packets
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 20_000] = np.random.default_rng(1).integers(0, 256, 20_000, np.uint8).tobytes()
    bad = tmp_path / "patched.mp4"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out.mp4"
    p = run_prfdn("upscale", bad, "-o", out)
    assert p.returncode == 0, p.stderr
    warnings = [line for line in p.stderr.splitlines() if line.startswith("prfdn")]
    m = re.fullmatch(rf"prfdn: warning: {re.escape(str(bad))}: (\d+) undecodable frames skipped \(between "
                     r"[\d.]+ s and [\d.]+ s\); the output holds the (\d+) others", warnings[0] if warnings else "")
    assert len(warnings) == 1 and m, p.stderr
    assert int(m[1]) > 0 and int(m[1]) + int(m[2]) == 40 and len(frames_of(out)) == int(m[2])


# ----------------------------------------------------------------------------- case 8: SIGTERM
def test_sigterm_leaves_no_temp_file_and_exits_143(tmp_path):
    src = make_video(tmp_path / "long.mp4", seconds=20)
    folder = tmp_path / "out"
    folder.mkdir()
    proc = subprocess.Popen(prfdn_command("upscale", src, "-o", folder / "o.mp4"), env=prfdn_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not temp_files(folder) and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert temp_files(folder) and proc.poll() is None, "no temp output seen while it ran"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if line.startswith("prfdn")] == ["prfdn: terminated (SIGTERM)"], err
    assert "Traceback" not in err and list(folder.iterdir()) == []


# ----------------------------------------------------------------------------- case 9: full disk
DISK_FULL_AFTER_10_PACKETS = """
import av, errno
_open = av.open
class _Full:
    def __init__(self, c):
        self._c, self._n = c, 0
    def __getattr__(self, name):
        return getattr(self._c, name)
    def mux(self, packet):
        self._n += 1
        if self._n > 10:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._c.mux(packet)
def _patched(file, mode="r", *a, **k):
    c = _open(file, mode, *a, **k)
    return _Full(c) if mode == "w" and isinstance(file, str) else c
av.open = _patched
"""


def test_a_full_disk_names_the_output_and_the_space_needed(tmp_path):
    src = make_video(tmp_path / "in.mp4", seconds=3, audio=None)
    out = tmp_path / "long2.mp4"
    p = run_prfdn("upscale", src, "-o", out, pre=DISK_FULL_AFTER_10_PACKETS)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert re.fullmatch(rf"prfdn: error: {re.escape(str(out))}: cannot write the video: no space left on device "
                        rf"\(it needs about [\d.]+ [MG]B; [\d.]+ [MG]B free in {re.escape(str(tmp_path))}\)",
                        lines[0]), lines[0]
    assert sorted(q.name for q in tmp_path.iterdir()) == ["in.mp4"]


# ----------------------------------------------------------------------------- case 14: colour tags, ALAC
def test_colour_tags_are_kept_and_used(tmp_path, x2):
    bt709 = {"color_primaries": 1, "color_trc": 1, "colorspace": 1, "color_range": 1}
    src = make_video(tmp_path / "bt709.mp4", colour=bt709, audio=None, seconds=1)
    assert info(src)["colour"] == bt709
    out = tmp_path / "out.mp4"
    upscale_video(x2, 2, src, out)
    assert info(out)["colour"] == bt709
    # converted to YUV with BT.709 as the tags say (decoding reads the tags): within the 4:2:0 round trip
    ref = [av.VideoFrame.from_ndarray(upscale_array(x2, f, 2), format="rgb24")
           .reformat(format="yuv420p", dst_colorspace=1).to_ndarray(format="rgb24") for f in frames_of(src)]
    assert min(_psnr(a, b) for a, b in zip(frames_of(out), ref)) > 36


def test_alac_keeps_its_last_packet(tmp_path, x2):
    src = make_video(tmp_path / "alac.mkv", seconds=1, audio="alac")
    out = tmp_path / "out.mp4"
    res = upscale_video(x2, 2, src, out)
    assert res.audio == "copied" and info(out)["audio"] == ["alac"]
    assert audio_samples(out) == audio_samples(src) == 16000
