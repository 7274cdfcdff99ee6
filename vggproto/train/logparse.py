"""Read training logs into series: Caffe's glog dialect (real Caffe's and vggproto's own) and vggproto's CSV.

Caffe's ``tools/extra/parse_log.py`` defines what a log means; this module follows the same facts:
``Iteration N`` sets the current iteration, ``Train net output #k: name = v`` and ``Test net output #k: name = v``
are attributed to it, ``lr = r`` is the learning rate.  In addition the displayed (smoothed, ``average_loss``)
loss of ``Iteration N (...), loss = L`` lines is kept, since the training curve is usually drawn from it.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
from dataclasses import dataclass, field

from vggproto.errors import VGGProtoError

log = logging.getLogger("vggproto.train.logparse")

# A number as glog prints it, including Caffe's spellings of non-finite values.
_NUM = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?nan|[-+]?inf)"
_ITER = re.compile(r"Iteration (\d+)")
_DISPLAY_LOSS = re.compile(r"Iteration (\d+)\b.*?, loss = " + _NUM)
_LR = re.compile(r"\blr = " + _NUM)
_OUTPUT = re.compile(r"(Train|Test) net output #(\d+): (\S+) = " + _NUM + r"(?: \(\* " + _NUM + " = " + _NUM
                     + r" loss\))?")
_TESTING = re.compile(r"Testing net \(#(\d+)\)")


@dataclass
class Series:
    """One curve: values against iterations (same length, in log order)."""

    iters: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def add(self, it: int, value: float) -> None:
        self.iters.append(it)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.iters)


@dataclass
class TrainingLog:
    """Everything a training log says about the run, as series keyed by output name.

    ``loss`` is the displayed loss (Caffe smooths it over ``average_loss`` iterations); ``raw_loss`` is the
    per-iteration objective (sum of the weighted loss outputs of the train net); ``train`` and ``test`` hold every
    net output by name (a test net other than #0 prefixes its outputs with ``test<k>/``).
    """

    source: str
    loss: Series = field(default_factory=Series)
    raw_loss: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    train: dict[str, Series] = field(default_factory=dict)
    test: dict[str, Series] = field(default_factory=dict)

    @property
    def last_iter(self) -> int | None:
        iters = [s.iters[-1] for s in (self.loss, self.raw_loss, self.lr, *self.train.values(), *self.test.values())
                 if len(s)]
        return max(iters) if iters else None

    def series(self) -> dict[str, Series]:
        """All non-empty series under flat names: ``loss``, ``raw_loss``, ``lr``, ``train/x``, ``test/x``."""
        flat = {"loss": self.loss, "raw_loss": self.raw_loss, "lr": self.lr}
        flat.update({f"train/{k}": v for k, v in self.train.items()})
        flat.update({f"test/{k}": v for k, v in self.test.items()})
        return {k: v for k, v in flat.items() if len(v)}


def _number(text: str) -> float:
    return math.nan if text.lower().lstrip("+-") == "nan" else float(text)


def parse_caffe_log(text: str, source: str = "<log>") -> TrainingLog:
    """Parse glog text written by ``caffe train`` or ``vggproto train``."""
    result = TrainingLog(source=source)
    it: int | None = None
    test_net = 0
    raw: dict[int, float] = {}
    for line in text.splitlines():
        match = _ITER.search(line)
        if match:
            it = int(match.group(1))
        if it is None:
            continue
        testing = _TESTING.search(line)
        if testing:
            test_net = int(testing.group(1))
        shown = _DISPLAY_LOSS.search(line)
        if shown:
            result.loss.add(int(shown.group(1)), _number(shown.group(2)))
        lr = _LR.search(line)
        if lr:
            result.lr.add(it, _number(lr.group(1)))
        output = _OUTPUT.search(line)
        if output:
            _add_output(result, output, it, test_net, raw)
    for key in sorted(raw):
        result.raw_loss.add(key, raw[key])
    return result


def _add_output(result: TrainingLog, match: re.Match, it: int, test_net: int, raw: dict[int, float]) -> None:
    kind, name, value, contribution = match.group(1), match.group(3), _number(match.group(4)), match.group(6)
    if kind == "Train":
        result.train.setdefault(name, Series()).add(it, value)
        if contribution is not None:
            # Caffe: solver.cpp prints "(* loss_weight = weighted loss)" for outputs that enter the objective.
            raw[it] = raw.get(it, 0.0) + _number(contribution)
    else:
        key = name if test_net == 0 else f"test{test_net}/{name}"
        result.test.setdefault(key, Series()).add(it, value)


# CSV columns with a fixed meaning; every other numeric column is a test output unless it starts with "train".
_CSV_FIXED = {"loss": "raw_loss", "smoothed_loss": "loss", "lr": "lr"}


def parse_csv_log(text: str, source: str = "<csv>") -> TrainingLog:
    """Parse a CSV with an ``iter`` column (vggproto's training CSV: iter, loss, smoothed_loss, lr, tests...).

    Empty cells mean "not measured at this iteration" (test columns are filled only on test iterations).
    """
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    if "iter" not in columns:
        raise VGGProtoError(f"{source}: a CSV training log needs an 'iter' column; found columns: "
                            + (", ".join(columns) or "none"))
    result = TrainingLog(source=source)
    for lineno, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        try:
            it = int(float(row["iter"]))
        except ValueError:
            raise VGGProtoError(f"{source}:{lineno}: 'iter' must be a number, got '{row['iter']}'") from None
        for column, cell in row.items():
            if column == "iter" or not cell:
                continue
            try:
                value = _number(cell)
            except ValueError:
                continue  # a text column (e.g. a timestamp) is not a curve
            _csv_series(result, column).add(it, value)
    return result


def _csv_series(result: TrainingLog, column: str) -> Series:
    if column in _CSV_FIXED:
        return getattr(result, _CSV_FIXED[column])
    if column.startswith("train"):
        return result.train.setdefault(column.split("/", 1)[-1].removeprefix("train_"), Series())
    return result.test.setdefault(column.split("/", 1)[-1].removeprefix("test_"), Series())


def read_log(path: str | os.PathLike) -> TrainingLog:
    """Read a training log file (CSV when it ends in ``.csv``, otherwise glog text); it must hold iterations."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        raise VGGProtoError(f"{path}: cannot read training log: {exc.strerror}") from None
    parsed = parse_csv_log(text, path) if path.lower().endswith(".csv") else parse_caffe_log(text, path)
    if parsed.last_iter is None:
        kind = "CSV rows" if path.lower().endswith(".csv") else "'Iteration N' lines"
        raise VGGProtoError(f"{path}: no training iterations found (expected {kind} as written by "
                            "'caffe train' or 'vggproto train')")
    log.debug("%s: %d series, last iteration %d", path, len(parsed.series()), parsed.last_iter)
    return parsed
