"""Progress of a long job (a folder of images, a video, an evaluation, a training run), one owner for all.

:func:`progress` returns a tqdm bar on stderr when stderr is a terminal, and otherwise (a log file, a
pipe) :class:`ProgressLines`: plain lines, no carriage returns, one every :func:`every_s` seconds
(``PRFDN_PROGRESS_EVERY``, default 10) and one at the end. Both have tqdm's interface as the jobs use
it: iterate, ``update(n)``, ``set_postfix(**values)``, ``close()``, ``n`` and a settable ``total``.

Standard library only (tqdm is imported when a bar is drawn): the bottom layer.
"""

from __future__ import annotations

import os
import sys
import time

__all__ = ["PROGRESS_EVERY_S", "ProgressLines", "every_s", "progress"]

PROGRESS_EVERY_S = 10.0  # default seconds between two plain lines (PRFDN_PROGRESS_EVERY overrides)


def every_s() -> float:
    """Seconds between two plain progress lines: ``$PRFDN_PROGRESS_EVERY`` (a number > 0), else 10."""
    try:
        v = float(os.environ.get("PRFDN_PROGRESS_EVERY", PROGRESS_EVERY_S))
    except ValueError:
        return PROGRESS_EVERY_S
    return v if v > 0 else PROGRESS_EVERY_S


def progress(items=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
             min_total: int = 2, final: bool = False):
    """A tqdm bar over ``items`` (or updated by hand) on a terminal, else :class:`ProgressLines`.

    ``total``: items expected (None: unknown); ``initial``: already done (a resumed run); nothing is shown
    when ``total`` is known and below ``min_total`` (one image needs no bar); ``final``: a plain line when
    the count reaches ``total`` too (for jobs that print no summary of their own)."""
    quiet = total is not None and total < min_total
    if not quiet and not sys.stderr.isatty():
        return ProgressLines(items, total, desc, unit, initial, final)
    from tqdm import tqdm

    return tqdm(items, total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr, disable=quiet or None,
                dynamic_ncols=True, leave=False)


class ProgressLines:
    """tqdm's interface, printing ``desc: done/total unit (elapsed s, rate unit/s, postfix)`` lines to stderr
    every :func:`every_s` seconds (a job shorter than that prints none), and with ``final`` one more when
    the count reaches ``total``."""

    def __init__(self, items=None, total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0,
                 final: bool = False):
        self.items, self.total, self.desc, self.unit, self.final = items, total, desc, unit, final
        self.n = self.start = initial
        self.every = every_s()
        self.t0 = self.last = time.monotonic()  # the start, then when the last line was printed
        self.printed = initial                   # self.n at the last line
        self.postfix = ""

    def __iter__(self):
        for item in self.items:
            yield item
            self.update(1)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every or (self.final and self.total is not None and self.n >= self.total):
            self._line(now)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def _line(self, now: float) -> None:
        if self.n == self.printed:
            return
        self.last, self.printed = now, self.n
        secs = now - self.t0
        done = f"{self.n}/{self.total}" if self.total is not None else str(self.n)
        rate = f", {(self.n - self.start) / secs:.3g} {self.unit}/s" if secs > 0 and self.n > self.start else ""
        tail = f", {self.postfix}" if self.postfix else ""
        print(f"{self.desc}: {done} {self.unit} ({secs:.0f} s{rate}{tail})", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass
