"""Video upscaling (prfdn_jax.video): frame count, frame rate, audio, frames equal to the image path."""

import os
from fractions import Fraction

import numpy as np
import pytest

from helpers import FPS, H, SECONDS, W, frames_of, info, make_video
from prfdn_jax import registry
from prfdn_jax.deploy import deploy
from prfdn_jax.inference import upscale_array
from prfdn_jax.video import VideoError, upscale_video

av = pytest.importorskip("av")



def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


@pytest.fixture(scope="module")
def x2():
    return deploy(registry.load("prfdn-x2"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_video(tmp_path_factory.mktemp("video") / "in.mp4")


def _no_temp_files(folder) -> bool:
    return not [p for p in os.listdir(folder) if p.startswith(".")]


def test_lossless_frames_equal_the_image_path(tmp_path, clip, x2):
    shapes, calls = [], []

    def apply(x):
        shapes.append(x.shape)
        return x2(x)

    out = tmp_path / "out.mkv"
    res = upscale_video(apply, 2, clip, out, batch=3, lossless=True,
                        progress=lambda done, total, fps: calls.append((done, total, fps)))
    src, got = frames_of(clip), frames_of(out)
    assert res.frames == len(got) == len(src) == FPS * SECONDS
    assert set(shapes) == {(3, H, W, 3)}  # one compiled program: the last batch is padded
    assert [c[0] for c in calls] == [3, 6, 9, 12, 15, 18, 20] and all(c[2] > 0 for c in calls)
    i = info(out)
    assert i["rate"] == FPS and res.frame_rate == FPS and i["size"] == (2 * W, 2 * H) and i["audio"] == ["aac"]
    assert res.audio == "copied" and res.notes == []
    for a, b in zip(got, src):
        np.testing.assert_array_equal(a, upscale_array(x2, b, 2))
    assert _no_temp_files(tmp_path)


def test_h264_output_keeps_timing_and_audio(tmp_path, clip, x2):
    out = tmp_path / "out.mp4"
    res = upscale_video(x2, 2, clip, out, crf=18)
    src, got = frames_of(clip), frames_of(out)
    i = info(out)
    assert len(got) == len(src) == res.frames and i["rate"] == FPS and i["codec"] == "h264"
    assert i["audio"] == ["aac"] and res.audio == "copied"
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        pa = [f.pts * f.time_base for f in a.decode(video=0)]
        pb = [f.pts * f.time_base for f in b.decode(video=0)]
        assert pa == pb  # every frame keeps its timestamp
        da, db = a.streams.audio[0], b.streams.audio[0]
        assert da.duration * da.time_base == db.duration * db.time_base
    # against the image path seen through yuv420p (the RGB->YUV 4:2:0->RGB round trip alone costs ~38 dB
    # on this saturated pattern): measured 38.0 dB worst frame at crf 18, 43.6 at crf 10
    ref = [av.VideoFrame.from_ndarray(upscale_array(x2, b, 2), format="rgb24").reformat(format="yuv420p")
           .to_ndarray(format="rgb24") for b in src]
    worst = min(psnr(a, b) for a, b in zip(got, ref))
    assert worst > 36, worst


def test_webm_in_mov_out_reencodes_audio(tmp_path, x2):
    src = make_video(tmp_path / "in.webm", vcodec="libvpx-vp9", audio="libopus", sample_rate=48000)
    res = upscale_video(x2, 2, src, tmp_path / "out.mov")
    assert res.audio == "re-encoded to AAC" and "opus" in res.notes[0]
    assert info(tmp_path / "out.mov")["audio"] == ["aac"] and len(frames_of(tmp_path / "out.mov")) == FPS * SECONDS
    res = upscale_video(x2, 2, src, tmp_path / "out.mkv")  # Matroska takes Opus as it is
    assert res.audio == "copied" and info(tmp_path / "out.mkv")["audio"] == ["opus"]


@pytest.mark.slow
def test_odd_x3_output_is_cropped_to_even(tmp_path):
    src = make_video(tmp_path / "odd.mkv", w=33, h=25, seconds=1, vcodec="ffv1", pix_fmt="bgr0", audio=None)
    res = upscale_video(deploy(registry.load("prfdn-x3")), 3, src, tmp_path / "out.mp4")
    assert res.out_size == (98, 74) and "cropped to 98x74" in res.notes[0] and res.audio == "none"
    assert info(tmp_path / "out.mp4")["size"] == (98, 74) and info(tmp_path / "out.mp4")["audio"] == []


def test_broken_or_unsupported_video_leaves_no_output(tmp_path, clip, x2):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(clip.read_bytes()[:2000])
    out = tmp_path / "out.mp4"
    for src, match in ((broken, "broken.mp4: cannot read the video"), (tmp_path / "none.mp4", "no such file")):
        with pytest.raises(VideoError, match=match) as e:
            upscale_video(x2, 2, src, out)
        assert "\n" not in str(e.value)
        assert not out.exists()
    out.write_bytes(b"old")  # a failed run leaves an existing output alone
    with pytest.raises(VideoError):
        upscale_video(x2, 2, broken, out)
    assert out.read_bytes() == b"old"
    with pytest.raises(VideoError, match="H.264"):
        upscale_video(x2, 2, clip, tmp_path / "out.webm")
    with pytest.raises(VideoError, match="crf"):
        upscale_video(x2, 2, clip, tmp_path / "o.mp4", crf=99)

    def failing(x):
        raise ValueError("device lost")

    with pytest.raises(VideoError, match=r"in.mp4: upscaling a frame failed \(device lost\)"):
        upscale_video(failing, 2, clip, tmp_path / "o.mp4")
    assert not (tmp_path / "o.mp4").exists() and _no_temp_files(tmp_path)
    assert Fraction(info(clip)["rate"]) == FPS
