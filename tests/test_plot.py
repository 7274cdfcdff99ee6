"""`vggproto plot` and the log parser: synthetic Caffe logs, real BVLC Caffe logs, vggproto's CSV."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.errors import VGGProtoError
from vggproto.train.logparse import parse_caffe_log, parse_csv_log, read_log
from vggproto.viz.plot import moving_average, plot_file, plot_log

GOLDEN = Path(__file__).parent / "data" / "golden" / "solver_logs"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# A log in Caffe's dialect with average_loss 2, two test outputs, a loss weight of 0.5 and a NaN (glog prefixes
# trimmed on some lines on purpose: the parser must not depend on them).
SYNTHETIC = """\
I1125 20:11:14.872844 29312 solver.cpp:289] Solving Tiny
I1125 20:11:14.872850 29312 solver.cpp:330] Iteration 0, Testing net (#0)
I1125 20:11:14.872900 29312 solver.cpp:397]     Test net output #0: accuracy = 0.25
I1125 20:11:14.872901 29312 solver.cpp:397]     Test net output #1: accuracy_top5 = 0.75
I1125 20:11:14.872902 29312 solver.cpp:397]     Test net output #2: loss = 1.76763 (* 1 = 1.76763 loss)
I1125 20:11:14.873082 29312 solver.cpp:239] Iteration 0 (0 iter/s, 0s/2 iters), loss = 2
I1125 20:11:14.873096 29312 solver.cpp:258]     Train net output #0: loss = 4 (* 0.5 = 2 loss)
I1125 20:11:14.873111 29312 sgd_solver.cpp:112] Iteration 0, lr = 0.01
Iteration 2 (10 iter/s, 0.2s/2 iters), loss = 1.5
    Train net output #0: loss = 2 (* 0.5 = 1 loss)
