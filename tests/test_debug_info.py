"""``debug_info`` (Caffe: src/caffe/net.cpp ForwardDebugInfo / BackwardDebugInfo / Backward; solver.cpp Step turns
it on for display iterations): the logged numbers are mean absolute values computed here independently."""
from __future__ import annotations

import logging
import re

import pytest
import torch

from vggproto.net.interpreter import Net

NET = """name: "dbg"
debug_info: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 4 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { name: "shared_w" }
  convolution_param { num_output: 2 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.5 }
                      bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
"""


def _mean_abs(tensor: torch.Tensor) -> float:
    return float(tensor.detach().abs().mean())


def _value(text: str, line_start: str) -> float:
    match = re.search(re.escape(line_start) + r" (\S+)", text)
    assert match, f"no line '{line_start}' in:\n{text}"
    return float(match.group(1))


def test_forward_and_backward_lines_hold_mean_absolute_values(caplog):
    net = Net(NET, seed=0)
    assert net.debug_info
    x = torch.randn(2, 3, 4, 4)
    top_diff = torch.randn(2, 3)
    with caplog.at_level(logging.INFO, logger="vggproto.net.interpreter"):
        out = net(data=x)
        net.backward(fc=top_diff)
    text = caplog.text
    w, b = net.params["conv1"]
    conv = torch.nn.functional.conv2d(x, w, b, padding=1)
    relu = torch.relu(conv)
    rel = dict(rel=1e-5)
    assert _value(text, "[Forward] Layer conv1, top blob conv1 data:") == pytest.approx(_mean_abs(conv), **rel)
    assert _value(text, "[Forward] Layer relu1, top blob conv1 data:") == pytest.approx(_mean_abs(relu), **rel)
    assert _value(text, "[Forward] Layer conv1, param blob shared_w data:") == pytest.approx(_mean_abs(w), **rel)
    assert _value(text, "[Forward] Layer conv1, param blob 1 data:") == pytest.approx(_mean_abs(b), **rel)
    assert _value(text, "[Forward] Layer fc, top blob fc data:") == pytest.approx(_mean_abs(out["fc"]), **rel)
    # backward by hand: d fc / d relu = top_diff @ W_fc; the ReLU passes it where conv > 0
    w_fc = net.params["fc"][0].detach()
    d_relu = (top_diff @ w_fc).reshape(relu.shape)
    d_conv = d_relu * (conv > 0)
    assert _value(text, "[Backward] Layer fc, bottom blob conv1 diff:") == pytest.approx(_mean_abs(d_relu), **rel)
    assert _value(text, "[Backward] Layer relu1, bottom blob conv1 diff:") == pytest.approx(_mean_abs(d_conv),
                                                                                          **rel)
    d_wfc = top_diff.t() @ relu.detach().reshape(2, -1)
    assert _value(text, "[Backward] Layer fc, param blob 0 diff:") == pytest.approx(_mean_abs(d_wfc), **rel)
    assert "[Backward] Layer conv1, bottom blob data" not in text      # the input needs no diff
    # layers in reverse order, then the all-parameter norms (Caffe logs that one as an error)
    assert text.index("[Backward] Layer fc,") < text.index("[Backward] Layer relu1,") < text.index(
        "[Backward] Layer conv1,")
    params = [p for p in net.parameters()]
    l1 = sum(float(p.detach().abs().sum()) for p in params)
    norms = re.search(r"\[Backward\] All net params \(data, diff\): L1 norm = \((\S+), (\S+)\); L2 norm", text)
    assert norms and float(norms.group(1)) == pytest.approx(l1, rel=1e-5)
    assert any(r.levelname == "ERROR" and "All net params" in r.getMessage() for r in caplog.records)


def test_solver_prints_debug_lines_on_display_iterations_only(solver_workdir, caplog):
    from vggproto.train.solver import Solver, TrainOptions
    solver_workdir("run")
    from pathlib import Path
    Path("dbg.prototxt").write_text('net: "train_val.prototxt"\nmax_iter: 3\ndisplay: 2\nbase_lr: 0.01\n'
                                    'lr_policy: "fixed"\ndebug_info: true\nsnapshot_after_train: false\n'
                                    'random_seed: 1\n')
    with caplog.at_level(logging.INFO, logger="vggproto"):
        Solver("dbg.prototxt", TrainOptions(progress=False)).solve()
    norms = [r for r in caplog.records if "All net params" in r.getMessage()]
    assert len(norms) == 2            # iterations 0 and 2 of 0, 1, 2 (display: 2)
    assert "[Forward] Layer" in caplog.text
