"""Caffe fidelity gaps found against real Caffe behaviour and third-party tools (issue #17).

Each test states the Caffe rule it checks (the source file of BVLC Caffe) and compares with an independent
reference: the rule written out by hand, another format's reader, a float64 recomputation.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import mini_deploy, random_weights, write_model

from vggproto.cli import main
from vggproto.net import Net

# ------------------------------------------------------------------------------- every --weights takes every format

@pytest.fixture(scope="module")
def model_in_every_format(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("formats")
    model, weights = write_model(tmp, mini_deploy(classes=4, height=40, width=40), seed=3, gain=0.6)
    runner = CliRunner()
    files = {"caffemodel": weights}
    for ext in ("h5", "pt", "pth", "safetensors"):
        files[ext] = tmp / f"good.{ext}"
        result = runner.invoke(main, ["convert", str(weights), str(files[ext])])
        assert result.exit_code == 0, result.output
    return model, files


def test_net_reads_every_weight_format_vggproto_writes(model_in_every_format):
    model, files = model_in_every_format
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 40)).astype(np.float32)
    reference = Net(str(model), str(files["caffemodel"])).forward(data=x)["prob"]
    for fmt, path in files.items():
        out = Net(str(model), str(path)).forward(data=x)["prob"]
        assert torch.equal(out, reference), fmt


def test_classify_and_evaluate_take_pt_and_safetensors(model_in_every_format, tmp_path):
    model, files = model_in_every_format
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 255, (48, 60, 3), dtype=np.uint8))
    (tmp_path / "val.txt").write_text(f"{image} 1\n")
    runner = CliRunner()
    lines = {}
    for fmt in ("caffemodel", "pt", "safetensors"):
        result = runner.invoke(main, ["classify", str(image), "--model", str(model), "--weights", str(files[fmt]),
                                      "--scale", "40", "--top", "2"])
        assert result.exit_code == 0, result.output
        lines[fmt] = result.stdout
        evaluated = runner.invoke(main, ["evaluate", "--model", str(model), "--weights", str(files[fmt]),
                                         "--list", str(tmp_path / "val.txt"), "--root", "", "--scales", "40",
                                         "--mode", "center"])
        assert evaluated.exit_code == 0, evaluated.output
    assert lines["pt"] == lines["safetensors"] == lines["caffemodel"]


def test_torchvision_state_dicts_load_as_caffe_weights(tmp_path):
    """A torchvision VGG state dict given as --weights is converted to Caffe's layout (the inverse of what
    ``convert --to torchvision`` writes), so the net computes what it computed before."""
    from vggproto.vgg.generate import build_net
    from vggproto.weights.torch_files import load_weights_file, save_torch_state
    from vggproto.weights.torchvision import caffe_to_torchvision
    net_param = build_net("A", "deploy", width_divisor=16, num_classes=5, crop_size=32)
    weights = random_weights(net_param, seed=2)
    save_torch_state(tmp_path / "tv.pth", caffe_to_torchvision(weights))
    back = load_weights_file(tmp_path / "tv.pth")
    assert set(back) == set(weights)
    for name in weights:
        for a, b in zip(back[name], weights[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3 * float(np.abs(b).max()))


# ------------------------------------------------------------------------------- duplicate layer names (HED's crops)

DUPLICATES = """name: "dup"
input: "data"
input_shape { dim: 1 dim: 1 dim: 4 dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "a"
  convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "crop" type: "Crop" bottom: "a" bottom: "data" top: "b" }
layer { name: "conv" type: "Convolution" bottom: "b" top: "c"
  convolution_param { num_output: 1 kernel_size: 1 } }
