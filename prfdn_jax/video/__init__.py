"""``prfdn upscale IN.mp4 -o OUT.mp4``: upscale every frame of a video, keep its timing, colour tags and audio.

:func:`upscale_video` streams: frames are decoded one packet at a time, upscaled and encoded as H.264
as they come, so memory stays bounded whatever the length. Decoding, the network and encoding overlap
(three stages in bounded queues, :mod:`prfdn_jax.video.pipeline`). Frames run either whole, ``batch`` at a
time through one compiled program (every batch has the same shape; the last one is padded), or, with
``tile``, one at a time through :func:`prfdn_jax.inference.upscale_array`, the tiling images use (``tile``
may be a function of the frame size: ``prfdn upscale`` passes the automatic tile of ``--memory-budget``,
the same as for an image). The output keeps each frame's timestamp (the input's time base and frame rate), the colour
tags (primaries, transfer, matrix, range; RGB <-> YUV uses the input's matrix and range) and the
first audio stream.

Audio: the plan is made before any frame is computed. The packets are copied unchanged when a trial
(header, the first packets and the trailer, written in memory) shows that the output container takes
them; otherwise they are re-encoded to AAC (with the standard channel layout of their channel count)
and a note says so. A copied packet without a duration (Matroska) gets the one of its samples, so
the muxer keeps the last one.

Input: anything FFmpeg reads (.mp4, .mkv, .mov, .webm, ...); output: .mp4, .mkv or .mov (H.264 is not
allowed in WebM). The output is written to a temp file beside it and renamed at the end: an
unreadable or unsupported input, a failed write (a full disk: one line naming the output, the free
space and about how much the video needs) raise one :class:`VideoError` line and leave no output file.
A damaged input is upscaled as far as it goes: undecodable frames are skipped (the output holds the
others at their own timestamps) and an input that ends before its declared length (a cut file) keeps
the frames before the cut; either way :attr:`VideoResult.warnings` says how many frames and where.

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
import errno
import os
import shutil
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from prfdn_jax.video import pipeline
from prfdn_jax.video.audio import add_aac, audio_plan
from prfdn_jax.video.common import VideoError, WriteFailed, line, size_text
from prfdn_jax.video.decode import damage, decode
from prfdn_jax.video.writer import Job, Writer

__all__ = ["CONTAINERS", "PRESETS", "VideoError", "VideoResult", "is_video", "upscale_video"]

CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mkv": "matroska", ".mov": "mov"}  # output suffix -> muxer
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".mov", ".webm", ".avi")  # treated as videos by `prfdn upscale`
DEFAULT_CRF = 18
# x264's speed / size trade-offs (the same quality at a given crf; faster presets write larger files)
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
DEFAULT_PRESET = "medium"  # x264's own default
COLOUR_TAGS = ("color_primaries", "color_trc", "colorspace", "color_range")
DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


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
    warnings: list[str] = dataclasses.field(default_factory=list)  # a damaged input: frames skipped or cut
    tile: int = 0             # LR tile the frames ran in (0: whole frames)


def is_video(path: str | os.PathLike) -> bool:
    """Whether ``prfdn upscale`` should treat ``path`` as a video (by its suffix)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


# ----------------------------------------------------------------------------- output
def _colour(cc, lossless: bool) -> tuple[dict, dict | None]:
    """``(output tags, RGB -> YUV reformat arguments or None: RGB out)`` for an input of codec context ``cc``:
    the input's primaries and transfer, and for YUV out its matrix and range (an RGB input's are left
    unspecified: standard limited-range BT.601, as untagged inputs get)."""
    tags = {t: getattr(cc, t) for t in COLOUR_TAGS[:2]}
    if lossless:
        return tags, None
    kw = {}
    if cc.colorspace not in (0, 2):  # 0: RGB, 2: unspecified
        tags["colorspace"] = kw["dst_colorspace"] = cc.colorspace
    if cc.colorspace != 0 and cc.color_range:
        tags["color_range"] = cc.color_range
        if cc.color_range == 2:  # full ("JPEG") range
            kw["dst_color_range"] = 2
    return tags, kw


@dataclasses.dataclass(frozen=True)
class _Encoding:
    """The x264 settings of one job."""

    crf: int
    preset: str
    lossless: bool


