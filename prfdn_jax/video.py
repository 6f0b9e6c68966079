"""``prfdn upscale IN.mp4 -o OUT.mp4``: upscale every frame of a video, keep its timing and audio.

:func:`upscale_video` streams: frames are decoded one packet at a time, upscaled ``batch`` at a time
through one compiled program (every batch has the same shape; the last one is padded), encoded as
H.264 and written as they come, so memory stays bounded whatever the length. The output keeps each
frame's timestamp (the input's time base and frame rate) and the first audio stream: its packets are
copied unchanged when the output container accepts the codec, else it is re-encoded to AAC. Input:
anything FFmpeg reads (.mp4, .mkv, .mov, .webm, ...); output: .mp4, .mkv or .mov (H.264 is not
allowed in WebM). The output is written to a temp file beside it and renamed at the end: a broken
or unsupported input raises one :class:`VideoError` line and leaves no output file.

Why PyAV (the ``video`` extra, ``av``) and not imageio-ffmpeg or an ``ffmpeg`` subprocess: PyAV
installs from PyPI as wheels with their own FFmpeg libraries (libx264 and AAC included; no system
ffmpeg needed), hands frames over as numpy arrays without pipes, decodes and encodes as a stream
(frame by frame, exact timestamps and time bases), and can copy audio packets into the new file
without re-encoding them (remuxing), which imageio-ffmpeg's frame-pipe interface cannot.

yuv420p (the default, what every player plays) needs an even width and height: x2 and x4 outputs
always are, x3 of an odd-sized input is not, and then the last output row / column is cropped (a
note says so). ``lossless=True`` writes RGB H.264 (``libx264rgb``, qp 0): bit-exact frames, any size,
large files that fewer players accept.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = ["CONTAINERS", "VideoError", "VideoResult", "is_video", "upscale_video"]

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov"}  # output suffix -> muxer
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")  # treated as videos by `prfdn upscale`
DEFAULT_CRF = 18


class VideoError(ValueError):
    """A video that cannot be read, upscaled or written (one line, naming the file)."""


@dataclasses.dataclass
class VideoResult:
    frames: int
    seconds: float            # wall time of the whole job
    fps: float                # frames upscaled per second of wall time
    frame_rate: Fraction      # of the video (kept in the output)
    in_size: tuple[int, int]  # (width, height)
    out_size: tuple[int, int]
    audio: str                # 'copied', 're-encoded to AAC' or 'none'
    notes: list[str]


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``prfdn upscale`` should treat ``path`` as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def _line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:  # FFmpeg errors: the text without errno and file name
        return e.strerror
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _open_output(av, tmp: Path, fmt: str, vs, aud, size, crf: int, lossless: bool, allow_copy: bool):
    """``(container, video stream, audio stream or None, audio copied?)`` with the header written.

    The audio is copied when ``allow_copy`` and the muxer lists its codec, else encoded as AAC."""
    out = av.open(str(tmp), "w", format=fmt)
    try:
        ov = out.add_stream("libx264rgb" if lossless else "libx264", rate=vs.average_rate or vs.guessed_rate)
        ov.width, ov.height = size
        ov.pix_fmt = "rgb24" if lossless else "yuv420p"
        ov.time_base = ov.codec_context.time_base = vs.time_base  # keep every frame's timestamp as it is
        ov.options = {"crf": "0" if lossless else str(int(crf))}
        oa, copy = None, False
        if aud is not None:
            copy = allow_copy and aud.codec_context.name in out.supported_codecs
            if copy:
                oa = out.add_stream_from_template(aud)
            else:
                oa = out.add_stream("aac", rate=aud.codec_context.sample_rate)
                oa.layout = aud.codec_context.layout
        out.start_encoding()
        return out, ov, oa, copy
    except BaseException:
        out.close()
        raise


def _check_args(src: Path, dst: Path, crf, batch) -> str:
    """The output muxer of ``dst``; :class:`VideoError` for arguments no job can use."""
    fmt = CONTAINERS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"{dst}: the output must be {', '.join(CONTAINERS)} (H.264), not {dst.suffix or 'no suffix'}")
    if not 0 <= int(crf) <= 51:
        raise VideoError(f"crf must be in 0..51, got {crf}")
    if int(batch) < 1:
        raise VideoError(f"batch must be >= 1, got {batch}")
    if not src.is_file():
        raise VideoError(f"{src}: no such file")
    return fmt


def _video_stream(inp, src: Path):
    """``(video stream, first audio stream or None, (w, h), frame rate)`` of an opened input, checked."""
    from prfdn_jax.spec import MIN_SIZE

    if not inp.streams.video:
        raise VideoError(f"{src}: no video stream")
    vs = inp.streams.video[0]
    vs.thread_type = "AUTO"
    aud = inp.streams.audio[0] if inp.streams.audio else None
    w, h = vs.codec_context.width, vs.codec_context.height
    if min(w, h) < MIN_SIZE:
        raise VideoError(f"{src}: frames are {w}x{h}; the network needs at least {MIN_SIZE}x{MIN_SIZE} pixels")
    rate = vs.average_rate or vs.guessed_rate
    if not rate:
        raise VideoError(f"{src}: the video stream has no frame rate")
    return vs, aud, (w, h), rate


class _Writer:
    """Frames in, ``batch`` at a time through ``apply``, H.264 out. The network runs asynchronously: a
    batch is encoded while the next one is computed. Audio packets are copied or re-encoded."""

    def __init__(self, av, out, ov, oa, copy: bool, apply: Callable, batch: int, size, tb, src: Path,
                 progress: Callable | None, total: int | None):
        self.av, self.out, self.ov, self.oa, self.copy = av, out, ov, oa, copy
        self.apply, self.batch, self.size, self.tb, self.src = apply, batch, size, tb, src
        self.progress, self.total, self.t0 = progress, total, time.perf_counter()
        self.frames: list = []
        self.pending = None
        self.done = 0

    def _upscaled(self, fn, *args):
        try:
            return fn(*args)
        except (ValueError, RuntimeError) as e:  # e.g. XLA out of memory (computed asynchronously)
            raise VideoError(f"{self.src}: upscaling a frame failed ({_line(e)})") from None

    def audio(self, packet) -> None:
        if self.copy:
            if packet.dts is not None:
                packet.stream = self.oa
                self.out.mux(packet)
            return
        for af in packet.decode():
            for p in self.oa.encode(af):
                self.out.mux(p)

    def add(self, pts: int, img: np.ndarray) -> None:
        self.frames.append((pts, img))
        if len(self.frames) == self.batch:
            self._submit()

    def _submit(self) -> None:
        frames, self.frames = self.frames, []
        x = np.stack([img for _, img in frames]).astype(np.float32)
        if len(frames) < self.batch:  # pad: the same shape, the same compiled program
            x = np.concatenate([x, np.repeat(x[-1:], self.batch - len(frames), 0)])
        y = self._upscaled(self.apply, x)[: len(frames)]  # asynchronous: encode the previous batch meanwhile
        if self.pending is not None:
            self._encode(*self.pending)
        self.pending = ([pts for pts, _ in frames], y)

    def _encode(self, pts_list, y) -> None:
        from prfdn_jax.inference import to_uint8

        ow, oh = self.size
        sr = self._upscaled(to_uint8, y)[:, :oh, :ow]
        for pts, img in zip(pts_list, sr):
            f = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            f.pts, f.time_base = pts, self.tb
            for p in self.ov.encode(f):
                self.out.mux(p)
        self.done += len(pts_list)
        if self.progress is not None:
            self.progress(self.done, self.total, self.done / max(time.perf_counter() - self.t0, 1e-9))

    def flush(self) -> None:
        """Upscale and encode what is left (the last, padded batch and the pending one)."""
        if self.frames:
            self._submit()
        if self.pending is not None:
            self._encode(*self.pending)
            self.pending = None

    def finish(self) -> None:
        """Flush the encoders and write the trailer."""
        for p in self.ov.encode(None):
            self.out.mux(p)
        if self.oa is not None and not self.copy:
            for p in self.oa.encode(None):
                self.out.mux(p)
        self.out.close()


def upscale_video(apply: Callable, scale: int, src: str | os.PathLike, dst: str | os.PathLike,
                  crf: int = DEFAULT_CRF, batch: int | None = None,
                  progress: Callable[[int, int | None, float], None] | None = None,
                  lossless: bool = False) -> VideoResult:
    """Upscale the video ``src`` by ``scale`` into ``dst`` (see the module doc); returns a :class:`VideoResult`.

    ``apply``: ``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float (``prfdn_jax.deploy.deploy``).
    ``crf``: x264 quality, 0 (lossless luma) .. 51, lower is better (18: visually lossless).
    ``batch``: frames per call of ``apply`` (default: the backend's ``video_batch``, :mod:`prfdn_jax.backends`).
    ``progress(frames_done, total_frames or None, frames_per_second)`` is called after every batch.
    """
    from prfdn_jax.extras import require_module
    from prfdn_jax.fileio import atomic_write

    av = require_module("av", "video upscaling")
    if batch is None:
        from prfdn_jax.backends import choices

        batch = choices().video_batch
    src, dst = Path(src), Path(dst)
    fmt = _check_args(src, dst, crf, batch)
    t0 = time.perf_counter()
    notes: list[str] = []
    stage = "cannot read"
    inp = wr = None
    try:
        inp = av.open(str(src))
        vs, aud, (w, h), rate = _video_stream(inp, src)
        ow, oh = w * scale, h * scale
        if not lossless and (ow % 2 or oh % 2):
            notes.append(f"output {ow}x{oh} cropped to {ow - ow % 2}x{oh - oh % 2}: yuv420p needs even sizes")
            ow, oh = ow - ow % 2, oh - oh % 2
        stage = "cannot write"
        with atomic_write(dst, suffix=dst.suffix) as tmp:  # renamed onto dst at the end of the block
            try:
                out, ov, oa, copy = _open_output(av, tmp, fmt, vs, aud, (ow, oh), crf, lossless, True)
            except av.FFmpegError:
                if aud is None:
                    raise
                # the muxer refused to take the audio packets as they are after all: re-encode them
                out, ov, oa, copy = _open_output(av, tmp, fmt, vs, aud, (ow, oh), crf, lossless, False)
            audio = "none" if aud is None else "copied" if copy else "re-encoded to AAC"
            if aud is not None and not copy:
                notes.append(f"audio ({aud.codec_context.name}) re-encoded to AAC: {fmt} cannot hold it as it is")
            tb = vs.time_base or Fraction(1) / rate
            wr = _Writer(av, out, ov, oa, copy, apply, int(batch), (ow, oh), tb, src, progress, vs.frames or None)
            stage = "cannot decode"
            n_read = 0
            for packet in inp.demux(*(s for s in (vs, aud) if s is not None)):
                if packet.stream is aud:
                    wr.audio(packet)
                    continue
                for vf in packet.decode():
                    img = vf.to_ndarray(format="rgb24")
                    if img.shape[:2] != (h, w):
                        raise VideoError(f"{src}: frame size changes mid-stream "
                                         f"({w}x{h} -> {img.shape[1]}x{img.shape[0]})")
                    wr.add(vf.pts if vf.pts is not None else int(round(n_read / (rate * tb))), img)
                    n_read += 1
            wr.flush()
            if wr.done == 0:
                raise VideoError(f"{src}: no video frames could be decoded")
            stage = "cannot write"
            wr.finish()
            done, wr = wr.done, None
    except VideoError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        where = dst if stage == "cannot write" else src
        raise VideoError(f"{where}: {stage} the video ({_line(e)})") from None
    finally:
        for c in ((wr.out if wr is not None else None), inp):
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001 - closing a broken container after an error
                    pass
    secs = time.perf_counter() - t0
    return VideoResult(done, secs, done / secs, Fraction(rate), (w, h), (ow, oh), audio, notes)
