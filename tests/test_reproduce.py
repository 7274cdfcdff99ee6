"""``vggproto reproduce`` (issue #28): the plan, resuming, the tables, the claims' verdicts.

The runner is tested with a fake executor (each step writes its outputs, different bytes on every run, so a
re-run step visibly changes what its dependents read); tests/test_reproduce_e2e.py runs the real commands.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.errors import VGGProtoError
from vggproto.reproduce import claims
from vggproto.reproduce.plan import FIXED1, FIXED2, JITTER, Options, ScaleMap, build_plan, evaluations, models
from vggproto.reproduce.run import reproduce
from vggproto.reproduce.runner import run_plan


def test_scales_map_the_papers_pixels_by_one_ratio():
    scales = ScaleMap(28)
    assert [scales.px(p) for p in (224, 256, 384, 512)] == [28, 32, 48, 64]
    assert [scales.train_scale(m) for m in (FIXED1, FIXED2, JITTER)] == ["32", "48", "32-64"]
    assert scales.single_scale(JITTER) == (384,) and scales.multi_scale(FIXED1) == (224, 256, 288)
    assert scales.multi_scale(FIXED2) == (352, 384, 416) and scales.multi_scale(JITTER) == (256, 384, 512)
    assert "256 -> 32" in scales.describe() and "28/224" in scales.describe()


def _options(tmp_path: Path, **changes) -> Options:
    listing = tmp_path / "val.txt"
    if not listing.exists():
        listing.write_text("a.png 0\n")
        (tmp_path / "train.txt").write_text("b.png 1\n")
    base = dict(out=str(tmp_path / "out"), val_list=str(listing), root=str(tmp_path),
                train_list=str(tmp_path / "train.txt"), configs=("A", "B"), crop=28, iterations=4, seeds=1)
    return Options(**{**base, **changes})


def test_plan_follows_the_papers_protocol(tmp_path):
    steps = {s.name: s for s in build_plan(_options(tmp_path, configs=("D",), seeds=2))}
    assert [m.stem for m in models(_options(tmp_path, configs=("D",)))] == ["A", "D", "D_S384", "D_S256-512"]
    d = steps["seed2-train-D"]
    assert d.argv == ("train", "solvers/D.prototxt", "--weights", "snapshots/A_iter_4.caffemodel", "--init-layers",
                      "paper") and "seed2-train-A" in d.after and d.cwd == "seed2"
    assert "seed1-train-D_S384" in steps["seed1-train-D_S256-512"].after
    generate = steps["seed2-generate-D"].argv
    assert generate[generate.index("--chain-scales") + 1] == "48,32-64"
    assert generate[generate.index("--random-seed") + 1] == "2" and generate[generate.index("--scale") + 1] == "32"
    crops = steps["seed1-eval-D_S256-512-crops-256_384_512"].argv
    assert crops[crops.index("--scales") + 1] == "32,48,64" and crops[crops.index("--mode") + 1] == "crops"
    assert steps["convert-train"].outputs == ("data/train_lmdb",)
    assert [e.name for e in evaluations(_options(tmp_path, configs=("A", "A-LRN"), tables=(3,)))] == \
        ["A-dense-256", "A-LRN-dense-256"]


def test_bad_options_are_one_line(tmp_path):
    with pytest.raises(VGGProtoError, match="--configs: unknown F"):
        build_plan(_options(tmp_path, configs=("F",)))
    with pytest.raises(VGGProtoError, match="--scales"):
        build_plan(_options(tmp_path, scales=(256, 200, 512)))


class FakeExecutor:
    """Writes each step's outputs with new bytes on every run, records the order; ``fail`` names a failing step."""

    def __init__(self, fail: str | None = None):
        self.ran: list[str] = []
        self.fail = fail

    def __call__(self, step, out: Path) -> int:
        self.ran.append(step.name)
        (out / "logs" / f"{step.name}.log").write_text("working\nvggproto: error: boom\n")
        if step.name == self.fail:
            return 1
        write_outputs(step, out, len(self.ran))
        return 0