def _open_output(av, tmp: Path, fmt: str, vs, aud, size, enc: _Encoding, copy: bool, tags: dict):
    """``(container, video stream, audio stream or None)`` with the header written: H.264 with the input's
    timing and colour ``tags``, the audio copied (``copy``) or encoded as AAC."""
    out = av.open(str(tmp), "w", format=fmt)
    try:
        ov = out.add_stream("libx264rgb" if enc.lossless else "libx264", rate=vs.average_rate or vs.guessed_rate)
        ov.width, ov.height = size
        ov.pix_fmt = "rgb24" if enc.lossless else "yuv420p"
        ov.time_base = ov.codec_context.time_base = vs.time_base  # keep every frame's timestamp as it is
        ov.options = {"crf": "0" if enc.lossless else str(enc.crf), "preset": enc.preset}
        for tag, value in tags.items():
            setattr(ov.codec_context, tag, value)
        oa = None
        if aud is not None:
            oa = out.add_stream_from_template(aud) if copy else add_aac(out, aud)
        out.start_encoding()
        return out, ov, oa
    except BaseException:
        out.close()
        raise


def _check_args(src: Path, dst: Path, crf, batch, preset) -> str:
    """The output muxer of ``dst``; :class:`VideoError` for arguments no job can use."""
    fmt = CONTAINERS.get(dst.suffix.lower())
    if fmt is None:
        raise VideoError(f"{dst}: the output must be {', '.join(CONTAINERS)} (H.264), not {dst.suffix or 'no suffix'}")
    if not 0 <= int(crf) <= 51:
        raise VideoError(f"crf must be in 0..51, got {crf}")
    if preset not in PRESETS:
        raise VideoError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
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


def _declared(inp, vs, rate) -> tuple[int | None, float | None]:
    """(frames, seconds) the input says its video holds (None where it does not say)."""
    secs = None
    if vs.duration and vs.time_base:
        secs = float(vs.duration * vs.time_base)
    elif inp.duration:
        secs = inp.duration / 1e6 - max(0.0, (inp.start_time or 0) / 1e6)
    frames = vs.frames or (int(secs * rate) if secs else None)
    return frames, secs




def _disk_full(dst: Path, wr: Writer | None) -> VideoError:
    """One line for a full disk: the output, about what the whole video needs, the free space."""
    try:
        free = size_text(shutil.disk_usage(dst.parent).free)
    except OSError:
        free = "?"
    need, estimated = wr.needed() if wr is not None else (0, False)
    need = f"about {size_text(need)}" if estimated else f"more than {size_text(need)}"
    return VideoError(f"{dst}: cannot write the video: no space left on device (it needs {need}; {free} free in "
                      f"{dst.parent})")


# ----------------------------------------------------------------------------- the job
def upscale_video(apply: Callable, scale: int, src: str | os.PathLike, dst: str | os.PathLike,
                  crf: int = DEFAULT_CRF, batch: int | None = None,
                  progress: Callable[[int, int | None, float], None] | None = None,
                  lossless: bool = False, tile: int | Callable[[int, int, int], int] = 0,
                  overlap: int | None = None, preset: str = DEFAULT_PRESET, threads: bool = True) -> VideoResult:
    """Upscale the video ``src`` by ``scale`` into ``dst`` (see the module doc); returns a :class:`VideoResult`.

    ``apply``: ``(B, H, W, 3)`` float [0, 255] -> ``(B, sH, sW, 3)`` float (``prfdn_jax.deploy.deploy``).
    ``crf``: x264 quality, 0 (lossless luma) .. 51, lower is better (18: visually lossless); ``preset``: x264's
    speed (:data:`PRESETS`; faster ones write larger files at the same crf).
    ``batch``: frames per call of ``apply`` (default: the backend's ``video_batch``, :mod:`prfdn_jax.backends`).
    ``tile``: LR tile of :func:`prfdn_jax.inference.upscale_array` (0: whole frames, ``batch`` at a time), or
    ``tile(width, height, batch)`` giving it for the frame size; ``overlap`` (default 16): of the tiles.
    ``progress(frames_done, total_frames or None, frames_per_second)`` is called after every batch (from
    the encode thread). ``threads``: decode, the network and encode overlap (:mod:`prfdn_jax.video.pipeline`;
    the same frames as without).
    """
    from prfdn_jax.extras import require_module

    av = require_module("av", "video upscaling")
    if batch is None:
        from prfdn_jax.backends import choices

        batch = choices().video_batch
    if overlap is None:
        from prfdn_jax.inference import DEFAULT_OVERLAP as overlap
    src, dst = Path(src), Path(dst)
    fmt = _check_args(src, dst, crf, batch, preset)
    t0 = time.perf_counter()
    inp = None
    try:
        inp = av.open(str(src))
        vs, aud, (w, h), rate = _video_stream(inp, src)
        return _run(av, inp, (vs, aud, (w, h), rate), src, dst, fmt, apply, scale,
                    _Encoding(int(crf), preset, lossless), int(batch), progress, tile, overlap, t0, threads)
    except (av.FFmpegError, OSError, ValueError) as e:
        if isinstance(e, VideoError):
            raise
        raise VideoError(f"{src}: cannot read the video ({line(e)})") from None
    finally:
        if inp is not None:
            inp.close()


