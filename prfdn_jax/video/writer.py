"""Upscaled frames in, H.264 out: :class:`Writer` encodes and muxes the frames of one job with its audio."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np

from prfdn_jax.video.common import WriteFailed, file_size, upscaled


@dataclasses.dataclass
class Job:
    """What every frame of one job shares."""

    av: object
    apply: Callable
    scale: int
    batch: int
    tile: int                     # 0: whole frames, ``batch`` at a time; else one frame at a time in tiles
    overlap: int
    size: tuple[int, int]         # output (width, height)
    tb: Fraction                  # of the input's video stream (kept)
    src: Path
    progress: Callable | None
    total: int | None
    colour: dict                  # RGB -> YUV arguments of VideoFrame.reformat (None: lossless RGB)
    tmp: Path | None = None       # the output's temp file


class Writer:
    """Upscaled frames (``(B, sH, sW, 3)`` network output, float or uint8) in, H.264 out; audio packets copied
    or re-encoded. One thread calls it. Every encode and write goes through :meth:`_send`: a failure there
    is :class:`WriteFailed`."""

    def __init__(self, job: Job, out, ov, oa, copy: bool):
        self.job, self.out, self.ov, self.oa, self.copy = job, out, ov, oa, copy
        self.t0 = time.perf_counter()
        self.done = self.bad_audio = self.muxed = self.video_packets = 0

    def _send(self, stream, item=None, packet=None) -> None:
        """Encode ``item`` on ``stream`` (None: flush) and mux what comes out, or mux ``packet``."""
        av = self.job.av
        try:
            for p in ([packet] if packet is not None else stream.encode(item)):
                size = p.size
                self.out.mux(p)
                self.muxed += size
                self.video_packets += stream is self.ov
        except (av.FFmpegError, OSError, ValueError) as e:
            raise WriteFailed(e) from None

    def needed(self) -> tuple[float, bool]:
        """``(bytes, estimated?)``: about what the whole output takes (from the video packets written so
        far and the frame count), else (not estimated) what was written before a failure."""
        written = max(self.muxed, file_size(self.job.tmp))
        if self.video_packets and self.job.total:
            return written / self.video_packets * max(self.job.total, self.video_packets), True
        return written, False

    def audio(self, packet) -> None:
        av = self.job.av
        if self.copy:
            if packet.dts is None:  # the demuxer's end-of-stream packet
                return
            if not packet.duration:  # Matroska: the muxer would drop the last packet of unknown length
                try:
                    samples = sum(f.samples for f in packet.decode())
                except av.FFmpegError:
                    samples = 0
                if samples and packet.time_base:
                    packet.duration = round(samples / self.oa.codec_context.sample_rate / packet.time_base)
            packet.stream = self.oa
            self._send(self.oa, packet=packet)
            return
        try:
            frames = packet.decode()  # the end-of-stream packet flushes the decoder
        except av.FFmpegError:
            self.bad_audio += 1
            return
        for af in frames:
            self._send(self.oa, af)

    def pixels(self, y) -> np.ndarray:
        """The network output ``y`` as uint8, cropped to the output size (waits for an asynchronous ``y``)."""
        from prfdn_jax.inference import to_uint8

        ow, oh = self.job.size
        sr = y if isinstance(y, np.ndarray) and y.dtype == np.uint8 else upscaled(self.job.src, to_uint8, y)
        return sr[:, :oh, :ow]

    def video(self, pts_list: list[int], sr: np.ndarray) -> None:
        """Encode the uint8 frames ``sr`` (:meth:`pixels`) at their timestamps; then report progress."""
        j = self.job
        for pts, img in zip(pts_list, sr):
            f = j.av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if j.colour is not None:
                f = f.reformat(format="yuv420p", **j.colour)
            f.pts, f.time_base = pts, j.tb
            self._send(self.ov, f)
        self.done += len(pts_list)
        if j.progress is not None:
            j.progress(self.done, j.total, self.done / max(time.perf_counter() - self.t0, 1e-9))

    def finish(self) -> None:
        """Flush the encoders and write the trailer."""
        self._send(self.ov)
        if self.oa is not None and not self.copy:
            self._send(self.oa)
        try:
            self.out.close()
        except (self.job.av.FFmpegError, OSError, ValueError) as e:
            raise WriteFailed(e) from None
