"""tools/gpu_check.py --dry-run: every step of the GPU check runs on the CPU with tiny sizes, so that the script
prepared for a lent GPU cannot rot while no GPU is there (NCCL is the one step that needs CUDA: skipped)."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["facts", "golden_layers", "solver_sgd_step", "solver_adam", "data_layer", "dist_gloo", "dist_nccl",
         "data_pipeline", "train_1_eager", "profile", "train_2_eager", "infer_eager", "train_2_compiled",
         "train_1_compiled", "infer_compiled"]


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_both_reports(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    table = (tmp_path / "results.md").read_text()
    assert results["dry_run"] is True and results["device"] == "cpu"
    assert [row["key"] for row in results["steps"]] == STEPS
    for row in results["steps"]:
        expected = "skipped" if row["key"] == "dist_nccl" else "ok"
        assert row["status"] == expected, (row["key"], row["error"])
        assert f"| {row['step']} | {expected} | " in table   # one table row per step
        numbers = [row["seconds"]] + [v for v in row["figures"].values() if isinstance(v, (int, float))]
        assert all(math.isfinite(v) for v in numbers), row
        assert row["figures"] or row["status"] == "skipped", row
    figures = {row["key"]: row["figures"] for row in results["steps"]}
    assert figures["golden_layers"]["passed"] == figures["golden_layers"]["cases"] - figures["golden_layers"]["skipped"]
    assert figures["facts"]["bf16_TFLOPs"] > 0
    assert figures["train_1_eager"]["vggproto_img_s"] > 0 and figures["infer_compiled"]["torchvision_img_s"] > 0
    assert "launch_cpu2_max_abs_diff" in figures["dist_gloo"]   # the dry run also goes through launch(cpu:2)
    assert (tmp_path / "profile.txt").read_text().count("aten::") >= 10
    assert table.count("\n| ") == len(STEPS) + 1   # header + one row per step
    assert proc.stdout.rstrip().endswith("```")     # the table (and the profile) printed at the end