def write_outputs(step, out: Path, run: int) -> None:
    """A fake step's outputs: a summary for a JSON, an LMDB's data file, else a line; new bytes for each ``run``."""
    for output in step.outputs:
        path = out / output
        if output.endswith("_lmdb"):
            path.mkdir(parents=True, exist_ok=True)
            path = path / "data.mdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_summary(step.name, run) if output.endswith(".json") else f"run {run}")


def _summary(name: str, salt: int) -> str:
    """An evaluate --json summary whose error depends on the net (deeper, jittered, fused: lower)."""
    error = 30.0 - 0.5 * name.count("D") - 1.0 * name.count("S256-512") - 0.3 * name.count("crops") \
        - 0.2 * name.count("_") - 1.5 * name.count("+") + 0.01 * (salt % 3)
    return json.dumps({"top1_error": error, "top5_error": error / 3})


def test_rerun_skips_complete_steps_and_a_changed_input_reruns_its_dependents(tmp_path):
    options = _options(tmp_path)
    steps, out = build_plan(options), Path(options.out)
    first = FakeExecutor()
    run_plan(steps, out, first)
    assert first.ran == [s.name for s in steps] and (out / "plan.sh").read_text().count("vggproto ") == len(steps) + 2
    again = FakeExecutor()
    assert run_plan(steps, out, again).skipped == first.ran and again.ran == []
    Path(options.val_list).write_text("a.png 0\nc.png 1\n")       # the validation list changes
    changed = FakeExecutor()
    run_plan(steps, out, changed)
    assert "convert-train" not in changed.ran and "seed1-generate-A" not in changed.ran
    assert changed.ran[0] == "convert-val" and {"seed1-train-A", "seed1-train-B"} <= set(changed.ran)
    assert all(s.name in changed.ran for s in steps if s.name.startswith("seed1-eval"))


def test_deleted_output_corrupted_output_and_killed_step_rerun(tmp_path):
    options = _options(tmp_path, tables=(3,))
    steps, out = build_plan(options), Path(options.out)
    run_plan(steps, out, FakeExecutor())
    (out / "seed1/evals/B-dense-256.json").unlink()
    deleted = FakeExecutor()
    run_plan(steps, out, deleted)
    assert deleted.ran == ["seed1-eval-B-dense-256"]
    (out / "seed1/evals/A-dense-256.json").write_text("{half")
    corrupted = FakeExecutor()
    run_plan(steps, out, corrupted)
    assert corrupted.ran == ["seed1-eval-A-dense-256"]
    (out / "steps/seed1-train-B.done").unlink()      # killed after writing its snapshot, before its marker
    killed = FakeExecutor()
    run_plan(steps, out, killed)
    assert killed.ran == ["seed1-train-B", "seed1-eval-B-dense-256"]  # its new bytes re-run its evaluation


def test_a_failed_step_stops_the_plan_with_one_line(tmp_path):
    options = _options(tmp_path, tables=(3,))
    steps, out = build_plan(options), Path(options.out)
    failing = FakeExecutor(fail="seed1-train-A")
    with pytest.raises(VGGProtoError) as error:
        run_plan(steps, out, failing)
    message = str(error.value)
    k = [s.name for s in steps].index("seed1-train-A") + 1
    assert f"step {k} of {len(steps)} (seed1-train-A) failed with status 1: vggproto: error: boom" in message
    assert "\n" not in message and failing.ran[-1] == "seed1-train-A"
    assert not (out / "steps/seed1-train-A.done").exists()


def test_tables_picture_and_verdicts_from_a_whole_run(tmp_path):
    options = _options(tmp_path, configs=("A", "A-LRN", "B", "C", "D", "E"), seeds=2)
    _, verdicts = reproduce(options, FakeExecutor())
    out = Path(options.out)
    summary = json.loads((out / "results.json").read_text())
    row = next(r for r in summary["results"] if (r["table"], r["config"], r["mode"]) == (3, "D", JITTER))
    assert row["paper"] == [25.6, 8.1] and len(row["runs"]) == 2 and row["test_mapped"] == "48"
    text = (out / "TABLES.md").read_text()
    assert "## Table 6" in text and "| D+E | [256;512] | 256,384,512 (32,48,64) | multi-crop & dense | 23.7 |" in text
    assert (out / "tables.png").read_bytes()[:4] == b"\x89PNG"
    assert [c["number"] for c in verdicts] == list(range(1, 8)) and verdicts[6]["verdict"] == claims.HELD


