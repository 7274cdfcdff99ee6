"""The whole ``vggproto reproduce`` plan in a tiny mode with the real commands (issue #28): two configurations,
a few iterations, 28-pixel crops of 30x30 images; killed with SIGKILL in the middle of a training step, then
rerun: the complete steps are skipped, the killed one runs again, and the tables come out."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _images(root: Path, count: int) -> None:
    """Three classes of 30x30 PNGs (a horizontal bar, a vertical bar, a square) with noise, and their lists."""
    import cv2
    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", count // 2)):
        (root / split).mkdir(parents=True)
        lines = []
        for i in range(n):
            img = (rng.random((30, 30, 3)) * 60).astype(np.uint8)
            box = [(slice(12, 18), slice(3, 27)), (slice(3, 27), slice(12, 18)), (slice(8, 22), slice(8, 22))][i % 3]
            img[box] = 220
            cv2.imwrite(str(root / f"{split}/{i:03d}.png"), img)
            lines.append(f"{split}/{i:03d}.png {i % 3}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vggproto", "reproduce", "--list", f"{data}/train.txt,{data}/val.txt",
            "--root", str(data), "--out", str(out), "--configs", "A,B", "--tables", "3", "--width-divisor", "32",
            "--crop", "28", "--iterations", "40", "--batch-size", "8", "--test-batch-size", "8", "--test-iter", "1",
            "--test-interval", "40", "--num-classes", "3", "--init", "msra", "--mean-value", "30",
            "--input-scale", "0.02", "--eval-workers", "0"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_tiny_plan_killed_mid_step_resumes_and_writes_the_tables(tmp_path):
    data, out = tmp_path / "images", tmp_path / "run"
    _images(data, 48)
    first = subprocess.Popen(_command(data, out), env=_env(), start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = out / "logs" / "seed1-train-B.log"
    deadline = time.monotonic() + 120
    while not started.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(first.pid, signal.SIGKILL)   # the plan and the training step it runs
    first.wait()
    assert started.exists() and not (out / "steps" / "seed1-train-B.done").exists()
    rerun = subprocess.run(_command(data, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    for step in ("convert-train", "convert-val", "seed1-generate-A", "seed1-train-A"):
        assert f"{step}: complete, inputs unchanged (skipped)" in rerun.stderr
    assert "seed1-train-B: (cd seed1 && vggproto train solvers/B.prototxt --weights snapshots/A_iter_40" \
        in rerun.stderr
    summary = json.loads((out / "results.json").read_text())
    assert [(r["config"], r["paper"][0]) for r in summary["results"]] == [("A", 29.6), ("B", 28.7)]
    assert all(0 <= r["top1"] <= 100 for r in summary["results"])
    assert "| A | 256 | 256 (32) | dense | 29.6 |" in (out / "TABLES.md").read_text()
    assert "claim 1:" in rerun.stdout and (out / "tables.png").exists()
    again = subprocess.run(_command(data, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "(8 run" not in again.stderr and "(0 run, 8 skipped)" in again.stderr