Iteration 2, lr = 1e-03
Iteration 4, Testing net (#0)
    Test net output #0: accuracy = 0.5
    Test net output #1: accuracy_top5 = 1
    Test net output #2: loss = -nan (* 1 = -nan loss)
Iteration 4, Testing net (#1)
    Test net output #0: accuracy = 0.125
Iteration 4, loss = 0.75
Optimization Done.
"""


def test_synthetic_caffe_log_series():
    parsed = parse_caffe_log(SYNTHETIC, "synthetic.log")
    assert (parsed.loss.iters, parsed.loss.values) == ([0, 2, 4], [2.0, 1.5, 0.75])
    # raw objective = the weighted loss contributions, not the unweighted output values
    assert (parsed.raw_loss.iters, parsed.raw_loss.values) == ([0, 2], [2.0, 1.0])
    assert (parsed.train["loss"].iters, parsed.train["loss"].values) == ([0, 2], [4.0, 2.0])
    assert (parsed.lr.iters, parsed.lr.values) == ([0, 2], [0.01, 0.001])
    assert (parsed.test["accuracy"].iters, parsed.test["accuracy"].values) == ([0, 4], [0.25, 0.5])
    assert parsed.test["accuracy_top5"].values == [0.75, 1.0]
    assert parsed.test["loss"].values[0] == 1.76763 and math.isnan(parsed.test["loss"].values[1])
    assert (parsed.test["test1/accuracy"].iters, parsed.test["test1/accuracy"].values) == ([4], [0.125])
    assert parsed.last_iter == 4


def test_real_caffe_log_exact_values():
    parsed = read_log(GOLDEN / "sgd_step.log")
    # values typed from the log text (BVLC Caffe, lr_policy step, stepsize 7, gamma 0.1)
    assert parsed.lr.iters == list(range(20))
    assert parsed.lr.values == [0.05] * 7 + [0.005] * 7 + [0.0005] * 6
    assert parsed.raw_loss.iters == list(range(20))
    assert parsed.raw_loss.values[:5] == [1.50713, 1.70336, 1.57792, 1.45693, 0.993777]
    assert parsed.raw_loss.values[19] == 0.271578
    # the displayed loss includes the extra forward pass Caffe prints after max_iter
    assert parsed.loss.iters == list(range(21)) and parsed.loss.values[20] == 0.0447421
    assert parsed.loss.values[:20] == parsed.raw_loss.values
    assert parsed.test == {} and set(parsed.train) == {"loss"}


def test_resumed_caffe_log_starts_at_snapshot_iteration():
    parsed = read_log(GOLDEN / "resume8_part2.log")
    assert parsed.raw_loss.iters == list(range(8, 20))
    assert parsed.raw_loss.values[:2] == [0.786555, 0.380084]
    assert parsed.lr.values[0] == 0.005 and parsed.lr.values[-1] == 0.0005


def test_vggproto_csv_log(tmp_path):
    from vggproto.train.log import CsvLog
    path = tmp_path / "run_log.csv"
    csv_log = CsvLog(str(path), ["accuracy", "loss"])
    csv_log.add_tests(0, {"accuracy": 0.25, "loss": 1.5})
    csv_log.add_train(0, 2.0, 2.0, 0.01, 0)
    csv_log.add_train(1, 1.0, 1.5, 0.01, 0)
    csv_log.add_train(2, 0.5, 0.75, 0.001, 1)
    csv_log.add_tests(3, {"accuracy": 0.5, "loss": 0.5})
    csv_log.close()
    parsed = read_log(path)
    assert (parsed.raw_loss.iters, parsed.raw_loss.values) == ([0, 1, 2], [2.0, 1.0, 0.5])
    assert parsed.loss.values == [2.0, 1.5, 0.75]
    assert parsed.lr.values == [0.01, 0.01, 0.001]
    assert (parsed.test["accuracy"].iters, parsed.test["accuracy"].values) == ([0, 3], [0.25, 0.5])
    assert parsed.train["lr_drops"].values == [0.0, 0.0, 1.0]


def test_any_csv_with_iter_column():
    parsed = parse_csv_log("iter,top5,when\n10,0.5,monday\n20,,tuesday\n30,0.75,x\n", "x.csv")
    assert (parsed.test["top5"].iters, parsed.test["top5"].values) == ([10, 30], [0.5, 0.75])
    with pytest.raises(VGGProtoError, match="'iter' column"):
        parse_csv_log("step,loss\n1,2\n", "bad.csv")


def test_moving_average_matches_hand_values():
    assert moving_average([1, 2, 3, 4, 5], 2).tolist() == [1.0, 1.5, 2.5, 3.5, 4.5]
    assert moving_average([3, 6, 9], 3).tolist() == [3.0, 4.5, 6.0]
    assert moving_average([1.0, 2.0], 1).tolist() == [1.0, 2.0]


def test_plot_png_from_golden_and_synthetic(tmp_path):
    parsed = plot_file(GOLDEN / "sgd_step.log", tmp_path / "curves.png")
    assert parsed.last_iter == 20
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG_MAGIC
    plot_log(parse_caffe_log(SYNTHETIC, "synthetic.log"), tmp_path / "synthetic.svg")
    svg = (tmp_path / "synthetic.svg").read_text()
    assert "<svg" in svg and "accuracy_top5" in svg and "learning rate" in svg


def test_plot_command(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(SYNTHETIC)
    out = tmp_path / "c.png"
    result = CliRunner().invoke(main, ["plot", str(log), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "up to iteration 4" in result.output and "accuracy_top5" in result.output
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_plot_command_prints_one_line(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(SYNTHETIC)
    run = subprocess.run([sys.executable, "-m", "vggproto", "plot", str(log), "--out", str(tmp_path / "c.png")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Plotted "), lines


def test_log_without_iterations_is_a_clear_error(tmp_path):
    log = tmp_path / "empty.log"
    log.write_text("I1125 20:11:14.869792 29312 caffe.cpp:197] Use CPU.\n")
    with pytest.raises(VGGProtoError, match="no training iterations"):
        read_log(log)
    result = CliRunner().invoke(main, ["plot", str(log), "--out", str(tmp_path / "x.png")])
    assert result.exit_code == 1 and "no training iterations" in result.output
    assert not (tmp_path / "x.png").exists()


def test_unsupported_output_format(tmp_path):
    with pytest.raises(VGGProtoError, match="supported: .png"):
        plot_file(GOLDEN / "sgd_step.log", tmp_path / "curves.jpg")


def test_vggproto_log_lines_parse():
    """The training helper's Caffe-dialect lines (vggproto.train.log) read back exactly."""
    from vggproto.train.log import iteration_line, lr_line, output_lines, testing_line
    lines = [testing_line(0, 0), *output_lines("Test", [("accuracy", [0.5], 0.0), ("loss", [1.25], 1.0)]),
             iteration_line(0, 0.0, 0.5, 1, 2.5), *output_lines("Train", [("loss", [2.5], 1.0)]), lr_line(0, 0.01),
             iteration_line(1, 2.0, 0.5, 1, 1.75), *output_lines("Train", [("loss", [1.0], 1.0)]),
             lr_line(1, 0.001)]
    parsed = parse_caffe_log("\n".join(lines))
    assert (parsed.loss.iters, parsed.loss.values) == ([0, 1], [2.5, 1.75])
    assert parsed.raw_loss.values == [2.5, 1.0] and parsed.lr.values == [0.01, 0.001]
    assert parsed.test["accuracy"].values == [0.5] and parsed.test["loss"].values == [1.25]


def test_loss_axis_is_logarithmic_when_the_loss_spans_decades(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vggproto.viz.plot import _scale_loss_axis
    fig, ax = plt.subplots()
    _scale_loss_axis(ax, [80.0, 9.0, 2.0, 1.1, 0.9])
    assert ax.get_yscale() == "log"
    fig, ax = plt.subplots()
    _scale_loss_axis(ax, [2.3, 1.9, 1.5, 1.2])
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] < 1.2 and ax.get_ylim()[1] > 1.9
    plt.close("all")
