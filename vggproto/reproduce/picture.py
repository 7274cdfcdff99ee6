"""``tables.png``: Table 3 (and 4) at a glance -- this run's top-1 error per configuration and training-scale mode
as bars (seed spread as error bars), the paper's values as markers on their own axis (ImageNet errors and a small
dataset's differ in level; what should agree is the pattern)."""
from __future__ import annotations

import io
from pathlib import Path

from vggproto.caffe.files import atomic_write_bytes

COLOURS = {"fixed1": "#4c72b0", "fixed2": "#55a868", "jitter": "#c44e52"}


def draw(results: list[dict], path: Path, title: str) -> None:
    """Bars of Table 3 (single test scale) and, beside them, Table 4 (three test scales), paper as markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    panels = [t for t in (3, 4) if any(r["table"] == t for r in results)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, table in zip(axes[0], panels):
        _panel(ax, [r for r in results if r["table"] == table], table)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _panel(ax, rows: list[dict], table: int) -> None:
    xs = range(len(rows))
    ax.bar(xs, [r["top1"] for r in rows], yerr=[r["top1_std"] for r in rows], capsize=3,
           color=[COLOURS[r["mode"]] for r in rows])
    ax.set_xticks(list(xs), [f"{r['config']}\n{r['train']}" for r in rows], fontsize=8)
    ax.set_ylabel("top-1 error, this run (%, seed std)")
    low = min(r["top1"] - r["top1_std"] for r in rows)
    high = max(r["top1"] + r["top1_std"] for r in rows)
    ax.set_ylim(max(0.0, low - (high - low) * 0.6 - 0.1), high + (high - low) * 0.3 + 0.1)
    ax.set_title(f"Table {table}: {'single test scale' if table == 3 else 'three test scales'}", fontsize=10)
    paper = [(x, r["paper"][0]) for x, r in zip(xs, rows) if r["paper"]]
    if paper:
        twin = ax.twinx()
        twin.plot([p[0] for p in paper], [p[1] for p in paper], "kD", markersize=5, label="paper (ImageNet)")
        twin.set_ylabel("top-1 error, paper (%)")
        twin.legend(loc="upper right", fontsize=8)
    from matplotlib.patches import Patch
    handles = [Patch(color=COLOURS[mode], label=f"this run, S = {label}") for mode, label in _mode_labels(rows)]
    ax.legend(handles=handles, loc="upper left", fontsize=8)


def _mode_labels(rows: list[dict]) -> list[tuple[str, str]]:
    """One legend entry per training mode present: its colour and the paper's S (the first row's label)."""
    seen: dict[str, str] = {}
    for row in rows:
        seen.setdefault(row["mode"], row["train"])
    return list(seen.items())
