"""Training logs in Caffe's dialect, the per-iteration CSV and the progress bar.

The log lines are Caffe's own (``solver.cpp`` / ``sgd_solver.cpp``) so that ``tools/extra/parse_log.py`` and
:mod:`vggproto.train.logparse` read a vggproto log like a Caffe one; numbers are printed as C++ ``ostream`` prints a
float (6 significant digits, ``%g``, :func:`vggproto.caffe.glog.fmt`); the glog line prefix is
:class:`vggproto.caffe.glog.GlogFormatter`.
"""
from __future__ import annotations

import csv
import logging
import os
import sys
from typing import Callable, Iterable, Sequence

from vggproto.caffe.glog import fmt

log = logging.getLogger("vggproto.train.solver")


# ------------------------------------------------------------------------------------------------------------------
# Caffe's log lines
# ------------------------------------------------------------------------------------------------------------------

def iteration_line(it: int, per_s: float, lapse: float, display: int, loss: float) -> str:
    """Caffe: solver.cpp Step — ``Iteration N (x iter/s, ys/D iters), loss = L`` (L = smoothed loss)."""
    return f"Iteration {it} ({fmt(per_s)} iter/s, {fmt(lapse)}s/{display} iters), loss = {fmt(loss)}"


def output_lines(kind: str, outputs: Sequence[tuple[str, Sequence[float], float]]) -> list[str]:
    """``    Train net output #k: name = v (* w = wv loss)`` for every element of every output blob.

    ``outputs`` holds ``(blob name, flat values, loss weight)`` per output blob in the net's output order.
    """
    lines, k = [], 0
    for name, values, weight in outputs:
        for value in values:
            suffix = f" (* {fmt(weight)} = {fmt(weight * value)} loss)" if weight else ""
            lines.append(f"    {kind} net output #{k}: {name} = {fmt(value)}{suffix}")
            k += 1
    return lines


def lr_line(it: int, rate: float) -> str:
    """Caffe: sgd_solver.cpp ApplyUpdate — ``Iteration N, lr = x``."""
    return f"Iteration {it}, lr = {fmt(rate)}"


def testing_line(it: int, index: int) -> str:
    """Caffe: solver.cpp TestAll — ``Iteration N, Testing net (#k)``."""
    return f"Iteration {it}, Testing net (#{index})"


def snapshot_lines(model_path: str, state_path: str, hdf5: bool) -> tuple[str, str]:
    """Caffe: solver.cpp Snapshot / sgd_solver.cpp SnapshotSolverState messages."""
    if hdf5:
        return (f"Snapshotting to HDF5 file {model_path}", f"Snapshotting solver state to HDF5 file {state_path}")
    return (f"Snapshotting to binary proto file {model_path}",
            f"Snapshotting solver state to binary proto file {state_path}")


# ------------------------------------------------------------------------------------------------------------------
# CSV beside the snapshots
# ------------------------------------------------------------------------------------------------------------------

class CsvLog:
    """``<prefix>_log.csv``: one row per iteration (iter, loss, smoothed_loss, lr, train/lr_drops) plus one
    ``test/<output>`` column per test output, filled on the iterations where a test ran.

    On resume the file is kept and rows from the resumed iteration on are dropped, so it reads as one run.  A full
    disk (ENOSPC) ends training with one line naming the file and the free space (``last_snapshot``, set by the
    solver, says which snapshot is intact); the file is then left alone.
    """

    FIXED = ("iter", "loss", "smoothed_loss", "lr", "train/lr_drops")

    def __init__(self, path: str, test_columns: Iterable[str], resume_iter: int | None = None):
        self.path = path
        self.columns = list(self.FIXED) + [f"test/{c}" for c in test_columns]
        kept: list[dict] = []
        if resume_iter is not None and os.path.isfile(path):
            with open(path, newline="", encoding="utf-8") as handle:
                kept = [row for row in csv.DictReader(handle) if _int(row.get("iter")) < resume_iter]
        self._handle = open(path, "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._handle, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow(row)
        self._pending: dict = {}
        self.last_snapshot: str | None = None
        self._broken = False

    def add_tests(self, it: int, values: dict[str, float]) -> None:
        """Remember test outputs of iteration ``it`` (written with that iteration's training row)."""
        self._flush_other(it)
        self._pending.setdefault("iter", it)
        self._pending.update({f"test/{k}": fmt(v) for k, v in values.items()})

    def add_train(self, it: int, loss: float, smoothed: float, rate: float, drops: int) -> None:
        """Write the row of iteration ``it``."""
        self._flush_other(it)
        self._pending.update({"iter": it, "loss": fmt(loss), "smoothed_loss": fmt(smoothed), "lr": fmt(rate),
                              "train/lr_drops": drops})
        self.flush()

    def _flush_other(self, it: int) -> None:
        if self._pending and self._pending.get("iter") != it:
            self.flush()

    def flush(self) -> None:
        if self._broken:
            return
        try:
            if self._pending:
                self._writer.writerow(self._pending)
                self._pending = {}
            self._handle.flush()
        except OSError as exc:
            self._broken = True
            from vggproto.train.snapshot import disk_full_error, is_disk_full
            if not is_disk_full(exc):
                raise
            raise disk_full_error(self.path, self.last_snapshot) from None

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                self._handle.close()
            except OSError:  # the buffer could not be written (the disk is full): already reported
                pass


def _int(text) -> int:
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return 1 << 62


# ------------------------------------------------------------------------------------------------------------------
# Progress bar (TTY only)
# ------------------------------------------------------------------------------------------------------------------

class Progress:
    """A tqdm bar with ETA and img/s when stderr is a terminal; a no-op otherwise (logs stay clean)."""

    def __init__(self, total: int, initial: int, images_per_iter: int | Callable[[], int],
                 enabled: bool | None = None):
        # a callable is asked at the first update: the net's blobs have their batch shape only after a forward
        self.bar = None
        self.images_per_iter = images_per_iter
        self.initial = initial
        if enabled is None:
            enabled = sys.stderr.isatty()
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=initial, unit="it", file=sys.stderr, dynamic_ncols=True)

    def update(self, loss: float) -> None:
        if self.bar is not None:
            if callable(self.images_per_iter):
                self.images_per_iter = self.images_per_iter()
            self.bar.update(1)
            info = self.bar.format_dict
            # tqdm's smoothed rate exists only after its first redraw: until then, iterations done / time taken
            rate = info.get("rate") or ((info["n"] - self.initial) / info["elapsed"] if info.get("elapsed") else 0.0)
            self.bar.set_postfix_str(f"loss={fmt(loss)} img/s={rate * self.images_per_iter:.1f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
