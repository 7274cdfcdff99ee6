"""Training curves from a parsed log: loss (raw and smoothed), test accuracy/top-5/loss and learning rate.

Uses matplotlib's Agg backend (no display needed), and draws only the panels the log has data for, so the same
function serves a 20-iteration Caffe log without tests and a full VGG run.
"""
from __future__ import annotations

import os

import numpy as np

from vggproto.caffe.files import atomic_write_bytes, check_output
from vggproto.errors import VGGProtoError
from vggproto.train.logparse import Series, TrainingLog, read_log

FORMATS = ("png", "svg", "pdf")


def moving_average(values: list[float], window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (shorter at the start), like Caffe's ``average_loss``."""
    data = np.asarray(values, dtype=np.float64)
    window = max(1, min(int(window), len(data)))
    sums = np.cumsum(np.insert(data, 0, 0.0))
    counts = np.minimum(np.arange(1, len(data) + 1), window)
    starts = np.arange(1, len(data) + 1) - counts
    return (sums[1:] - sums[starts]) / counts


def _auto_window(n: int) -> int:
    return max(1, n // 25)


def _same_curve(a: Series, b: Series) -> bool:
    """True when ``a`` and ``b`` agree wherever both have a value (the displayed loss is the raw loss when
    ``average_loss`` is 1)."""
    values = dict(zip(b.iters, b.values))
    common = [(v, values[i]) for i, v in zip(a.iters, a.values) if i in values]
    return all(x == y or (x != x and y != y) for x, y in common)


def _loss_panel(ax, parsed: TrainingLog, smooth: int) -> None:
    raw = parsed.raw_loss if len(parsed.raw_loss) else parsed.loss
    window = smooth or _auto_window(len(raw))
    if len(parsed.loss) and not _same_curve(parsed.loss, raw):
        ax.plot(raw.iters, raw.values, color="#9ecae1", linewidth=0.8, label="train loss (raw)")
        ax.plot(parsed.loss.iters, parsed.loss.values, color="#08519c", linewidth=1.5,
                label="train loss (displayed, average_loss)")
    elif window > 1:
        ax.plot(raw.iters, raw.values, color="#9ecae1", linewidth=0.8, label="train loss (raw)")
        ax.plot(raw.iters, moving_average(raw.values, window), color="#08519c", linewidth=1.5,
                label=f"train loss (moving average of {window})")
    else:  # too few points to smooth: the displayed loss also has Caffe's extra point after max_iter
        shown = parsed.loss if len(parsed.loss) >= len(raw) else raw
        ax.plot(shown.iters, shown.values, color="#08519c", linewidth=1.5, label="train loss")
    for name, series in parsed.test.items():
        if "loss" in name.lower():
            ax.plot(series.iters, series.values, "o-", color="#e6550d", markersize=3, label=f"test {name}")
    ax.set_ylabel("loss")
    _scale_loss_axis(ax, [v for line in ax.get_lines() for v in line.get_ydata()])
    ax.legend(loc="upper right", fontsize="small")


def _scale_loss_axis(ax, values: list[float]) -> None:
    """A log axis when the loss spans over a decade (the first iterations would flatten a linear one), else a
    linear axis clipped to the later values' range."""
    finite = [float(v) for v in values if v == v and abs(float(v)) != float("inf")]
    if not finite:
        return
    if min(finite) > 0 and max(finite) > 10 * min(finite):
        ax.set_yscale("log")
    else:
        tail = sorted(finite)[: max(1, int(0.98 * len(finite)))]
        low, high = min(finite), max(tail)
        ax.set_ylim(low - 0.05 * (high - low), high + 0.1 * (high - low) + 1e-12)


def _accuracy_panel(ax, metrics: dict[str, Series]) -> None:
    for name, series in metrics.items():
        ax.plot(series.iters, series.values, "o-", markersize=3, label=f"test {name}")
    ax.set_ylabel("test accuracy")
    ax.legend(loc="lower right", fontsize="small")


def _lr_panel(ax, lr: Series) -> None:
    ax.plot(lr.iters, lr.values, color="#31a354", drawstyle="steps-post")
    if all(v > 0 for v in lr.values) and max(lr.values) > 10 * min(lr.values):
        ax.set_yscale("log")
    ax.set_ylabel("learning rate")


def plot_log(parsed: TrainingLog, out: str | os.PathLike, smooth: int = 0, title: str | None = None) -> str:
    """Draw ``parsed`` into ``out`` (format from the extension: png, svg or pdf); return the path written.

    ``smooth`` is the moving-average window used when the log's displayed loss is just the raw loss
    (0 = about 1/25 of the points).
    """
    from matplotlib.figure import Figure  # a bare Figure renders with Agg, leaving pyplot's backend alone

    out = os.fspath(out)
    fmt = os.path.splitext(out)[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise VGGProtoError(f"{out}: cannot plot to '.{fmt}'; supported: " + ", ".join(f".{f}" for f in FORMATS))
    if len(parsed.loss) == 0 and len(parsed.raw_loss) == 0 and not parsed.test:
        raise VGGProtoError(f"{parsed.source}: the log has no loss or test output to plot")
    metrics = {k: v for k, v in parsed.test.items() if "loss" not in k.lower()}
    panels = ["loss"] + (["accuracy"] if metrics else []) + (["lr"] if len(parsed.lr) else [])
    fig = Figure(figsize=(8, 2.6 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels):
        if panel == "loss":
            _loss_panel(ax, parsed, smooth)
        elif panel == "accuracy":
            _accuracy_panel(ax, metrics)
        else:
            _lr_panel(ax, parsed.lr)
        ax.grid(True, alpha=0.3)
    axes[-1].set_xlabel("iteration")
    fig.suptitle(title or os.path.basename(parsed.source))
    fig.tight_layout()
    buffer = _render(fig, fmt)
    atomic_write_bytes(out, buffer)   # the command says what it wrote, in its one line
    return out


def _render(fig, fmt: str) -> bytes:
    import io
    stream = io.BytesIO()
    fig.savefig(stream, format=fmt, dpi=110)
    return stream.getvalue()


def plot_file(log_path: str | os.PathLike, out: str | os.PathLike, smooth: int = 0,
              force: bool = False) -> TrainingLog:
    """Parse ``log_path`` (Caffe/vggproto glog text or CSV) and plot it into ``out``; return the parsed log."""
    check_output(out, inputs=(log_path,), force=force)
    parsed = read_log(log_path)
    plot_log(parsed, out, smooth=smooth)
    return parsed