def _row(table, config, mode, top1, std=0.0, method="dense"):
    return {"table": table, "config": config, "mode": mode, "method": method, "top1": top1, "top1_std": std,
            "train": mode, "test": "q"}


def test_verdicts_held_not_held_within_noise():
    assert claims.compare(_row(3, "A", FIXED1, 10.0, 0.1), _row(3, "A-LRN", FIXED1, 10.5, 0.2)) == claims.HELD
    assert claims.compare(_row(3, "A", FIXED1, 10.5, 0.1), _row(3, "A-LRN", FIXED1, 10.0, 0.2)) == claims.NOT_HELD
    assert claims.compare(_row(3, "A", FIXED1, 10.1, 0.3), _row(3, "A-LRN", FIXED1, 10.0, 0.1)) == claims.NOISE
    assert claims.combine([claims.HELD, claims.NOISE]) == claims.NOISE
    assert claims.combine([claims.HELD, claims.NOT_HELD, claims.NOISE]) == claims.NOT_HELD
    assert claims.combine([claims.HELD, claims.HELD]) == claims.HELD and claims.combine([]) == claims.NOT_RUN
    results = [_row(3, "A", FIXED1, 12.0, 0.2), _row(3, "A-LRN", FIXED1, 12.1, 0.2), _row(3, "B", FIXED1, 11.0, 0.1),
               _row(3, "C", FIXED1, 10.8, 0.1), _row(3, "D", FIXED1, 11.5, 0.1)]
    judged = {c["number"]: c for c in claims.judge(results)}
    assert judged[1]["verdict"] == claims.NOISE                 # A-LRN 0.1 worse, spread 0.2
    assert judged[2]["verdict"] == claims.NOT_HELD              # D is worse than B
    assert judged[3]["verdict"] == claims.NOT_HELD and "D/fixed1/q (T3) 11.50 vs C" in judged[3]["evidence"]
    assert judged[4]["verdict"] == claims.NOT_RUN


def test_cli_help_and_usage_errors(tmp_path):
    runner = CliRunner()
    text = runner.invoke(main, ["reproduce", "--help"]).output
    for flag in ("--data", "--list", "--out", "--tables", "--configs", "--width-divisor", "--crop", "--scales",
                 "--seeds", "--gpus", "--iterations", "plan.sh", "TABLES.md"):
        assert flag in text
    (tmp_path / "val.txt").write_text("a.png 0\n")
    alone = runner.invoke(main, ["reproduce", "--list", str(tmp_path / "val.txt"), "--out", str(tmp_path / "o")])
    assert alone.exit_code == 2 and "--data TRAIN_DB,VAL_DB" in alone.output
    bad = runner.invoke(main, ["reproduce", "--list", f"{tmp_path}/val.txt,{tmp_path}/val.txt", "--out",
                               str(tmp_path / "o"), "--configs", "A,Z"])
    assert bad.exit_code == 1 and "--configs: unknown Z" in bad.output


def test_data_option_trains_on_the_given_lmdbs_without_converting(tmp_path):
    dbs = (str(tmp_path / "train_lmdb"), str(tmp_path / "val_lmdb"))
    steps = build_plan(_options(tmp_path, train_list=None, data=dbs, tables=(3,), gpus="0,1"))
    assert not [s for s in steps if s.name.startswith("convert")]
    generate = next(s for s in steps if s.name == "seed1-generate-A").argv
    assert generate[generate.index("--train-source") + 1] == dbs[0]
    train = next(s for s in steps if s.name == "seed1-train-B")
    assert train.inputs == dbs and train.argv[-2:] == ("--gpus", "0,1")
    evaluate = next(s for s in steps if s.name == "seed1-eval-A-dense-256").argv
    assert evaluate[evaluate.index("--gpu") + 1] == "0"
