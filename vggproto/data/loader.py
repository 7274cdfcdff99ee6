"""Batch feeding: the stateful cursor a data layer owns, with optional worker processes, prefetching and
pinned memory.

Batches are pure functions of their start position (see :mod:`vggproto.data.batches`), so worker processes
compute them out of order and the feed hands them back in order; ``set_cursor`` simply restarts the workers at
the new position.  With ``num_workers=0`` batches are built synchronously in the calling process.
"""
from __future__ import annotations

import itertools
import logging
from typing import Callable, Iterator

import torch

from vggproto.data.batches import Batch

log = logging.getLogger("vggproto.data.loader")


class _BatchDataset(torch.utils.data.Dataset):
    """Map-style dataset over batch numbers k -> the batch starting at ``start + k * batch_size``."""

    def __init__(self, maker: Callable[[int], Batch], start: int, batch_size: int):
        self.maker, self.start, self.batch_size = maker, start, batch_size

    def __getitem__(self, k: int):
        batch = self.maker(self.start + k * self.batch_size)
        return batch.start, [torch.from_numpy(t) for t in batch.tops], batch.bad


class _Forever(torch.utils.data.Sampler):
    def __iter__(self) -> Iterator[int]:
        return itertools.count()


def worker_init(_: int) -> None:
    # One compute thread per worker process: parallelism comes from the processes.
    torch.set_num_threads(1)


def _single_threaded_opencv() -> None:
    """Give OpenCV one thread *before* forking workers: reconfiguring its thread pool inside a forked child
    deadlocks when the parent had already started that pool (seen under pytest-xdist)."""
    try:
        import cv2
    except ImportError:
        return
    cv2.setNumThreads(1)


class BatchFeed:
    """The data position of a layer plus the machinery that produces its batches in order."""

    def __init__(self, maker: Callable[[int], Batch], batch_size: int, num_workers: int = 0,
                 prefetch: int = 2, pin_memory: bool = False):
        self.maker, self.batch_size = maker, batch_size
        self.num_workers, self.prefetch, self.pin_memory = num_workers, prefetch, pin_memory
        self._cursor = 0
        self._iter: Iterator | None = None
        self.bad_records = 0

    def cursor(self) -> int:
        """Records consumed so far by this rank (the value to save with a snapshot)."""
        return self._cursor

    def set_cursor(self, n: int) -> None:
        """Continue from record position ``n`` (restarts any worker processes)."""
        self._cursor = int(n)
        self._iter = None

    def _start(self) -> Iterator:
        _single_threaded_opencv()
        dataset = _BatchDataset(self.maker, self._cursor, self.batch_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, sampler=_Forever(), num_workers=self.num_workers,
            prefetch_factor=self.prefetch, pin_memory=self.pin_memory, worker_init_fn=worker_init,
            persistent_workers=False)
        return iter(loader)

    def next(self) -> list[torch.Tensor]:
        """The next batch's tops as float32 tensors; advances the cursor by one batch."""
        if self.num_workers > 0:
            if self._iter is None:
                self._iter = self._start()
            start, tops, bad = next(self._iter)
            if start != self._cursor:   # cannot happen unless the cursor was changed behind our back
                raise RuntimeError(f"data feed out of order: got batch at {start}, expected {self._cursor}")
        else:
            batch = self.maker(self._cursor)
            tops, bad = [torch.as_tensor(t) for t in batch.tops], batch.bad
            if self.pin_memory:
                tops = [t.pin_memory() if t.device.type == "cpu" else t for t in tops]
        for message in bad:
            log.warning("skipping bad record: %s", message)
        self.bad_records += len(bad)
        self._cursor += self.batch_size
        return tops

    def close(self) -> None:
        """Stop worker processes (they also stop when the feed is garbage collected)."""
        self._iter = None
