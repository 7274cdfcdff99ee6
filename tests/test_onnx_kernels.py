"""The ONNX export hands onnxruntime the forms its CPU kernels and graph fusions expect (issue #26, speed).

* LRN's power is Exp and Log, not Pow (onnxruntime's Pow kernel is scalar, ONNX's LRN op slower still); it
  must still give real Caffe's numbers (the golden ``lrn_across``, k = 2, run through onnxruntime) and the
  interpreter's where the window is wider than the channels (Caffe zero-pads), within a channel, and at β = 0.
* Global-stats BatchNorm is one multiply-add by constants, so onnxruntime folds BatchNorm + Scale into the
  convolution before it (the optimised graph keeps no elementwise node there) and the values stay the
  interpreter's.
"""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch

from vggproto.convert.onnx import difference, export_onnx
from vggproto.net.interpreter import Net

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

GOLDEN = Path(__file__).parent / "data" / "golden" / "layers"

CONV_BN = """name: "conv_bn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 bias_term: false
                      weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" batch_norm_param { use_global_stats: true eps: 0.001 } }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
"""


def _ops(path: Path) -> collections.Counter:
    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def _optimised_ops(path: Path, folder: Path) -> collections.Counter:
    """The node types of onnxruntime's optimised graph (fusions, no NCHWc layout: that one is CPU-specific)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(folder / "optimised.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _ops(folder / "optimised.onnx")


def test_lrn_exports_without_pow_and_gives_caffes_golden_values(tmp_path: Path) -> None:
    golden = np.load(GOLDEN / "lrn_across.npz")
    export_onnx(str(GOLDEN / "lrn_across.prototxt"), None, tmp_path / "lrn.onnx")
    ops = _ops(tmp_path / "lrn.onnx")
    assert "Pow" not in ops and ops["Exp"] == ops["Log"] == 1, ops
    session = ort.InferenceSession(str(tmp_path / "lrn.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"data": golden["blob:data"]})[0]
    assert difference(golden["blob:lrn"], got) < 1e-5     # real Caffe, k = 2 (OpenCV's dnn ignores k)


@pytest.mark.parametrize("param", ["local_size: 5 alpha: 0.5 beta: 0.75 k: 2", "local_size: 7 alpha: 3 beta: 1.5",
                                   "local_size: 3 alpha: 2 beta: 0.75 norm_region: WITHIN_CHANNEL",
                                   "local_size: 3 alpha: 0.5 beta: 0 k: 0"])
def test_lrn_matches_the_interpreter(param: str, tmp_path: Path) -> None:
    text = ('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 } } }\n'
            f'layer {{ name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param {{ {param} }} }}\n')
    (tmp_path / "lrn.prototxt").write_text(text)
    check = export_onnx(str(tmp_path / "lrn.prototxt"), None, tmp_path / "lrn.onnx")
    assert max(d for run in check.differences.values() for d in run.values()) <= 1e-5, check.differences


def test_batchnorm_and_scale_fold_into_the_convolution(tmp_path: Path) -> None:
    (tmp_path / "net.prototxt").write_text(CONV_BN)
    net = Net(str(tmp_path / "net.prototxt"), phase="TEST", seed=0)
    rng = np.random.default_rng(0)
    weights = {"conv": [net.params["conv"][0].detach().numpy()],
               "bn": [rng.normal(0, 1, 6).astype(np.float32) * 3, rng.uniform(0.5, 1.5, 6).astype(np.float32) * 3,
                      np.array([3.0], np.float32)],
               "scale": [rng.normal(1, 0.3, 6).astype(np.float32), rng.normal(0, 0.3, 6).astype(np.float32)]}
    check = export_onnx(str(tmp_path / "net.prototxt"), weights, tmp_path / "net.onnx")
    assert max(d for run in check.differences.values() for d in run.values()) <= 1e-5, check.differences
    optimised = _optimised_ops(tmp_path / "net.onnx", tmp_path)
    assert set(optimised) <= {"Conv", "FusedConv"} and sum(optimised.values()) == 1, optimised
    from vggproto.net.weights import load_arrays
    load_arrays(net, weights, "weights")
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)   # a batch the export was not traced at
    with torch.no_grad():
        want = net.forward(data=torch.from_numpy(x))["conv"].numpy()
    session = ort.InferenceSession(str(tmp_path / "net.onnx"), providers=["CPUExecutionProvider"])
    assert difference(want, session.run(None, {"data": x})[0]) < 1e-5
