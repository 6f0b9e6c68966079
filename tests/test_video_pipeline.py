"""The video pipeline (prfdn_jax.video.pipeline): decode, the network and encode in three threads give the
same frames as the image path and the one-thread path; an error in any stage is one line, no hang, no
temp file, no thread left; --preset."""

import threading

import numpy as np
import pytest

from helpers import FPS, error_lines, frames_of, make_video, run_prfdn, temp_files
from prfdn_jax import registry
from prfdn_jax.deploy import deploy
from prfdn_jax.inference import upscale_array
from prfdn_jax.video import VideoError, upscale_video

av = pytest.importorskip("av")


@pytest.fixture(scope="module")
def x2():
    return deploy(registry.load("prfdn-x2"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "in.mp4", seconds=1)


def _stage_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("prfdn-")]


@pytest.mark.parametrize("batch, tile", [(3, 0), (1, 0), (1, 32)])
def test_pipelined_frames_equal_the_image_path_and_the_one_thread_path(tmp_path, clip, x2, batch, tile):
    src = frames_of(clip)
    ref = [upscale_array(x2, f, 2, tile=tile) for f in src]
    for threads in (True, False):
        out = tmp_path / f"out{threads}.mkv"
        res = upscale_video(x2, 2, clip, out, batch=batch, tile=tile, lossless=True, threads=threads)
        got = frames_of(out)
        assert res.frames == len(got) == len(src) == FPS
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a, b)
    assert temp_files(tmp_path) == [] and _stage_threads() == []


def test_an_error_in_the_network_stops_every_stage(tmp_path, clip, x2):
    calls = []

    def failing(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return x2(x)

    with pytest.raises(VideoError, match=r"in.mp4: upscaling a frame failed \(device lost\)"):
        upscale_video(failing, 2, clip, tmp_path / "o.mp4", batch=2)
    assert len(calls) == 3 and list(tmp_path.iterdir()) == [] and _stage_threads() == []


def test_ctrl_c_in_the_network_stage_leaves_no_temp_file_and_no_thread(tmp_path, clip, x2):
    calls = []

    def interrupted(x):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return x2(x)

    with pytest.raises(KeyboardInterrupt):
        upscale_video(interrupted, 2, clip, tmp_path / "o.mp4")
    assert list(tmp_path.iterdir()) == [] and _stage_threads() == []


# a stage thread fails after a few frames, in a real `prfdn` process
ENCODER_FAILS = """
import errno
from prfdn_jax.video import writer
from prfdn_jax.video.common import WriteFailed
_video = writer.Writer.video
def video(self, pts, sr):
    if self.done >= 3:
        raise WriteFailed(OSError(errno.EIO, "Input/output error"))
    return _video(self, pts, sr)
writer.Writer.video = video
"""

DECODER_FAILS = """
import prfdn_jax.video as v
from prfdn_jax.video.common import VideoError
_decode = v.decode
def decode(av, inp, vs, aud, sink, size, rate, tb, src, stopped):
    n = []
    class Sink:
        def audio(self, packet):
            sink.audio(packet)
        def frame(self, pts, img):
            n.append(1)
            if len(n) == 4:
                raise VideoError(f"{src}: frame size changes mid-stream (64x48 -> 32x24)")
            sink.frame(pts, img)
    return _decode(av, inp, vs, aud, Sink(), size, rate, tb, src, stopped)
v.decode = decode
"""


@pytest.mark.parametrize("stage, pre, message", [
    ("encode", ENCODER_FAILS, "{out}: cannot write the video (Input/output error)"),
    ("decode", DECODER_FAILS, "{src}: frame size changes mid-stream (64x48 -> 32x24)"),
])
def test_an_error_in_a_stage_thread_is_one_line_and_no_temp_file(tmp_path, clip, stage, pre, message):
    out = tmp_path / "out" / "o.mp4"
    out.parent.mkdir()
    p = run_prfdn("upscale", clip, "-o", out, pre=pre, timeout=300)
    assert p.returncode == 1, p.stderr
    assert error_lines(p.stderr) == [f"prfdn: error: {message.format(out=out, src=clip)}"], p.stderr
    assert list(out.parent.iterdir()) == []


def test_preset_is_passed_to_x264_and_checked(tmp_path, clip, x2):
    sizes = {}
    for preset in ("ultrafast", "medium"):
        out = tmp_path / f"{preset}.mp4"
        upscale_video(x2, 2, clip, out, preset=preset)
        sizes[preset] = out.stat().st_size
        assert len(frames_of(out)) == FPS
    assert sizes["ultrafast"] > sizes["medium"]  # the faster preset compresses less at the same crf
    with pytest.raises(VideoError, match="preset must be one of ultrafast, .*, got 'quick'"):
        upscale_video(x2, 2, clip, tmp_path / "q.mp4", preset="quick")
    p = run_prfdn("upscale", clip, "-o", tmp_path / "q.mp4", "--preset", "quick")
    assert p.returncode == 2 and "invalid choice: 'quick'" in p.stderr


def test_the_benchmark_script_runs(capsys):
    from experiments import video_pipeline

    assert video_pipeline.main(["--size", "24x32", "--frames", "8", "--rounds", "1", "--presets", "ultrafast"]) == 0
    out = capsys.readouterr().out
    assert "| pipelined | ultrafast | " in out and "| one thread | ultrafast | " in out, out
