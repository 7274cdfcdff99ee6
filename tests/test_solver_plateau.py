"""The paper's opt-in plateau schedule (lr / 10 when test accuracy stops improving), logs, CSV and resume."""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import pytest
import torch

from vggproto.errors import SolverError
from vggproto.train import snapshot as snap
from vggproto.train.solver import Solver, TrainOptions
from vggproto.train.updates import Plateau

torch.set_num_threads(1)

SOLVER = """net: "train_val.prototxt"
max_iter: {max_iter}
display: 1
test_interval: 1
test_iter: 1
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 1
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
"""


def test_plateau_counts_tests_without_improvement():
    p = Plateau(patience=2, max_drops=2)
    seq = [0.5, 0.6, 0.6, 0.55, 0.7, 0.7, 0.7, 0.7, 0.7, 0.7]
    drops = [p.observe(v) for v in seq]
    #        new  new  1    2→drop new  1    2→drop 1  2(max reached) 3
    assert drops == [False, False, False, True, False, False, True, False, False, False]
    assert p.drops == 2 and p.factor == pytest.approx(0.01)
    assert not Plateau(0, 3).observe(1.0) and Plateau(0, 3).factor == 1.0


@pytest.fixture
def case(solver_workdir):
    return solver_workdir()


def test_plateau_divides_lr_logs_and_resumes(case, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="vggproto")
    Path("s.prototxt").write_text(SOLVER.format(max_iter=8, snapshot=4, prefix="p"))
    # a watched output that never improves after the first test: drops after 1 test, at most twice
    opts = TrainOptions(weights=("init.caffemodel",), plateau_patience=1, plateau_max_drops=2,
                        plateau_output="accuracy", progress=False)
    monkeypatch.setattr(Plateau, "observe", _constant_score(Plateau.observe))
    Solver("s.prototxt", opts).solve()
    rates = {int(m.group(1)): float(m.group(2)) for m in
             (re.match(r"Iteration (\d+), lr = (\S+)", r.getMessage()) for r in caplog.records) if m}
    assert rates[0] == pytest.approx(0.05) and rates[1] == pytest.approx(0.005)
    assert rates[2] == pytest.approx(0.0005) and rates[7] == pytest.approx(0.0005)
    assert any("dividing the learning rate by 10 (drop 2 of at most 2)" in m for m in caplog.messages)
    rows = list(csv.DictReader(open("p_log.csv")))
    assert [r["train/lr_drops"] for r in rows[:3]] == ["0", "1", "2"]
    side = snap.read_sidecar("p_iter_4.solverstate")
    assert side.plateau["drops"] == 2
    # resume: the drop count comes back from the sidecar
    caplog.clear()
    Path("r.prototxt").write_text(SOLVER.format(max_iter=6, snapshot=0, prefix="r"))
    Solver("r.prototxt", opts).solve("p_iter_4.solverstate")
    resumed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Iteration 4, lr")]
    assert resumed == ["Iteration 4, lr = 0.0005"]


def _constant_score(observe):
    def wrapped(self, value):
        return observe(self, 0.5)
    return wrapped


def test_plateau_unknown_output_is_an_error(case):
    Path("s.prototxt").write_text(SOLVER.format(max_iter=2, snapshot=0, prefix="p"))
    opts = TrainOptions(plateau_patience=1, plateau_max_drops=1, plateau_output="top5", progress=False)
    with pytest.raises(SolverError, match="no output 'top5'.*accuracy"):
        Solver("s.prototxt", opts).solve()
