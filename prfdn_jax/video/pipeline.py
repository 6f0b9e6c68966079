"""Decode, the network and encode of one video job, overlapped, so that a clip runs at the network's speed.

Three stages, joined by bounded queues (:class:`Pipeline`):

- a decode thread demuxes and decodes the input into RGB frames (:func:`prfdn_jax.video.decode.decode`);
- the calling (main) thread runs the network (:class:`Network`): whole frames ``batch`` at a time through
  one compiled program (every batch the same shape, the last one padded), or one frame at a time in tiles;
- an encode thread converts the output to uint8, to YUV, encodes it with x264 and muxes it with the audio
  (:class:`prfdn_jax.video.writer.Writer`).

Every frame goes through exactly the operations of the one-thread path (``threads=False``, :func:`serial`),
so the output is the same bit for bit. Memory stays what the one-thread path uses: at most two network
outputs are alive (one being computed, one waiting for or in its uint8 conversion) and the frames waiting for
the network are at most ``2 * batch + 2``. An error in any stage stops the others (each waits at most
:data:`POLL_S` on a queue before it looks) and is raised in the calling thread once both threads have
ended, so the caller's clean-up (closing the output, removing its temp file) never races a thread;
Ctrl-C and SIGTERM (raised in the main thread) stop the job the same way.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import SimpleNamespace

import numpy as np

from prfdn_jax.fileio import check_stop
from prfdn_jax.video.common import upscaled
from prfdn_jax.video.decode import Decoded
from prfdn_jax.video.writer import Job, Writer

POLL_S = 0.1   # how long a stage waits on a queue before it checks whether another stage failed
OUTPUTS = 2    # network outputs alive at once (the memory the frame tile's budget counts)
_END = object()


class Stopped(Exception):
    """Another stage failed or the job was interrupted: this stage ends too."""


class Network:
    """Frames in, the network's output out: ``emit(pts_list, y)`` with ``y`` ``(B, sH, sW, 3)`` (float, maybe
    still being computed, or uint8 from tiles). ``slot()`` is called before each batch is computed (it waits
    for a free output buffer)."""

    def __init__(self, job: Job, emit: Callable, slot: Callable[[], None] = lambda: None):
        self.job, self.emit, self.slot = job, emit, slot
        self.frames: list = []

    def frame(self, pts: int, img: np.ndarray) -> None:
        j = self.job
        if j.tile:
            from prfdn_jax.inference import upscale_array

            self.slot()
            self.emit([pts], upscaled(j.src, upscale_array, j.apply, img, j.scale, j.tile, j.overlap)[None])
            return
        self.frames.append((pts, img))
        if len(self.frames) == j.batch:
            self._submit()

    def _submit(self) -> None:
        frames, self.frames, batch = self.frames, [], self.job.batch
        x = np.stack([img for _, img in frames]).astype(np.float32)
        if len(frames) < batch:  # pad: the same shape, the same compiled program
            x = np.concatenate([x, np.repeat(x[-1:], batch - len(frames), 0)])
        self.slot()
        y = upscaled(self.job.src, self.job.apply, x)[: len(frames)]  # asynchronous where the backend allows
        self.emit([pts for pts, _ in frames], y)

    def flush(self) -> None:
        """The last, padded batch."""
        if self.frames:
            self._submit()


def run(job: Job, wr: Writer, decode: Callable, threads: bool = True) -> Decoded:
    """Upscale every frame ``decode(sink, stopped)`` gives into ``wr``; returns what ``decode`` returned.
    ``threads``: the three stages overlapped (:class:`Pipeline`), else one after the other (:func:`serial`)."""
    return Pipeline(job, wr).run(decode) if threads else serial(job, wr, decode)


def serial(job: Job, wr: Writer, decode: Callable) -> Decoded:
    """One thread: a batch is encoded after the next one is submitted (overlapping where the backend
    computes asynchronously)."""
    pending: list = []

    def emit(pts_list, y):
        if pending:
            p, q = pending.pop()
            wr.video(p, wr.pixels(q))
        pending.append((pts_list, y))

    net = Network(job, emit)
    d = decode(SimpleNamespace(audio=wr.audio, frame=net.frame), lambda: False)
    net.flush()
    for p, q in pending:
        wr.video(p, wr.pixels(q))
    return d


class Pipeline:
    """The three stages in two threads and the caller's (see the module doc)."""

    def __init__(self, job: Job, wr: Writer):
        self.job, self.wr = job, wr
        self.frames: queue.Queue = queue.Queue(maxsize=2 * job.batch + 2)  # decoded frames and audio packets
        self.encode: queue.Queue = queue.Queue()  # bounded by the output slots (and the frames queue)
        self.slots = threading.Semaphore(OUTPUTS)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.decoded: Decoded | None = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ waiting, failing
    def fail(self, e: BaseException) -> None:
        """Record ``e`` (the first error wins) and stop every stage."""
        with self._lock:
            if self.error is None:
                self.error = e
        self.stop.set()

    def _put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                return q.put(item, timeout=POLL_S)
            except queue.Full:
                pass

    def _get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise Stopped
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass

    def _slot(self) -> None:
        while not self.slots.acquire(timeout=POLL_S):
            if self.stop.is_set():
                raise Stopped

    # ------------------------------------------------------------------ the stages
    def _decoder(self, decode: Callable) -> None:
        sink = SimpleNamespace(audio=lambda packet: self._put(self.frames, ("audio", packet)),
                               frame=lambda pts, img: self._put(self.frames, ("frame", pts, img)))
        try:
            self.decoded = decode(sink, self.stop.is_set)
            self._put(self.frames, _END)
        except Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            self.fail(e)

    def _encoder(self) -> None:
        try:
            while (item := self._get(self.encode)) is not _END:
                if item[0] == "audio":
                    self.wr.audio(item[1])
                    continue
                pts_list, y = item[1], item[2]
                del item
                sr = self.wr.pixels(y)
                del y
                self.slots.release()  # the float output is no longer needed: the network may start another
                self.wr.video(pts_list, sr)
        except Stopped:
            pass
        except BaseException as e:  # noqa: BLE001 - raised again in the calling thread
            self.fail(e)

    def run(self, decode: Callable) -> Decoded:
        """The network stage in this thread, decode and encode in two others; the first error of any stage
        (or Ctrl-C / SIGTERM here) raised here after both threads have ended."""
        threads = [threading.Thread(target=self._decoder, args=(decode,), name="prfdn-decode", daemon=True),
                   threading.Thread(target=self._encoder, name="prfdn-encode", daemon=True)]
        for t in threads:
            t.start()
        net = Network(self.job, lambda pts_list, y: self.encode.put(("video", pts_list, y)), self._slot)
        try:
            while (item := self._get(self.frames)) is not _END:
                check_stop()  # a SIGTERM whose exception Python swallowed (raised inside a gc callback)
                if item[0] == "audio":
                    self.encode.put(item)
                else:
                    net.frame(item[1], item[2])
            net.flush()
            self.encode.put(_END)
            self._join(threads)
        except BaseException as e:
            if not isinstance(e, Stopped | KeyboardInterrupt):
                self.fail(e)
            self.stop.set()
            self._join(threads)
            if isinstance(e, KeyboardInterrupt) or self.error is None:
                raise
            raise self.error from None
        if self.error is not None:
            raise self.error
        return self.decoded

    @staticmethod
    def _join(threads) -> None:
        for t in threads:
            while t.is_alive():  # short waits: Ctrl-C and SIGTERM still reach this thread
                t.join(POLL_S)
