"""The paper's seven claims about Tables 3-6, each judged from this run's top-1 errors.

A comparison "X beats Y" is ``held`` when Y's mean error exceeds X's by more than the seed spread (the larger
sample std of the two), ``not held`` when X's exceeds Y's by more than it, and ``within noise`` otherwise.  A claim
of several comparisons is held when every one is, not held when any one is not, else within noise; a claim whose
rows were not run is ``not run``.
"""
from __future__ import annotations

from typing import Iterable

from vggproto.reproduce.plan import FIXED1, FIXED2, JITTER

HELD, NOT_HELD, NOISE, NOT_RUN = "held", "not held", "within noise", "not run"
Comparison = tuple[str, dict, str, dict]   # (label, row claimed better, label, row claimed worse)


def compare(better: dict, worse: dict) -> str:
    """The verdict on "``better`` has the lower top-1 error" from the two rows' means and spreads."""
    diff = worse["top1"] - better["top1"]
    noise = max(better["top1_std"], worse["top1_std"])
    if abs(diff) <= noise:
        return NOISE
    return HELD if diff > 0 else NOT_HELD


def combine(verdicts: Iterable[str]) -> str:
    """All held: held; any not held: not held; none at all: not run; else within noise."""
    verdicts = list(verdicts)
    if not verdicts:
        return NOT_RUN
    if NOT_HELD in verdicts:
        return NOT_HELD
    return HELD if all(v == HELD for v in verdicts) else NOISE


def _find(results: list[dict], table: int, config: str, mode: str, method: str = "dense") -> dict | None:
    return next((r for r in results if (r["table"], r["config"], r["mode"], r["method"]) ==
                 (table, config, mode, method)), None)


def _pairs(results: list[dict], wanted: list[tuple[tuple, tuple]]) -> list[Comparison]:
    """The comparisons of ``wanted`` ((table, config, mode, method) better, ... worse) whose rows exist."""
    found = []
    for better_key, worse_key in wanted:
        better, worse = _find(results, *better_key), _find(results, *worse_key)
        if better and worse:
            found.append((_label(better), better, _label(worse), worse))
    return found


def _label(row: dict) -> str:
    method = "" if row["method"] == "dense" else f" {row['method']}"
    return f"{row['config']}/{row['train']}/{row['test']}{method} (T{row['table']})"


def _comparisons(results: list[dict]) -> list[tuple[str, list[Comparison]]]:
    cde = ("C", "D", "E")
    deepest = JITTER if _find(results, 3, "E", JITTER) and _find(results, 3, "D", JITTER) else FIXED1
    return [
        ("LRN does not help (A without it is at least as good as A-LRN)",
         _pairs(results, [((3, "A", FIXED1), (3, "A-LRN", FIXED1))])),
        ("error falls with depth, A → B → D → E",
         _pairs(results, [((3, "B", FIXED1), (3, "A", FIXED1)), ((3, "D", FIXED1), (3, "B", FIXED1)),
                          ((3, "E", deepest), (3, "D", deepest))])),
        ("3×3 beats 1×1 at equal depth (D vs C), and C beats B",
         _pairs(results, [((3, "D", FIXED1), (3, "C", FIXED1)), ((3, "C", FIXED1), (3, "B", FIXED1))])),
        ("scale jittering in training beats fixed S, at a single test scale",
         _pairs(results, [((3, c, JITTER), (3, c, fixed)) for c in cde for fixed in (FIXED1, FIXED2)])),
        ("scale jittering at test time beats a single test scale",
         _pairs(results, [((4, r["config"], r["mode"]), (3, r["config"], r["mode"]))
                          for r in results if r["table"] == 4])),
        ("multi-crop beats dense, and dense + multi-crop beats both",
         _pairs(results, [pair for c in cde for pair in (
             ((5, c, JITTER, "crops"), (5, c, JITTER, "dense")),
             ((5, c, JITTER, "dense+crops"), (5, c, JITTER, "crops")),
             ((5, c, JITTER, "dense+crops"), (5, c, JITTER, "dense")))])),
        ("fusing the two best nets beats either", _fusion(results)),
    ]


def _fusion(results: list[dict]) -> list[Comparison]:
    """Table 6's best fusion against each of its two nets evaluated the same way (Table 5, else Table 4)."""
    fused = [r for r in results if r["table"] == 6]
    if not fused:
        return []
    best = next((r for r in fused if r["method"] == "dense+crops"), fused[0])
    singles = [_find(results, 5, c, best["mode"], best["method"]) or _find(results, 4, c, best["mode"])
               for c in best["config"].split("+")]
    return [(_label(best), best, _label(s), s) for s in singles if s]


def judge(results: list[dict]) -> list[dict]:
    """The seven claims with verdicts and the numbers behind them."""
    claims = []
    for number, (claim, pairs) in enumerate(_comparisons(results), 1):
        verdicts = [compare(better, worse) for _, better, _, worse in pairs]
        evidence = "; ".join(f"{bl} {b['top1']:.2f} vs {wl} {w['top1']:.2f}: {v}"
                             for (bl, b, wl, w), v in zip(pairs, verdicts))
        claims.append({"number": number, "claim": claim, "verdict": combine(verdicts),
                       "evidence": evidence or "rows not in this run"})
    return claims