def _run(av, inp, stream, src: Path, dst: Path, fmt: str, apply, scale: int, enc: _Encoding, batch: int, progress,
         tile, overlap: int, t0: float, threads: bool) -> VideoResult:
    """:func:`upscale_video` once the input is open: the plan (size, tiles, audio, colour), then the frames."""
    from prfdn_jax.fileio import atomic_write

    vs, aud, (w, h), rate = stream
    notes: list[str] = []
    ow, oh = w * scale, h * scale
    if not enc.lossless and (ow % 2 or oh % 2):
        notes.append(f"output {ow}x{oh} cropped to {ow - ow % 2}x{oh - oh % 2}: yuv420p needs even sizes")
        ow, oh = ow - ow % 2, oh - oh % 2
    tile = int(tile(w, h, batch) if callable(tile) else tile)
    copy, note = audio_plan(av, src, fmt, aud)  # before any frame is computed
    notes += [note] if note else []
    tags, colour = _colour(vs.codec_context, enc.lossless)
    declared = _declared(inp, vs, rate)
    job = Job(av, apply, scale, batch, tile, overlap, (ow, oh), vs.time_base or Fraction(1) / rate, src, progress,
              declared[0], colour)
    stage, hide, wr = "cannot decode", {}, None
    try:
        with atomic_write(dst, suffix=dst.suffix) as tmp:  # renamed onto dst at the end of the block
            hide[str(tmp)], job.tmp = str(dst), tmp
            try:
                out, ov, oa = _open_output(av, tmp, fmt, vs, aud, (ow, oh), enc, copy, tags)
            except (av.FFmpegError, OSError, ValueError) as e:
                raise WriteFailed(e) from None
            wr = Writer(job, out, ov, oa, copy)
            d = pipeline.run(job, wr, lambda sink, stopped: decode(av, inp, vs, aud, sink, (w, h), rate, job.tb, src,
                                                                   stopped), threads)
            if wr.done == 0:
                raise VideoError(f"{src}: no video frames could be decoded")
            stage = "cannot write"
            wr.finish()
    except VideoError:
        raise
    except (WriteFailed, av.FFmpegError, OSError, ValueError) as e:
        err = e.args[0] if isinstance(e, WriteFailed) else e
        if isinstance(err, OSError) and err.errno in DISK_FULL:
            raise _disk_full(dst, wr) from None
        where, what = (dst, "cannot write") if isinstance(e, WriteFailed) else (dst if stage == "cannot write"
                                                                                else src, stage)
        raise VideoError(f"{where}: {what} the video ({line(e, hide)})") from None
    finally:
        if wr is not None:
            try:
                wr.out.close()
            except Exception:  # noqa: BLE001 - closing a broken container after an error
                pass
    warnings = damage(d, declared, rate, job.tb)
    if wr.bad_audio:
        warnings.append(f"{wr.bad_audio} undecodable audio packet{'s' if wr.bad_audio > 1 else ''} skipped")
    secs = time.perf_counter() - t0
    return VideoResult(wr.done, secs, wr.done / secs, Fraction(rate), (w, h), (ow, oh),
                       "none" if aud is None else "copied" if copy else "re-encoded to AAC", notes, warnings, tile)