layer { name: "crop" type: "Crop" bottom: "c" bottom: "data" top: "d" }
"""


def test_duplicate_layer_names_follow_caffes_lookup_rules(tmp_path, caplog):
    """Caffe: net.cpp Init accepts repeated names; layer_names_index_ (by-name access) keeps the last;
    CopyTrainedLayersFrom (binary) fills the first layer of a name, CopyTrainedLayersFromHDF5 every one."""
    from vggproto.weights.caffemodel import write_weights
    with caplog.at_level("WARNING"):
        net = Net(DUPLICATES.encode())
    assert [r.getMessage() for r in caplog.records if "duplicate" in r.getMessage()] == [
        "<text>:7: duplicate layer name 'conv': by name, layer_dict/params give the last such layer and caffemodel "
        "weights load into the first",
        "<text>:9: duplicate layer name 'crop': by name, layer_dict/params give the last such layer and caffemodel "
        "weights load into the first"]
    last = net.layer_list[3]
    assert net.layer_dict["conv"] is last and net.params["conv"][0] is last.blobs[0]
    weights = {"conv": [np.full((1, 1, 1, 1), 2.0, np.float32), np.zeros(1, np.float32)]}
    write_weights(tmp_path / "w.caffemodel", weights)
    write_weights(tmp_path / "w.h5", weights)
    binary = Net(DUPLICATES.encode(), str(tmp_path / "w.caffemodel"))
    assert float(binary.layer_list[1].blobs[0]) == 2.0 and float(binary.layer_list[3].blobs[0]) != 2.0
    hdf5 = Net(DUPLICATES.encode(), str(tmp_path / "w.h5"))
    assert float(hdf5.layer_list[1].blobs[0]) == float(hdf5.layer_list[3].blobs[0]) == 2.0
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    out = hdf5.forward(data=x)["d"]
    assert torch.equal(out, torch.from_numpy(4 * x))
    assert len(hdf5.learnable_params) == 4 and hdf5.learnable_params[0].param is hdf5.layer_list[1].blobs[0]


# ------------------------------------------------------------------------------- fillers draw in float32

def test_fillers_draw_in_the_blobs_float32_with_caffes_distributions():
    """Caffe: util/math_functions.cpp — caffe_rng_uniform / caffe_rng_gaussian draw in Dtype (float32)."""
    from vggproto.caffe.proto import caffe_pb2
    from vggproto.layers.fillers import fill
    blob = torch.empty(64, 3, 7, 7)
    gen = torch.Generator().manual_seed(5)
    fill(blob, caffe_pb2.FillerParameter(type="gaussian", mean=0.5, std=0.01), gen)
    expected = torch.randn(blob.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float32) * 0.01 + 0.5
    assert torch.equal(blob, expected)
    fill(blob, caffe_pb2.FillerParameter(type="xavier"), gen)
    scale = float(np.sqrt(3.0 / (3 * 7 * 7)))          # fan_in = count / num
    assert float(blob.abs().max()) <= scale and float(blob.std()) == pytest.approx(scale / np.sqrt(3), rel=0.02)
    fill(blob, caffe_pb2.FillerParameter(type="msra"), gen)
    assert float(blob.std()) == pytest.approx(np.sqrt(2.0 / (3 * 7 * 7)), rel=0.02)


# ------------------------------------------------------------------------------- time charges weight gradients

def test_time_charges_each_layers_weight_gradient_and_adds_up():
    """Caffe: tools/caffe.cpp time — each layer's Backward (bottom and weight diffs) is its backward time, so the
    per-layer times add up to the backward pass; conv1's weight gradient (its input needs none) is conv1's."""
    from vggproto.net.timing import time_net
    from vggproto.vgg.generate import build_net
    net = Net(build_net("A", "deploy", width_divisor=8, num_classes=10, crop_size=64, deploy_batch_size=2),
              phase="TRAIN")
    import time

    # a 30 ms stall inside conv1_1's weight gradient: attribution is then visible above any machine noise
    net.layer_dict["conv1_1"].blobs[0].register_hook(lambda grad: time.sleep(0.03))
    timing = time_net(net, iterations=2)
    assert timing.backward_ms["conv1_1"] >= 30.0
    assert sum(timing.backward_ms.values()) <= timing.backward_total_ms + 1e-6
    assert sum(timing.backward_ms.values()) >= 0.9 * timing.backward_total_ms


# ------------------------------------------------------------------------------- pickling and tracing

SMALL = b"""name: "t" input: "data" input_shape { dim: 1 dim: 2 dim: 6 dim: 6 }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "r" type: "ReLU" bottom: "c" top: "c" }
layer { name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "p" top: "fc"
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
"""


def test_messages_and_nets_pickle(tmp_path):
    import copy
    import io
    import pickle

    from vggproto.caffe.prototxt import read_net, read_solver
    net_param = read_net((__import__("pathlib").Path(__file__).parents[1] / "nets" / "A_deploy.prototxt"))
    solver = read_solver(b'net: "x.prototxt" base_lr: 0.01 lr_policy: "step" stepsize: 10 max_iter: 20',
                         resolve_prefix=False)
    assert pickle.loads(pickle.dumps(net_param)) == net_param
    assert pickle.loads(pickle.dumps(solver)) == solver
    net = Net(SMALL)
    x = torch.randn(1, 2, 6, 6)
    expected = net.forward(data=x)["fc"]
    for clone in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert torch.equal(clone.forward(data=x)["fc"], expected) and clone.net_param == net.net_param
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False).forward(data=x)["fc"], expected)


def test_jit_trace_export_and_compile_agree_with_the_net():
    import warnings
    net = Net(SMALL)
    x = torch.randn(1, 2, 6, 6)
    expected = net(x)["fc"]                               # positional inputs fill input_names in order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # torch.jit.trace is deprecated upstream
        traced = torch.jit.trace(net, (x,), strict=False)
    assert torch.equal(traced(x)["fc"], expected)
    exported = torch.export.export(net, (x,))
    assert torch.allclose(exported.module()(x)["fc"], expected, atol=1e-6)
    with pytest.raises(Exception, match="2 positional inputs for 1 input blob"):
        net(x, x)


# ------------------------------------------------------------------------------- the log dialect scripts grep for

def test_training_log_has_caffes_setup_lines_and_source_tags(solver_workdir, caplog):
    """The lines of real BVLC Caffe's log of the golden sgd_step run (tests/data/golden/solver/sgd_step.log) that
    tooling greps for appear with the same words, numbers and source file tags in vggproto's log."""
    import logging
    import re
    from pathlib import Path

    from vggproto.caffe.glog import GlogFormatter
    case = solver_workdir(extra=("sgd_step_solver.prototxt",))
    caffe_log = (Path(__file__).parent / "data" / "golden" / "solver" / "sgd_step.log").read_text().splitlines()
    caplog.set_level(logging.INFO, logger="vggproto")
    result = CliRunner().invoke(main, ["train", "--solver", "sgd_step_solver.prototxt", "--weights",
                                       "init.caffemodel"])
    assert result.exit_code == 0, result.output
    ours = [GlogFormatter().format(r) for r in caplog.records]
    tag = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ (\S+?):\d+\] (.*)$")

    def tagged(lines: list[str]) -> set[tuple[str, str]]:
        return {(m.group(1), m.group(2)) for m in (tag.match(line.split("\n")[0]) for line in lines) if m}
    wanted = [("solver.cpp", "Creating training net from net file: train_val.prototxt"),
              ("net.cpp", "Setting up conv1"), ("net.cpp", "Top shape: 8 6 8 8 (3072)"),
              ("net.cpp", "relu1 -> conv1 (in-place)"), ("net.cpp", "    with loss weight 1"),
              ("net.cpp", "Memory required for data: 37060"), ("net.cpp", "Network initialization done."),
              ("net.cpp", "This network produces output loss"), ("sgd_solver.cpp", "Iteration 0, lr = 0.05"),
              ("solver.cpp", "Solving TinySolverNet"), ("solver.cpp", "Learning Rate Policy: step"),
              ("solver.cpp", "Initializing solver from parameters: ")]
    theirs, mine = tagged(caffe_log), tagged(ours)
    for line in wanted:
        assert line in theirs, line          # the reference really has it
        assert line in mine, line
    assert case.exists() and not [line for line in ours if " solver.py:" in line or " interpreter.py:" in line]


def test_pt_and_safetensors_outputs_are_ordinary_files(tmp_path):
    """.pt/.safetensors are written 0644 like every other output (umask permitting), and a .pt's zip records
    are named 'archive/...' as torch.save names them, not after the temporary file."""
    import os
    import stat
    import zipfile

    from vggproto.weights.torch_files import save_safetensors, save_torch_state
    state = {"conv.weight": np.ones((2, 3), np.float32)}
    save_torch_state(tmp_path / "w.pt", state)
    save_safetensors(tmp_path / "w.safetensors", state)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("w.pt", "w.safetensors"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~umask
    assert all(n.startswith("archive/") for n in zipfile.ZipFile(tmp_path / "w.pt").namelist())
    assert not list(tmp_path.glob(".*.tmp"))
