"""The input side of a video job: demux and decode into RGB frames, skipping what cannot be decoded.

:func:`decode` hands every audio packet and every decoded frame (``(H, W, 3)`` uint8 RGB, its timestamp)
to a sink, in the input's order, and returns a :class:`Decoded`: the frames, the packets skipped and
where, and why the input ended. :func:`damage` turns that into the warnings of a damaged input.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

from prfdn_jax.video.common import VideoError, line

EARLY_END_S = 0.5  # an input whose frames end this much before its declared duration ended early


@dataclasses.dataclass
class Decoded:
    """What the input gave: frames decoded, packets skipped (undecodable), where, and why it ended."""

    frames: int = 0
    skipped: int = 0
    skip_t: list = dataclasses.field(default_factory=list)  # seconds of the first and last skipped frame
    first: int | None = None      # smallest and largest timestamp of a frame decoded or skipped
    last: int | None = None
    broken: str | None = None     # the demuxer's error where the container became unreadable

    def seen(self, pts) -> None:
        if pts is not None:
            self.first = pts if self.first is None else min(self.first, pts)
            self.last = pts if self.last is None else max(self.last, pts)


def decode(av, inp, vs, aud, sink, size: tuple[int, int], rate, tb: Fraction, src: Path,
           stopped: Callable[[], bool] = lambda: False) -> Decoded:
    """Demux and decode ``inp``, calling ``sink.audio(packet)`` and ``sink.frame(pts, rgb)``: an undecodable
    packet is skipped, an unreadable container ends the input (both recorded); a frame size change
    mid-stream is a :class:`VideoError`. Ends early (what was decoded so far) once ``stopped()``."""
    w, h = size
    d = Decoded()
    packets = inp.demux(*(s for s in (vs, aud) if s is not None))
    while not stopped():
        try:
            packet = next(packets)
        except StopIteration:
            break
        except (av.FFmpegError, OSError) as e:
            d.broken = line(e)
            break
        if packet.stream is aud:
            sink.audio(packet)
            continue
        try:
            frames = packet.decode()
        except av.FFmpegError:
            d.seen(packet.pts)
            d.skipped += 1
            if packet.pts is not None:
                t = float((packet.pts - (d.first or 0)) * tb)
                d.skip_t = [d.skip_t[0] if d.skip_t else t, t]
            continue
        for vf in frames:
            img = vf.to_ndarray(format="rgb24", src_color_range=vf.color_range or None)
            if img.shape[:2] != (h, w):
                raise VideoError(f"{src}: frame size changes mid-stream ({w}x{h} -> {img.shape[1]}x{img.shape[0]})")
            pts = vf.pts if vf.pts is not None else int(round(d.frames / (rate * tb)))
            d.seen(pts)
            sink.frame(pts, img)
            d.frames += 1
    return d


def damage(d: Decoded, declared: tuple[int | None, float | None], rate, tb) -> list[str]:
    """The warnings of a damaged input: frames skipped, an early end (at which frame and time)."""
    out = []
    if d.skipped:
        a, b = d.skip_t or (0.0, 0.0)
        out.append(f"{d.skipped} undecodable frame{'s' if d.skipped > 1 else ''} skipped (between {a:.2f} s and "
                   f"{b:.2f} s); the output holds the {d.frames} others")
    frames, secs = declared
    last = float((d.last - d.first) * tb) if d.last is not None else 0.0
    if d.broken or (secs and last + 1 / float(rate) < secs - EARLY_END_S):
        of = f" of {secs:.2f} s" + (f", about {frames} frames" if frames else "") if secs else ""
        why = f" ({d.broken})" if d.broken else ""
        out.append(f"the input ended early{why}: after frame {d.frames + d.skipped} at {last:.2f} s{of}; the output "
                   f"holds the {d.frames} frames before the end")
    return out
