"""Progress as users expect it: a tqdm bar on a terminal, Caffe-style periodic log lines in a file or pipe.

A bar redraws itself with carriage returns, which turn a log file into one long line of spam, so it is drawn only
when stderr is a terminal; otherwise every ``every`` items one line is logged (``Processed 1000 files.`` as
Caffe's convert_imageset does, or ``evaluate: 500/50000 images, 31.2 img/s, ETA 0:26:30``).  Both are silenced
when the ``vggproto`` loggers do not log INFO (``vggproto -q``) or the caller passes ``enabled=False``.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

log = logging.getLogger("vggproto.progress")
T = TypeVar("T")

#: The periodic line's default: ``{what}``, ``{n}``, ``{total}``, ``{rate}`` (items/s) and ``{eta}`` are filled in.
LINE = "{what}: {n}/{total} images, {rate:.1f} img/s, ETA {eta}"


def stderr_is_terminal() -> bool:
    """Whether stderr (where bars and logs go) is a terminal."""
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Counts finished items (``update``); shows them as a bar, as periodic lines, or not at all (``mode``)."""

    def __init__(self, total: int | None, what: str, every: int = 1000, line: str = LINE, enabled: bool = True,
                 unit: str = "img"):
        self.total, self.what, self.every, self.line = total, what, max(1, every), line
        self.n, self.started, self.bar = 0, time.perf_counter(), None
        self.mode = ("off" if not enabled or not log.isEnabledFor(logging.INFO) else
                     "bar" if stderr_is_terminal() else "lines")
        if self.mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit=unit, desc=what, file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        """``n`` more items done; in ``lines`` mode, one line each time the count passes a multiple of ``every``."""
        if n <= 0:
            return
        before, self.n = self.n, self.n + n
        if self.bar is not None:
            self.bar.update(n)
        elif self.mode == "lines" and self.n // self.every > before // self.every:
            self._log()

    def _log(self) -> None:
        elapsed = time.perf_counter() - self.started
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.n) / rate if self.total and rate > 0 else 0.0
        log.info(self.line.format(what=self.what, n=self.n, total=self.total if self.total is not None else "?",
                                  rate=rate, eta=_clock(left)))

    def close(self) -> None:
        """End the bar; in ``lines`` mode log the last count unless a periodic line just said it (Caffe's rule)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self.mode == "lines" and self.n % self.every:
            self._log()
        self.mode = "off"

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(items: Iterable[T], total: int | None = None, what: str = "", every: int = 1000,
             line: str = LINE, enabled: bool = True) -> Iterator[T]:
    """``items`` unchanged, counted by a :class:`Progress` (an item counts once the loop body has run)."""
    with Progress(total if total is not None else _length(items), what, every, line, enabled) as bar:
        for item in items:
            yield item
            bar.update(1)


def _length(items: Iterable) -> int | None:
    try:
        return len(items)  # type: ignore[arg-type]
    except TypeError:
        return None
