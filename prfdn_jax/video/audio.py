"""The audio of an upscaled video: copy the packets or re-encode them to AAC, decided before any frame."""

from __future__ import annotations

import io
from pathlib import Path

from prfdn_jax.video.common import VideoError, line

TRIAL_PACKETS = 8  # audio packets muxed in memory to decide between copying and re-encoding


def _trial_copy(av, src: Path, fmt: str, index: int) -> None:
    """Mux the first :data:`TRIAL_PACKETS` packets of audio stream ``index`` of ``src`` into an in-memory
    ``fmt`` file, header to trailer; raises what the muxer raises."""
    with av.open(str(src)) as inp:
        aud = next(s for s in inp.streams if s.index == index)
        out = av.open(io.BytesIO(), "w", format=fmt)
        try:
            if aud.codec_context.name not in out.supported_codecs:
                raise ValueError(f"{fmt} does not list {aud.codec_context.name}")
            oa = out.add_stream_from_template(aud)
            out.start_encoding()
            n = 0
            for p in inp.demux(aud):
                if p.dts is not None:
                    p.stream = oa
                    out.mux(p)
                    n += 1
                if n == TRIAL_PACKETS:
                    break
        finally:
            out.close()  # writes the trailer: where MP4 refuses multichannel PCM


def add_aac(out, aud):
    """An AAC stream on ``out`` for the audio stream ``aud`` (standard layout of its channel count)."""
    import av

    oa = out.add_stream("aac", rate=aud.codec_context.sample_rate)
    oa.layout = av.AudioLayout(f"{aud.codec_context.layout.nb_channels}c")
    return oa


def audio_plan(av, src: Path, fmt: str, aud) -> tuple[bool, str | None]:
    """``(copy the packets?, note)`` for the audio stream ``aud`` (None: no audio) into a ``fmt`` output,
    decided before any frame is computed; :class:`VideoError` when it can be neither copied nor encoded."""
    if aud is None:
        return False, None
    name = aud.codec_context.name
    try:
        _trial_copy(av, src, fmt, aud.index)
        return True, None
    except (av.FFmpegError, OSError, ValueError, StopIteration):
        pass
    out = av.open(io.BytesIO(), "w", format=fmt)
    try:
        add_aac(out, aud)
        out.start_encoding()
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoError(f"{src}: its audio ({name}) can be neither copied into {fmt} nor re-encoded to AAC "
                         f"({line(e)})") from None
    finally:
        out.close()
    return False, f"audio ({name}) re-encoded to AAC: {fmt} cannot hold it as it is"


