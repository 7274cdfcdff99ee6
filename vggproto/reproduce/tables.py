"""Tables 3-6: the paper's numbers beside this run's (mean and spread over seeds), as JSON and Markdown.

Each row reads one evaluation's JSON per seed (``DIR/seed<k>/evals/<name>.json``, written by ``vggproto evaluate
--json``).  The spread is the sample standard deviation over seeds (0 with one seed: then nothing can be called
noise).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from vggproto.errors import VGGProtoError
from vggproto.reproduce.plan import FIXED1, FIXED2, JITTER, Options, Row, ScaleMap, rows

# The paper's (top-1, top-5) validation errors in %, keyed (table, configurations, training mode, method).
PAPER: dict[tuple[int, str, str, str], tuple[float, float]] = {
    **{(3, c, m, "dense"): v for (c, m), v in {
        ("A", FIXED1): (29.6, 10.4), ("A-LRN", FIXED1): (29.7, 10.5), ("B", FIXED1): (28.7, 9.9),
        ("C", FIXED1): (28.1, 9.4), ("C", FIXED2): (28.1, 9.3), ("C", JITTER): (27.3, 8.8),
        ("D", FIXED1): (27.0, 8.8), ("D", FIXED2): (26.8, 8.7), ("D", JITTER): (25.6, 8.1),
        ("E", FIXED1): (27.3, 9.0), ("E", FIXED2): (26.9, 8.7), ("E", JITTER): (25.5, 8.0)}.items()},
    **{(4, c, m, "dense"): v for (c, m), v in {
        ("B", FIXED1): (28.2, 9.6),
        ("C", FIXED1): (27.7, 9.2), ("C", FIXED2): (27.8, 9.2), ("C", JITTER): (26.3, 8.2),
        ("D", FIXED1): (26.6, 8.6), ("D", FIXED2): (26.5, 8.6), ("D", JITTER): (24.8, 7.5),
        ("E", FIXED1): (26.9, 8.7), ("E", FIXED2): (26.7, 8.6), ("E", JITTER): (24.8, 7.5)}.items()},
    **{(5, c, JITTER, method): v for (c, method), v in {
        ("D", "dense"): (24.8, 7.5), ("D", "crops"): (24.6, 7.5), ("D", "dense+crops"): (24.4, 7.2),
        ("E", "dense"): (24.8, 7.5), ("E", "crops"): (24.6, 7.4), ("E", "dense+crops"): (24.4, 7.1)}.items()},
    (6, "D+E", JITTER, "dense"): (24.0, 7.1), (6, "D+E", JITTER, "crops"): (23.9, 7.2),
    (6, "D+E", JITTER, "dense+crops"): (23.7, 6.8),
}
TITLES = {3: "Table 3: ConvNet performance at a single test scale",
          4: "Table 4: ConvNet performance at multiple test scales",
          5: "Table 5: ConvNet evaluation techniques comparison (S jittered, three test scales)",
          6: "Table 6: Multiple ConvNet fusion results (posteriors averaged)"}
METHOD_NAMES = {"dense": "dense", "crops": "multi-crop", "dense+crops": "multi-crop & dense"}


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def read_errors(out: Path, row: Row, seeds: int) -> list[tuple[float, float]]:
    """(top-1, top-5) error in % of each seed's evaluation of ``row``."""
    found = []
    for seed in range(1, seeds + 1):
        path = out / f"seed{seed}" / "evals" / f"{row.evaluation.name}.json"
        try:
            summary = json.loads(path.read_text())
            found.append((float(summary["top1_error"]), float(summary["top5_error"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise VGGProtoError(f"{path}: not an evaluate --json summary ({exc}); delete it and rerun "
                                f"vggproto reproduce (its step runs again)") from None
    return found


def collect(out: Path, options: Options) -> list[dict]:
    """Every row of the asked tables (and those their claims compare with): labels, the paper's errors, this
    run's per seed, mean and spread."""
    scales = ScaleMap(options.crop, options.scales)
    results = []
    for row in rows(options):
        ev = row.evaluation
        runs = read_errors(out, row, options.seeds)
        (top1, top1_std), (top5, top5_std) = mean_std([r[0] for r in runs]), mean_std([r[1] for r in runs])
        paper = PAPER.get(row.key)
        results.append({
            "table": row.table, "config": row.key[1], "mode": ev.models[0].mode,
            "train": scales.label(ev.models[0].mode), "test": ",".join(map(str, ev.scales)),
            "test_mapped": ",".join(str(scales.px(q)) for q in ev.scales), "method": ev.method,
            "evaluation": ev.name, "paper": list(paper) if paper else None, "runs": [list(r) for r in runs],
            "top1": top1, "top1_std": top1_std, "top5": top5, "top5_std": top5_std})
    return results


def _cell(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.2f}" if seeds < 2 else f"{mean:.2f} ± {std:.2f}"


def _paper(row: dict, i: int) -> str:
    return f"{row['paper'][i]:.1f}" if row["paper"] else "—"


def markdown(results: list[dict], claims: list[dict], options: Options, header: str) -> str:
    """TABLES.md: each table as the paper prints it, the paper's error beside this run's, then the claims."""
    seeds = options.seeds
    spread = f"mean ± sample std over {seeds} seeds" if seeds > 1 else "one seed"
    parts = [f"# The paper's Tables 3-6, reproduced\n\n{header}\n\nErrors in % (this run: {spread}); scales in the "
             f"paper's pixels, this data's in brackets.\n"]
    for table in sorted({r["table"] for r in results}):
        parts.append(f"\n## {TITLES[table]}\n\n| ConvNet | train S | test Q | method | paper top-1 | this run top-1 "
                     f"| paper top-5 | this run top-5 |\n|---|---|---|---|---|---|---|---|\n")
        for r in (r for r in results if r["table"] == table):
            parts.append(f"| {r['config']} | {r['train']} | {r['test']} ({r['test_mapped']}) | "
                         f"{METHOD_NAMES[r['method']]} | {_paper(r, 0)} | {_cell(r['top1'], r['top1_std'], seeds)} | "
                         f"{_paper(r, 1)} | {_cell(r['top5'], r['top5_std'], seeds)} |\n")
    if claims:
        parts.append("\n## The paper's claims, judged on these numbers (top-1 error)\n\n| # | claim | verdict | "
                     "evidence |\n|---|---|---|---|\n")
        parts += [f"| {c['number']} | {c['claim']} | **{c['verdict']}** | {c['evidence']} |\n" for c in claims]
        parts.append("\n`within noise`: a difference smaller than the seed spread (the larger sample std of the two "
                     "sides); a claim of several comparisons holds when all hold, fails when one fails.\n")
    return "".join(parts)
