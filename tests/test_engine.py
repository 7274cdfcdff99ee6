"""vggproto.engine: the same net on torch and onnxruntime (cached, verified on first use, split where ONNX stops)."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vggproto.engine.engine as engine_module
from vggproto.convert.onnx import OnnxExportError
from vggproto.engine import EngineError, EngineNet, load
from vggproto.engine.cache import MAGIC
from vggproto.engine.ncnn_runner import NcnnUnavailable
from vggproto.net.interpreter import Net

ROOT = Path(__file__).resolve().parents[1]

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5
  weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

# SSD's shape, tiny: a trunk, loc/conf heads, priors, and DetectionOutput (which ONNX cannot hold) at the end
SSD = """name: "tiny_ssd"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "msra" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "loc" type: "Convolution" bottom: "conv1" top: "loc"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf" type: "Convolution" bottom: "conv1" top: "conf"
  convolution_param { num_output: 3 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_shape" type: "Reshape" bottom: "conf_flat" top: "conf_shape"
  reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_soft" type: "Softmax" bottom: "conf_shape" top: "conf_soft" softmax_param { axis: 2 } }
layer { name: "conf_out" type: "Flatten" bottom: "conf_soft" top: "conf_out" }
layer { name: "prior" type: "PriorBox" bottom: "conv1" bottom: "data" top: "prior"
  prior_box_param { min_size: 6 clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_out" bottom: "prior"
  top: "detection_out" detection_output_param { num_classes: 3 share_location: true background_label_id: 0
  nms_param { nms_threshold: 0.45 top_k: 20 } code_type: CENTER_SIZE keep_top_k: 10 confidence_threshold: 0.2 } }
"""


def _net(tmp: Path, text: str = NET, name: str = "net") -> tuple[Path, dict]:
    path = tmp / f"{name}.prototxt"
    path.write_text(text)
    net = Net(str(path), seed=3)
    return path, {k: [b.detach().numpy().copy() for b in v] for k, v in net.params.items()}


def _reference(path: Path, weights: dict, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    net = Net(str(path), seed=0)
    from vggproto.net.weights import load_arrays
    load_arrays(net, weights, "weights")
    with torch.no_grad():
        return {k: v.numpy() for k, v in net.forward(**inputs).items()}


def _entries(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.onnx-entry"))


@pytest.mark.parametrize("engine,kind", [("auto", "onnxruntime ncnn"), ("torch", "torch"),
                                         ("onnxruntime", "onnxruntime"), ("ncnn", "ncnn")])
@pytest.mark.parametrize("batch", [1, 3])
def test_engine_forward_equals_the_interpreter(tmp_path, engine, kind, batch):
    path, weights = _net(tmp_path)
    x = np.random.default_rng(batch).standard_normal((batch, 3, 12, 12)).astype(np.float32)
    loaded = load(path, weights, engine, cache=tmp_path / "cache")
    out = loaded.forward(data=x)
    assert loaded.kind in kind.split()   # auto: the faster on this first pass
    want = _reference(path, weights, data=x)
    assert set(out) == {"prob"} and out["prob"].shape == (batch, 5)
    np.testing.assert_allclose(out["prob"], want["prob"], rtol=1e-5, atol=1e-6)


def test_cache_hit_miss_and_batch_dynamic_reuse(tmp_path, monkeypatch):
    path, weights = _net(tmp_path)
    cache = tmp_path / "cache"
    x = np.ones((2, 3, 12, 12), np.float32)
    first = load(path, weights, "onnxruntime", cache=cache).forward(data=x)
    assert len(_entries(cache)) == 1                       # a miss: exported and stored
    monkeypatch.setattr("vggproto.convert.onnx.export_onnx", lambda *a, **k: pytest.fail("exported on a hit"))
    again = load(path, weights, "onnxruntime", cache=cache)
    np.testing.assert_array_equal(again.forward(data=x)["prob"], first["prob"])   # a hit
    again.forward(data=np.ones((5, 3, 12, 12), np.float32))   # the batch axis is dynamic: the same entry
    assert len(_entries(cache)) == 1
    monkeypatch.undo()
    other = {k: [b * 0.5 for b in v] for k, v in weights.items()}
    load(path, other, "onnxruntime", cache=cache).forward(data=x)   # other weights: a miss
    assert len(_entries(cache)) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "empty"])
def test_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path, caplog, damage):
    path, weights = _net(tmp_path)
    cache = tmp_path / "cache"
    x = np.random.default_rng(0).standard_normal((2, 3, 12, 12)).astype(np.float32)
    good = load(path, weights, "onnxruntime", cache=cache).forward(data=x)["prob"]
    [entry] = _entries(cache)
    data = entry.read_bytes()
    entry.write_bytes({"truncate": data[:len(data) // 2], "flip": data[:-9] + bytes([data[-9] ^ 1]) + data[-8:],
                       "foreign": b"\x08\x07" + data[len(MAGIC):], "empty": b""}[damage])
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        out = load(path, weights, "onnxruntime", cache=cache).forward(data=x)["prob"]
    np.testing.assert_allclose(out, good, rtol=1e-6)
    assert "damaged or not a vggproto entry; rebuilding it" in caplog.text
    assert entry.read_bytes() == data                      # rewritten whole


def test_unwritable_cache_runs_without_a_cache_after_one_warning(tmp_path, caplog):
    path, weights = _net(tmp_path, NET.split('layer { name: "fc"')[0])   # convolutional: any H x W
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        loaded = load(path, weights, "onnxruntime", cache=blocker / "cache")
        loaded.forward(data=np.ones((2, 3, 12, 12), np.float32))
        loaded.forward(data=np.ones((2, 3, 10, 10), np.float32))   # another export: no second warning
    assert caplog.text.count("running without a cache") == 1
    assert loaded.kind == "onnxruntime"


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_cache_folder(tmp_path, caplog):
    path, weights = _net(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o555)
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        load(path, weights, "onnxruntime", cache=cache).forward(data=np.ones((2, 3, 12, 12), np.float32))
    assert caplog.text.count("running without a cache") == 1 and not list(cache.iterdir())


FILL = """
import sys, numpy as np
from vggproto.engine import load
from vggproto.net.interpreter import Net
net = Net(sys.argv[1], seed=3)
weights = {k: [b.detach().numpy() for b in v] for k, v in net.params.items()}
out = load(sys.argv[1], weights, "onnxruntime", cache=sys.argv[2]).forward(data=np.ones((2, 3, 12, 12), np.float32))
print(float(out["prob"].sum()))
"""


def test_two_processes_fill_the_cache_at_once(tmp_path):
    path, _ = _net(tmp_path)
    cache = tmp_path / "cache"
    env = {**__import__("os").environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", FILL, str(path), str(cache)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert abs(float(results[0][0]) - float(results[1][0])) < 1e-5
    assert len(_entries(cache)) == 1 and not [f for f in cache.iterdir() if f.name.endswith(".tmp")]
    load(path, None, "onnxruntime", cache=cache)   # and the entry reads back whole (checked on read)
    data = _entries(cache)[0].read_bytes()
    assert data.startswith(MAGIC)


def _no_ncnn(*args, **kwargs):
    raise NcnnUnavailable("ncnn is not installed (test)")


def test_export_failure_auto_takes_ncnn_with_one_warning(tmp_path, caplog, monkeypatch):
    path, weights = _net(tmp_path)

    def refuse(*args, **kwargs):
        raise OnnxExportError("net: torch.onnx.export failed: no such op")
    monkeypatch.setattr("vggproto.convert.onnx.export_onnx", refuse)
    x = np.ones((2, 3, 12, 12), np.float32)
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        loaded = load(path, weights, "auto", cache=tmp_path / "cache")
        out = loaded.forward(data=x)
        loaded.forward(data=x)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["engine auto: not onnxruntime: net: torch.onnx.export failed: no such op"]
    assert loaded.kind == "ncnn"
    np.testing.assert_allclose(out["prob"], _reference(path, weights, data=x)["prob"], rtol=1e-5)


def test_export_failure_auto_falls_back_with_one_warning_onnxruntime_errors(tmp_path, caplog, monkeypatch):
    path, weights = _net(tmp_path)

    def refuse(*args, **kwargs):
        raise OnnxExportError("net: torch.onnx.export failed: no such op")
    monkeypatch.setattr("vggproto.convert.onnx.export_onnx", refuse)
    monkeypatch.setattr(engine_module, "NcnnRunner", _no_ncnn)
    x = np.ones((2, 3, 12, 12), np.float32)
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        loaded = load(path, weights, "auto", cache=tmp_path / "cache")
        out = loaded.forward(data=x)
        loaded.forward(data=x)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "running the net in torch" in warnings[0].getMessage()
    assert "torch.onnx.export failed: no such op" in warnings[0].getMessage()
    assert loaded.kind == "torch"
    np.testing.assert_allclose(out["prob"], _reference(path, weights, data=x)["prob"], rtol=1e-6)
    with pytest.raises(EngineError, match="^--engine onnxruntime: net: torch.onnx.export failed: no such op$"):
        load(path, weights, "onnxruntime", cache=tmp_path / "cache").forward(data=x)


def test_verification_mismatch_falls_back_or_errors(tmp_path, caplog, monkeypatch):
    path, weights = _net(tmp_path)
    monkeypatch.setattr(engine_module, "TOLERANCE", -1.0)   # every difference (even 0) counts as a mismatch
    x = np.ones((2, 3, 12, 12), np.float32)
    with caplog.at_level(logging.WARNING, logger="vggproto.engine"):
        loaded = load(path, weights, "auto", cache=tmp_path / "cache")
        out = loaded.forward(data=x)
    assert loaded.kind == "torch" and "differs from the interpreter" in caplog.text
    np.testing.assert_allclose(out["prob"], _reference(path, weights, data=x)["prob"], rtol=1e-6)
    with pytest.raises(EngineError, match="differs from the interpreter"):
        load(path, weights, "onnxruntime", cache=tmp_path / "cache").forward(data=x)


def test_net_onnx_cannot_start_errors_for_onnxruntime(tmp_path):
    path = tmp_path / "loss.prototxt"
    path.write_text('name: "l"\nlayer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 '
                    'dim: 3 } shape { dim: 2 } } }\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" '
                    'bottom: "y" top: "loss" }\n')
    with pytest.raises(EngineError, match=r"^--engine onnxruntime: layer 'loss' \(SoftmaxWithLoss\) cannot run in "
                                          r"onnxruntime: a loss layer$"):
        load(path, None, "onnxruntime", cache=tmp_path / "cache")
    assert load(path, None, "auto", cache=tmp_path / "cache").kind == "torch"


def test_split_engine_runs_ssd_trunk_in_onnxruntime_and_detection_output_in_torch(tmp_path):
    path, weights = _net(tmp_path, SSD, "ssd")
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype(np.float32)
    loaded = load(path, weights, "onnxruntime", cache=tmp_path / "cache")
    segment = loaded.segment
    assert loaded.net.layer_names[segment.end] == "detection_out" and segment.end == len(loaded.net.layer_names) - 1
    assert segment.outputs == ("conf_out", "loc_flat", "prior")
    out = loaded.forward(data=x)
    want = _reference(path, weights, data=x)["detection_out"]
    assert want.shape[2] > 1                                   # boxes were found, so the check means something
    np.testing.assert_allclose(out["detection_out"], want, rtol=1e-5, atol=1e-6)
    as_net = EngineNet(loaded)
    as_net.forward(data=x)
    assert set(as_net.blobs) >= {"data", "conf_out", "prior", "detection_out"}


def test_unknown_input_is_the_interpreters_error(tmp_path):
    from vggproto.errors import NetError
    path, weights = _net(tmp_path)
    loaded = load(path, weights, "onnxruntime", cache=tmp_path / "cache")
    with pytest.raises(NetError, match=r"unknown input\(s\) dta; the net is fed through: data"):
        loaded.forward(dta=np.ones((2, 3, 12, 12), np.float32))
