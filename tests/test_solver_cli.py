"""`vggproto test`, finetuning options, solver-file net sources and their errors, the progress bar."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.errors import SolverError
from vggproto.train.solver import Solver, TrainOptions
from vggproto.weights.caffemodel import read_weights, write_weights

torch.set_num_threads(1)


@pytest.fixture
def case(solver_workdir):
    return solver_workdir(extra=("sgd_step_solver.prototxt", "sgd_step_iter_20.caffemodel"))


def test_test_command_prints_batches_and_means(case, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    result = CliRunner().invoke(main, ["test", "--model", "train_val.prototxt", "--weights", "init.caffemodel",
                                       "--iterations", "2"])
    assert result.exit_code == 0, result.output
    msgs = caplog.messages
    assert "Running for 2 iterations." in msgs
    assert sum(m.startswith("Batch 0, ") for m in msgs) == 2 and sum(m.startswith("Batch 1, ") for m in msgs) == 2
    # README section 2: init.caffemodel over rows 0-31 (2 TEST batches of 16): accuracy 0.25, loss 1.76763
    assert "accuracy = 0.25" in msgs
    assert "loss = 1.76763 (* 1 = 1.76763 loss)" in msgs
    assert "Loss: 1.76763" in msgs


def test_solver_weights_field_and_cli_override(case):
    text = Path("sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 1")
    Path("w.prototxt").write_text(text + 'weights: "init.caffemodel"\n')
    s = Solver("w.prototxt", TrainOptions(progress=False))
    init = read_weights("init.caffemodel")
    np.testing.assert_array_equal(s.net.params["fc"][0].detach().numpy(), init["fc"][0])
    s = Solver("w.prototxt", TrainOptions(weights=("sgd_step_iter_20.caffemodel",), progress=False))
    np.testing.assert_array_equal(s.net.params["fc"][0].detach().numpy(),
                                  read_weights("sgd_step_iter_20.caffemodel")["fc"][0])


def test_init_layers_restricts_copying(case):
    trained = read_weights("sgd_step_iter_20.caffemodel")
    s = Solver("sgd_step_solver.prototxt", TrainOptions(weights=("sgd_step_iter_20.caffemodel",),
                                                        init_layers=("fc",), progress=False))
    np.testing.assert_array_equal(s.net.params["fc"][1].detach().numpy(), trained["fc"][1])
    assert not np.array_equal(s.net.params["conv1"][0].detach().numpy(), trained["conv1"][0])


def test_init_layers_paper_via_cli_copies_only_the_paper_layers(case, monkeypatch):
    # a caffemodel holding "fc6" (a paper layer) with the shape of our fc, and conv1 (not a paper layer)
    trained = read_weights("sgd_step_iter_20.caffemodel")
    write_weights("a.caffemodel", {"conv1": trained["conv1"], "fc": trained["fc"]})
    seen = {}
    import vggproto.train.distributed as parallel

    def fake_launch(solver_path, options, resume=None, gpus=None):
        seen["init"] = options.init_layers
    monkeypatch.setattr(parallel, "launch", fake_launch)
    result = CliRunner().invoke(main, ["train", "sgd_step_solver.prototxt", "--weights", "a.caffemodel",
                                       "--init-layers", "paper"])
    assert result.exit_code == 0, result.output
    assert seen["init"] == ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
    result = CliRunner().invoke(main, ["train", "sgd_step_solver.prototxt", "--init-layers", "paper"])
    assert result.exit_code == 1 and "needs --weights" in result.output


@pytest.mark.parametrize("extra,needle", [
    ('train_net: "train_val.prototxt"\n', "exactly one of train_net_param, train_net, net_param, net"),
    ("test_iter: 2\n", "test nets need test_interval > 0"),
    ('test_net: "train_val.prototxt"\ntest_interval: 5\n', "test_iter must be specified for each test network"),
    ('type: "Adagrad"\n', "unknown solver type 'Adagrad'"),
])
def test_solver_file_errors(case, extra, needle):
    Path("bad.prototxt").write_text(Path("sgd_step_solver.prototxt").read_text() + extra)
    with pytest.raises(SolverError, match=needle):
        Solver("bad.prototxt", TrainOptions(progress=False))


def test_test_state_selects_stage_and_multiple_test_nets(case, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    text = Path("sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 1")
    text += ("test_iter: 1\ntest_iter: 2\ntest_interval: 1\ntest_state { stage: 'a' }\ntest_state { stage: 'b' }\n"
             "test_initialization: false\n")
    Path("t.prototxt").write_text(text)
    s = Solver("t.prototxt", TrainOptions(weights=("init.caffemodel",), progress=False))
    assert len(s.test_nets) == 2
    s.solve()
    assert [m for m in caplog.messages if "Testing net" in m] == ["Iteration 1, Testing net (#0)",
                                                                   "Iteration 1, Testing net (#1)"]


def test_progress_bar_when_enabled(case, capsys):
    text = Path("sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 3")
    Path("p.prototxt").write_text(text)
    Solver("p.prototxt", TrainOptions(weights=("init.caffemodel",), progress=True)).solve()
    err = capsys.readouterr().err
    assert "3/3" in err and "img/s=" in err


def test_average_loss_smooths_the_displayed_loss(case):
    import csv
    text = Path("sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 7")
    Path("a.prototxt").write_text(text + "average_loss: 3\n")
    Solver("a.prototxt", TrainOptions(weights=("init.caffemodel",), progress=False)).solve()
    rows = list(csv.DictReader(open("sgd_step_log.csv")))
    raw = [float(r["loss"]) for r in rows]
    shown = [float(r["smoothed_loss"]) for r in rows]
    for i in range(7):
        window = raw[max(0, i - 2):i + 1]
        assert shown[i] == pytest.approx(sum(window) / len(window), rel=2e-5), i


def test_stage_and_level_select_train_layers(case):
    net = Path("train_val.prototxt").read_text().replace(
        'layer { name: "loss"',
        'layer { name: "scale2" type: "Power" bottom: "fc" top: "fc" power_param { scale: 2 }\n'
        '        include { phase: TRAIN stage: "double" min_level: 1 } }\nlayer { name: "loss"')
    Path("train_val.prototxt").write_text(net)

    def names(**kw):
        return [layer.name for layer in Solver("sgd_step_solver.prototxt",
                                               TrainOptions(progress=False, **kw)).net.net_param.layer]
    assert "scale2" not in names()
    assert "scale2" not in names(stages=("double",))          # level 0 < min_level 1
    assert "scale2" in names(stages=("double",), level=1)
    result = CliRunner().invoke(main, ["train", "sgd_step_solver.prototxt", "--stage", "double", "--level", "1",
                                       "--gpus", "cpu:1"], catch_exceptions=False)
    assert result.exit_code == 0
