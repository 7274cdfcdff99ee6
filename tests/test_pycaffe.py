"""``vggproto.pycaffe`` as a drop-in ``caffe`` module, mirroring Caffe's python/caffe/test/ (net, solver, NetSpec,
Python layers, io, layer type list) and three classic flows on tiny nets: the ImageNet classification tutorial,
net surgery (fully-convolutional conversion) and LeNet learning, plus a py-faster-rcnn-style Python layer that
trains and tests."""
from __future__ import annotations

import copy
import textwrap

import numpy as np
import pytest
import torch

import vggproto.pycaffe as caffe
from vggproto.errors import VGGProtoError
from vggproto.pycaffe import layers as L
from vggproto.pycaffe import params as P

NET = """name: "testnet"
force_backward: true
layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 5 dim: 2 dim: 3 dim: 4 } shape { dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 11 kernel_size: 2 pad: 3 weight_filler { type: "gaussian" std: 1 }
                      bias_filler { type: "constant" value: 2 } } param { decay_mult: 1 } param { decay_mult: 0 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 13 weight_filler { type: "gaussian" std: 2.5 }
                        bias_filler { type: "constant" value: -3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""

LINEAR = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
"""
force = "force_backward: true\n"


@pytest.fixture
def net_file(tmp_path):
    path = tmp_path / "net.prototxt"
    path.write_text(NET)
    return str(path)


def _feed(net, seed=0):
    rng = np.random.default_rng(seed)
    net.blobs["data"].data[...] = rng.standard_normal(net.blobs["data"].shape)
    net.blobs["label"].data[...] = rng.integers(0, 13, net.blobs["label"].shape)


# ------------------------------------------------------------------------------------------------- Net

def test_net_views(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    assert list(net.blobs) == ["data", "label", "conv", "ip", "loss"]
    assert list(net.params) == ["conv", "ip"]
    assert net.inputs == ["data", "label"] and net.outputs == ["loss"]
    assert [layer.type for layer in net.layers] == ["Input", "Convolution", "InnerProduct", "SoftmaxWithLoss"]
    assert net.top_names["data"] == ["data", "label"] and net.bottom_names["loss"] == ["ip", "label"]
    assert list(net.layer_dict) == ["data", "conv", "ip", "loss"]
    blob = net.blobs["data"]
    assert blob.shape == (5, 2, 3, 4) and blob.count == 120
    assert (blob.num, blob.channels, blob.height, blob.width) == (5, 2, 3, 4)
    assert net.params["conv"][0].shape == (11, 2, 2, 2) and net.blobs["label"].height == 1
    assert net.blob_loss_weights == {"data": 0, "label": 0, "conv": 0, "ip": 0, "loss": 1}


def test_forward_backward_and_blob_write_through(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    _feed(net)
    loss = net.forward()["loss"]
    assert loss.shape == () and np.isfinite(loss)
    assert np.allclose(net.blobs["loss"].diff, 1.0)   # Caffe seeds a loss top's diff with its weight
    net.backward()
    for name in ("data", "conv", "ip"):
        assert np.abs(net.blobs[name].diff).sum() > 0
    assert np.abs(net.params["conv"][0].diff).sum() > 0
    net.forward()
    before = net.blobs["conv"].data.copy()
    net.blobs["data"].data[...] *= 2          # a write to the buffer is what the next forward sees
    net.forward()
    assert np.allclose(net.blobs["conv"].data - 2, 2 * (before - 2), atol=1e-4)   # the bias is 2
    out = net.forward(data=np.zeros((5, 2, 3, 4)), label=np.zeros(5))
    assert np.allclose(net.blobs["data"].data, 0) and out["loss"] == net.blobs["loss"].data


def test_params_share_memory_with_the_net(tmp_path):
    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    net.params["ip"][0].data[...] = w
    net.params["ip"][1].data[...] = 1
    x = np.ones((2, 3), dtype=np.float32)
    assert np.allclose(net.forward(data=x)["ip"], x @ w.T + 1)
    assert np.allclose(net.torch_net.layer_dict["ip"].blobs[0].detach().numpy(), w)


def test_backward_with_explicit_top_diffs(tmp_path):
    path = tmp_path / "linear.prototxt"
    path.write_text(force + LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    net.forward(data=np.ones((2, 3)))
    diffs = net.backward(ip=np.ones((2, 4)))
    w = net.params["ip"][0].data
    assert np.allclose(diffs["data"], np.ones((2, 4)) @ w)
    assert np.allclose(net.params["ip"][0].diff, np.ones((4, 2)) @ np.ones((2, 3)))


def test_forward_all_batches_and_trims(tmp_path):
    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    x = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    out = net.forward_all(data=x)["ip"]
    w, b = net.params["ip"][0].data, net.params["ip"][1].data
    assert out.shape == (5, 4) and np.allclose(out, x @ w.T + b, atol=1e-5)
    outs, diffs = net.forward_backward_all(data=x, ip=np.ones((5, 4)))
    assert outs["ip"].shape == (5, 4) and diffs["data"].shape == (5, 3)


def test_save_copy_from_hdf5_and_share_with(net_file, tmp_path):
    net = caffe.Net(net_file, caffe.TRAIN)
    model = str(tmp_path / "w.caffemodel")
    net.save(model)
    other = caffe.Net(net_file, model, caffe.TEST)
    assert np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)
    third = caffe.Net(net_file, caffe.TEST, weights=model)
    assert np.array_equal(caffe.Net(net_file, model, phase=caffe.TEST).params["ip"][0].data, net.params["ip"][0].data)
    assert np.array_equal(third.params["conv"][1].data, net.params["conv"][1].data)
    h5 = str(tmp_path / "w.hdf5")
    net.params["conv"][0].data[...] = 0.5
    net.save_hdf5(h5)
    other.load_hdf5(h5)
    assert np.allclose(other.params["conv"][0].data, 0.5)
    shared = caffe.Net(net_file, caffe.TEST)
    shared.share_with(net)
    net.params["ip"][1].data[...] = 7
    assert np.allclose(shared.params["ip"][1].data, 7)


def test_memory_data_input_arrays(tmp_path):
    path = tmp_path / "mem.prototxt"
    path.write_text('layer { name: "d" type: "MemoryData" top: "data" top: "label" memory_data_param { '
                    'batch_size: 2 channels: 1 height: 2 width: 2 } }\n')
    net = caffe.Net(str(path), caffe.TEST)
    data = np.arange(16, dtype=np.float32).reshape(4, 1, 2, 2)
    net.set_input_arrays(data, np.arange(4, dtype=np.float32))
    net.forward()
    net.forward()
    assert np.array_equal(net.blobs["data"].data, data[2:]) and np.array_equal(net.blobs["label"].data, [2, 3])


def test_layer_type_list():
    types = caffe.layer_type_list()
    assert "Convolution" in types and "Python" in types and types == sorted(types)


# ------------------------------------------------------------------------------------------------- Solver

SOLVER = """net: "{net}"
base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75
display: 0 max_iter: 100 snapshot_prefix: "{prefix}" random_seed: 1
"""


def test_solver_step_snapshot_restore(net_file, tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.format(net=net_file, prefix=tmp_path / "snap"))
    solver = caffe.SGDSolver(str(path))
    _feed(solver.net)
    started = []
    solver.add_callback(lambda: started.append(solver.iter), lambda: None)
    first = float(solver.net.forward()["loss"])
    solver.step(20)
    assert solver.iter == 20 and started == list(range(20))
    assert float(solver.net.blobs["loss"].data) < first
    solver.snapshot()
    weights = solver.net.params["ip"][0].data.copy()
    fresh = caffe.get_solver(str(path))
    fresh.restore(str(tmp_path / "snap_iter_20.solverstate"))
    assert fresh.iter == 20 and np.allclose(fresh.net.params["ip"][0].data, weights)
    _feed(fresh.net)
    fresh.solve()
    assert fresh.iter == 100 and (tmp_path / "snap_iter_100.caffemodel").exists()
    plain = tmp_path / "plain.prototxt"
    plain.write_text(path.read_text().replace("momentum: 0.9 ", ""))
    for cls, source in ((caffe.NesterovSolver, path), (caffe.AdaGradSolver, plain), (caffe.RMSPropSolver, plain),
                        (caffe.AdaDeltaSolver, path), (caffe.AdamSolver, path)):
        assert cls(str(source)).param.type == cls.solver_type   # the class's rule, whatever the file says


# ------------------------------------------------------------------------------------------------- NetSpec

def test_netspec_prototxt_matches_pycaffe():
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=64, backend=P.Data.LMDB, source="train_lmdb",
                             transform_param=dict(scale=0.5), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=5, num_output=20, weight_filler=dict(type="xavier"),
                            param=[dict(lr_mult=1), dict(lr_mult=2)])
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.relu1 = L.ReLU(n.pool1, in_place=True)
    n.loss = L.SoftmaxWithLoss(n.relu1, n.label, include=dict(phase=caffe.TRAIN))
    expected = textwrap.dedent("""\
        layer {
          name: "data"
          type: "Data"
          top: "data"
          top: "label"
          transform_param {
            scale: 0.5
          }
          data_param {
            source: "train_lmdb"
            batch_size: 64
            backend: LMDB
          }
        }
        layer {
          name: "conv1"
          type: "Convolution"
          bottom: "data"
          top: "conv1"
          param {
            lr_mult: 1
          }
          param {
            lr_mult: 2
          }
          convolution_param {
            num_output: 20
            kernel_size: 5
            weight_filler {
              type: "xavier"
            }
          }
        }
        layer {
          name: "pool1"
          type: "Pooling"
          bottom: "conv1"
          top: "pool1"
          pooling_param {
            pool: MAX
            kernel_size: 2
            stride: 2
          }
        }
        layer {
          name: "relu1"
          type: "ReLU"
          bottom: "pool1"
          top: "pool1"
        }
        layer {
          name: "loss"
          type: "SoftmaxWithLoss"
          bottom: "pool1"
          bottom: "label"
          top: "loss"
          include {
            phase: TRAIN
          }
        }
        """)
    assert str(n.to_proto()) == expected


def test_netspec_anonymous_names_and_ntop_zero():
    data, label = L.DummyData(shape=[dict(dim=[2, 1, 4, 4]), dict(dim=[2])], ntop=2)
    conv = L.Convolution(data, num_output=2, kernel_size=3)
    loss = L.SoftmaxWithLoss(L.InnerProduct(conv, num_output=3), label)
    net = caffe.to_proto(loss)
    assert [layer.name for layer in net.layer] == ["DummyData1", "Convolution1", "InnerProduct1", "SoftmaxWithLoss1"]
    assert list(net.layer[0].top) == ["DummyData1", "DummyData2"]
    assert len(net.layer[0].dummy_data_param.shape) == 2
    silence = L.Silence(conv, ntop=0)
    assert isinstance(silence, caffe.net_spec.Function)
    with pytest.raises(TypeError, match="is not a Top"):
        L.ReLU(3)
    caffe.Net(net, caffe.TRAIN).forward()   # a NetParameter is a valid model


# ------------------------------------------------------------------------------------------------- Python layers

PY_LAYERS = '''
import json
import numpy as np
import vggproto.pycaffe as caffe


class TimesTen(caffe.Layer):
    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff


class ParamStr(caffe.Layer):
    def setup(self, bottom, top):
        self.value = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.value * bottom[0].data + (self.phase == caffe.TRAIN)

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = self.value * top[0].diff


class Batches(caffe.Layer):
    """A data layer: a new (x, 3 x) batch every forward, as py-faster-rcnn's RoIDataLayer feeds its net."""

    def setup(self, bottom, top):
        self.rng = np.random.default_rng(0)
        top[0].reshape(4, 2)
        top[1].reshape(4, 2)

    def forward(self, bottom, top):
        top[0].data[...] = self.rng.standard_normal((4, 2))
        top[1].data[...] = 3 * top[0].data

    def backward(self, top, propagate_down, bottom):
        pass


class LearnedScale(caffe.Layer):
    """A layer with a parameter blob: top = w * bottom."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[...] = 0.5

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class Parameter(caffe.Layer):
    """Caffe's test_python_layer.py ParameterLayer."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = 0

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        pass

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] = 1


class Fails(caffe.Layer):
    def setup(self, bottom, top):
        raise RuntimeError("setup refused")


class Proposal(caffe.Layer):
    """py-faster-rcnn style: keep the k rows of largest norm (and their labels); gradients flow to those rows."""

    def setup(self, bottom, top):
        self.k = json.loads(self.param_str)["k"]

    def reshape(self, bottom, top):
        top[0].reshape(self.k, bottom[0].data.shape[1])
        top[1].reshape(self.k)

    def forward(self, bottom, top):
        self.keep = np.argsort(-np.linalg.norm(bottom[0].data, axis=1))[:self.k]
        top[0].data[...] = bottom[0].data[self.keep]
        top[1].data[...] = bottom[1].data[self.keep]

    def backward(self, top, propagate_down, bottom):
        if propagate_down[0]:
            bottom[0].diff[...] = 0
            bottom[0].diff[self.keep] = top[0].diff
'''


@pytest.fixture
def py_module(tmp_path, monkeypatch):
    (tmp_path / "pylayers.py").write_text(PY_LAYERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "pylayers"


def _python_net(tmp_path, layer, param_str=None):
    extra = f' param_str: "{param_str}"' if param_str is not None else ""
    path = tmp_path / f"{layer}.prototxt"
    path.write_text(force + 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }\n'
                    f'layer {{ name: "one" type: "Python" bottom: "data" top: "one" python_param {{ module: "pylayers" '
                    f'layer: "{layer}"{extra} }} }}\n'
                    f'layer {{ name: "two" type: "Python" bottom: "one" top: "two" python_param {{ module: "pylayers" '
                    f'layer: "{layer}"{extra} }} }}\n')
    return str(path)


def test_python_layer_forward_backward(tmp_path, py_module):
    net = caffe.Net(_python_net(tmp_path, "TimesTen"), caffe.TEST)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    assert np.allclose(net.forward(data=x)["two"], 100 * x)
    net.backward(two=np.ones((2, 3)))
    assert np.allclose(net.blobs["data"].diff, 100)
    assert net.layers[1].type == "Python" and isinstance(net.layers[1], caffe.Layer)


def test_python_layer_param_str_and_phase(tmp_path, py_module):
    x = np.ones((2, 3), dtype=np.float32)
    test_net = caffe.Net(_python_net(tmp_path, "ParamStr", "2.5"), caffe.TEST)
    assert np.allclose(test_net.forward(data=x)["two"], 6.25)
    train_net = caffe.Net(_python_net(tmp_path, "ParamStr", "2.5"), caffe.TRAIN)
    assert np.allclose(train_net.forward(data=x)["two"], (2.5 + 1) * 2.5 + 1)


def test_python_layer_errors(tmp_path, py_module):
    path = tmp_path / "bad.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 } } }\n'
                    'layer { name: "p" type: "Python" bottom: "data" top: "p" python_param { module: "nowhere_x" '
                    'layer: "L" } }\n')
    with pytest.raises(caffe.net.NetError, match="python_param.module 'nowhere_x' is not importable: set PYTHONPATH"):
        caffe.Net(str(path), caffe.TEST)


PROPOSAL_NET = """layer { name: "data" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 8 dim: 4 } shape { dim: 8 } } }
layer { name: "feat" type: "InnerProduct" bottom: "data" top: "feat"
  inner_product_param { num_output: 6 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "proposal" type: "Python" bottom: "feat" bottom: "label" top: "rois" top: "roi_label"
  python_param { module: "pylayers" layer: "Proposal" param_str: '{"k": 4}' } propagate_down: true
  propagate_down: false }
layer { name: "cls" type: "InnerProduct" bottom: "rois" top: "cls"
  inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "cls" bottom: "roi_label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "cls" bottom: "roi_label" top: "acc" include { phase: TEST } }
"""


def test_proposal_like_python_layer_trains_and_tests(tmp_path, py_module):
    net_path = tmp_path / "proposal.prototxt"
    net_path.write_text(PROPOSAL_NET)
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'net: "{net_path}"\nbase_lr: 0.1 momentum: 0.9 lr_policy: "fixed" display: 0 '
                           f'max_iter: 200 test_iter: 1 test_interval: 1000 snapshot_prefix: "{tmp_path}/p" '
                           'random_seed: 3\n')
    solver = caffe.SGDSolver(str(solver_path))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((8, 4)).astype(np.float32)
    labels = (data[:, 0] > 0).astype(np.float32)
    solver.net.blobs["data"].data[...] = data
    solver.net.blobs["label"].data[...] = labels
    first = float(solver.net.forward()["loss"])
    solver.step(60)
    assert float(solver.net.blobs["loss"].data) < first * 0.5
    assert np.abs(solver.net.params["feat"][0].diff).sum() > 0   # the Python layer's backward reached feat
    test = solver.test_nets[0]
    out = test.forward(data=data, label=labels)
    assert out["acc"] == pytest.approx(1.0) and out["loss"] < first


# ------------------------------------------------------------------------------------------------- io

def test_io_round_trips():
    arr = np.random.default_rng(0).standard_normal((2, 3, 4, 5)).astype(np.float32)
    blob = caffe.io.array_to_blobproto(arr, diff=2 * arr)
    assert np.allclose(caffe.io.blobproto_to_array(blob), arr)
    assert np.allclose(caffe.io.blobproto_to_array(blob, return_diff=True), 2 * arr)
    legacy = caffe.proto.caffe_pb2.BlobProto(num=1, channels=2, height=1, width=2, data=[1, 2, 3, 4])
    assert caffe.io.blobproto_to_array(legacy).shape == (1, 2, 1, 2)
    text = caffe.io.arraylist_to_blobprotovector_str([arr, arr[0]])
    back = caffe.io.blobprotovector_str_to_arraylist(text)
    assert [a.shape for a in back] == [arr.shape, arr[0].shape] and np.allclose(back[1], arr[0])
    pixels = (np.arange(24) % 256).astype(np.uint8).reshape(2, 3, 4)
    datum = caffe.io.array_to_datum(pixels, label=3)
    assert datum.label == 3 and np.array_equal(caffe.io.datum_to_array(datum), pixels)
    assert np.allclose(caffe.io.datum_to_array(caffe.io.array_to_datum(arr[0])), arr[0])


def test_transformer_round_trip_and_oversample():
    t = caffe.io.Transformer({"data": (1, 3, 6, 8)})
    t.set_transpose("data", (2, 0, 1))
    t.set_channel_swap("data", (2, 1, 0))
    t.set_raw_scale("data", 255)
    t.set_mean("data", np.array([10.0, 20.0, 30.0]))
    t.set_input_scale("data", 0.5)
    image = np.random.default_rng(0).random((6, 8, 3)).astype(np.float32)
    pre = t.preprocess("data", image)
    assert pre.shape == (3, 6, 8)
    assert np.allclose(pre[0], (image[:, :, 2] * 255 - 10) * 0.5, atol=1e-4)
    assert np.allclose(t.deprocess("data", pre), image, atol=1e-5)
    assert t.preprocess("data", np.ones((12, 16, 3))).shape == (3, 6, 8)   # resized to the input
    with pytest.raises(Exception, match="not one of the net inputs"):
        t.preprocess("other", image)
    crops = caffe.io.oversample([image, image], (4, 4))
    assert crops.shape == (20, 4, 4, 3)
    assert np.array_equal(crops[0], image[:4, :4]) and np.array_equal(crops[5], image[:4, :4][:, ::-1])
    assert np.array_equal(crops[4], image[1:5, 2:6])
    assert caffe.io.resize_image(image, (3, 4)).shape == (3, 4, 3)


def test_load_image(tmp_path):
    from PIL import Image
    pixels = np.zeros((4, 5, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    Image.fromarray(pixels).save(tmp_path / "red.png")
    color = caffe.io.load_image(str(tmp_path / "red.png"))
    gray = caffe.io.load_image(str(tmp_path / "red.png"), color=False)
    assert color.shape == (4, 5, 3) and np.allclose(color[..., 0], 1) and gray.shape == (4, 5, 1)
    assert np.allclose(gray, 0.2125)   # skimage's luminance of pure red
    Image.fromarray(pixels[..., 0]).save(tmp_path / "grey.png")
    assert caffe.io.load_image(str(tmp_path / "grey.png")).shape == (4, 5, 3)


# ------------------------------------------------------------------------------------------------- classic flows

DEPLOY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "%s" type: %s bottom: "pool1" top: "%s" %s }
layer { name: "prob" type: "Softmax" bottom: "%s" top: "prob" }
"""
FC = DEPLOY % ("fc", '"InnerProduct"', "fc", 'inner_product_param { num_output: 10 weight_filler { type: "xavier" } '
               'bias_filler { type: "gaussian" std: 0.1 } }', "fc")
FULL_CONV = DEPLOY % ("fc-conv", '"Convolution"', "fc-conv", "convolution_param { num_output: 10 kernel_size: 4 }",
                      "fc-conv")


def test_imagenet_classification_flow(tmp_path):
    from PIL import Image
    caffe.set_mode_cpu()
    caffe.set_random_seed(5)
    (tmp_path / "deploy.prototxt").write_text(FC)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    net = caffe.Net(str(tmp_path / "deploy.prototxt"), caffe.TEST)
    net.save(str(tmp_path / "tiny.caffemodel"))
    mu = np.array([104.0, 117.0, 123.0])
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_mean("data", mu)
    transformer.set_raw_scale("data", 255)
    transformer.set_channel_swap("data", (2, 1, 0))
    net.blobs["data"].reshape(1, 3, 8, 8)
    image = caffe.io.load_image(str(tmp_path / "cat.png"))
    net.blobs["data"].data[...] = transformer.preprocess("data", image)
    probs = net.forward()["prob"][0]
    assert probs.shape == (10,) and probs.sum() == pytest.approx(1, abs=1e-5)
    top5 = probs.argsort()[::-1][:5]
    reference = net.torch_net.forward(data=torch.from_numpy(transformer.preprocess("data", image)[None]))
    assert list(top5) == list(reference["prob"][0].detach().numpy().argsort()[::-1][:5])
    assert net.blobs["pool1"].data.shape == (1, 4, 4, 4)
    classifier = caffe.Classifier(str(tmp_path / "deploy.prototxt"), str(tmp_path / "tiny.caffemodel"),
                                  image_dims=(10, 10), mean=mu, raw_scale=255, channel_swap=(2, 1, 0))
    assert classifier.predict([image, image]).shape == (2, 10)
    assert classifier.predict([image], oversample=False).shape == (1, 10)
    detector = caffe.Detector(str(tmp_path / "deploy.prototxt"), str(tmp_path / "tiny.caffemodel"), mean=mu,
                              raw_scale=255, channel_swap=(2, 1, 0), context_pad=1)
    found = detector.detect_windows([(str(tmp_path / "cat.png"), [np.array([0, 0, 6, 6]), np.array([2, 1, 11, 9])])])
    assert len(found) == 2 and found[1]["prediction"].shape == (10,)


def test_net_surgery_fully_convolutional(tmp_path):
    (tmp_path / "fc.prototxt").write_text(FC)
    (tmp_path / "full_conv.prototxt").write_text(FULL_CONV.replace("dim: 8 dim: 8", "dim: 12 dim: 12"))
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    full = caffe.Net(str(tmp_path / "full_conv.prototxt"), caffe.TEST)
    full.params["conv1"][0].data[...] = net.params["conv1"][0].data
    full.params["fc-conv"][0].data.flat = net.params["fc"][0].data.flat
    full.params["fc-conv"][1].data[...] = net.params["fc"][1].data
    x = np.zeros((2, 3, 12, 12), dtype=np.float32)   # zeros around the 8 x 8 corner stand in for conv1's pad
    x[:, :, :8, :8] = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    out = full.forward(data=x)["prob"]
    assert out.shape == (2, 10, 3, 3)
    expected = net.forward(data=x[:, :, :8, :8])["prob"]
    assert np.allclose(out[:, :, 0, 0], expected, atol=1e-5)


def _lenet(source, batch):
    """The LeNet tutorial's NetSpec (smaller): LMDB data scaled to [0, 1], conv, pool, fc, relu, score, loss."""
    n = caffe.NetSpec()
    n.data, n.label = L.Data(batch_size=batch, backend=P.Data.LMDB, source=source,
                             transform_param=dict(scale=1. / 255), ntop=2)
    n.conv1 = L.Convolution(n.data, kernel_size=3, num_output=4, weight_filler=dict(type="xavier"))
    n.pool1 = L.Pooling(n.conv1, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.fc1 = L.InnerProduct(n.pool1, num_output=16, weight_filler=dict(type="xavier"))
    n.relu1 = L.ReLU(n.fc1, in_place=True)
    n.score = L.InnerProduct(n.relu1, num_output=2, weight_filler=dict(type="xavier"))
    n.loss = L.SoftmaxWithLoss(n.score, n.label)
    return n.to_proto()


def _digits_lmdb(path, count=32):
    """A tiny two-class 'digits' LMDB written as the tutorials write one: Datums from caffe.io.array_to_datum."""
    import lmdb
    rng = np.random.default_rng(0)
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for index in range(count):
            label = index % 2
            image = rng.integers(0, 60, (1, 8, 8))
            image[:, :4] += 180 * label         # class 1: a bright top half
            datum = caffe.io.array_to_datum(image.astype(np.uint8), label)
            txn.put(f"{index:08d}".encode(), datum.SerializeToString())
    env.close()
    return str(path)


def test_lenet_learning_flow(tmp_path):
    source = _digits_lmdb(tmp_path / "digits_lmdb")
    (tmp_path / "train.prototxt").write_text(str(_lenet(source, 16)))
    (tmp_path / "test.prototxt").write_text(str(_lenet(source, 32)))
    (tmp_path / "solver.prototxt").write_text(
        f'train_net: "{tmp_path}/train.prototxt"\ntest_net: "{tmp_path}/test.prototxt"\ntest_iter: 1\n'
        'test_interval: 1000\nbase_lr: 0.05\nmomentum: 0.9\nlr_policy: "fixed"\ndisplay: 0\nmax_iter: 100\n'
        f'snapshot_prefix: "{tmp_path}/lenet"\nrandom_seed: 7\n')
    solver = caffe.SGDSolver(str(tmp_path / "solver.prototxt"))
    assert [(k, v.data.shape) for k, v in solver.net.blobs.items()][:3] == [
        ("data", (16, 1, 8, 8)), ("label", (16,)), ("conv1", (16, 4, 6, 6))]
    assert [(k, v[0].data.shape) for k, v in solver.net.params.items()] == [
        ("conv1", (4, 1, 3, 3)), ("fc1", (16, 36)), ("score", (2, 16))]
    solver.net.forward()
    solver.test_nets[0].forward()
    assert solver.net.blobs["data"].data.max() <= 1.0 and set(solver.test_nets[0].blobs["label"].data) == {0, 1}
    solver.step(1)
    assert np.abs(solver.net.params["conv1"][0].diff).sum() > 0
    losses = []
    for _ in range(40):
        solver.step(1)
        losses.append(float(solver.net.blobs["loss"].data))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    solver.test_nets[0].forward(start="conv1")     # the tutorial's test on the batch already loaded
    test = solver.test_nets[0]
    assert (test.blobs["score"].data.argmax(1) == test.blobs["label"].data).mean() >= 0.9
    assert np.array_equal(test.params["conv1"][0].data, solver.net.params["conv1"][0].data)


def test_draw_wraps_vggproto_viz(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 8, 8]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3)
    written = caffe.draw.draw_net_to_file(n.to_proto(), str(tmp_path / "net.dot"), "TB", caffe.TRAIN)
    assert "conv" in open(written).read()
    assert b"digraph" in caffe.draw.draw_net(n.to_proto(), ext="dot")


def test_param_mirrors_when_memory_cannot_be_shared(tmp_path):
    """A GPU (here: float64) net's params are host mirrors, written back before the next forward."""
    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    net.torch_net.to(torch.float64)
    net.params["ip"][0].data[...] = 1
    net.params["ip"][1].data[...] = 0.5
    assert np.allclose(net.forward(data=np.ones((2, 3)))["ip"], 3.5)
    assert net.torch_net.layer_dict["ip"].blobs[0].dtype == torch.float64


def test_solver_learning_rate_and_apply_update(net_file, tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.format(net=net_file, prefix=tmp_path / "snap"))
    solver = caffe.SGDSolver(str(path))
    assert solver.lr == pytest.approx(0.01)
    _feed(solver.net)
    solver.net.forward()
    solver.net.backward()
    before = solver.net.params["ip"][1].data.copy()
    solver.apply_update()
    assert solver.iter == 0 and not np.allclose(solver.net.params["ip"][1].data, before)


def test_python_layer_reshape_and_exception(tmp_path, py_module):
    net = caffe.Net(_python_net(tmp_path, "TimesTen"), caffe.TEST)
    net.blobs["data"].reshape(4, 5)
    net.blobs["data"].data[...] = 1
    assert net.forward()["two"].shape == (4, 5) and net.blobs["one"].shape == (4, 5)
    with pytest.raises(RuntimeError, match="setup refused"):
        caffe.Net(_python_net(tmp_path, "Fails"), caffe.TEST)


def test_clear_param_diffs(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    _feed(net)
    net.forward()
    net.backward()
    once = net.params["ip"][0].diff.copy()
    net.backward()
    assert np.allclose(net.params["ip"][0].diff, 2 * once, rtol=1e-4)   # diffs accumulate, as in Caffe
    net.clear_param_diffs()
    assert not net.params["ip"][0].diff.any()


def test_coord_map_crop_aligns_fcn_upsampling():
    from vggproto.pycaffe import coord_map
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[1, 3, 20, 20]))
    n.conv = L.Convolution(n.data, num_output=2, kernel_size=3, pad=100)
    n.relu = L.ReLU(n.conv, in_place=True)
    n.pool = L.Pooling(n.relu, kernel_size=2, stride=2, pool=P.Pooling.MAX)
    n.up = L.Deconvolution(n.pool, convolution_param=dict(num_output=2, kernel_size=4, stride=2))
    axis, a, b = coord_map.coord_map_from_to(n.up, n.data)
    assert axis == 1 and a == 1 and b == -100
    n.score = coord_map.crop(n.up, n.data)
    layer = n.to_proto().layer[-1]
    assert layer.type == "Crop" and layer.crop_param.axis == 2 and list(layer.crop_param.offset) == [100]
    assert caffe.Net(n.to_proto(), caffe.TEST).forward()["score"].shape == (1, 2, 20, 20)
    n.fc = L.InnerProduct(n.data, num_output=2)
    with pytest.raises(RuntimeError, match="Could not compute map"):
        coord_map.coord_map_from_to(n.fc, n.up)


def test_partial_forward_and_backward_from_a_layer(tmp_path):
    """Caffe's ForwardFromTo / BackwardFrom: deep-dream style, a blob edited between passes."""
    (tmp_path / "fc.prototxt").write_text(force + FC)
    net = caffe.Net(str(tmp_path / "fc.prototxt"), caffe.TEST)
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8)).astype(np.float32)
    out = net.forward(end="pool1", data=x)
    assert list(out) == ["pool1"] and out["pool1"].shape == (2, 4, 4, 4)
    net.blobs["pool1"].data[...] = 0
    probs = net.forward(start="fc")["prob"]
    bias = net.params["fc"][1].data
    assert np.allclose(probs, np.exp(bias) / np.exp(bias).sum(), atol=1e-6)   # fc saw the zeroed pool1
    net.forward(data=x)
    dst = net.blobs["pool1"]
    dst.diff[...] = dst.data
    diffs = net.backward(start="pool1")
    assert diffs["data"].shape == x.shape and np.abs(diffs["data"]).sum() > 0
    net.blobs["fc"].diff[...] = 1
    net.forward(start="fc")
    net.backward(start="fc", diffs=["pool1"])
    assert np.allclose(net.blobs["pool1"].diff.reshape(2, -1), np.ones((2, 10)) @ net.params["fc"][0].data)


def test_caffe_shim(tmp_path):
    import os
    import subprocess
    import sys

    from vggproto.pycaffe import shim
    shim.install_shim(tmp_path)
    code = ("import caffe, caffe.io\nfrom caffe.proto import caffe_pb2\nimport caffe.proto.caffe_pb2 as pb\n"
            "import vggproto.pycaffe as p\nfrom caffe import layers as L\nfrom caffe.coord_map import crop\n"
            "assert caffe is p and caffe.io is p.io and pb is caffe_pb2 and caffe.Net is p.Net\nprint('ok')")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr
    (tmp_path / "real" / "caffe").mkdir(parents=True)
    (tmp_path / "real" / "caffe" / "__init__.py").write_text("# a real pycaffe\n")
    sys.path.insert(0, str(tmp_path / "real"))
    try:
        with pytest.raises(VGGProtoError, match="real 'caffe' module is importable"):
            shim.install_shim(tmp_path / "elsewhere")
    finally:
        sys.path.remove(str(tmp_path / "real"))


def test_python_data_layer_and_learned_python_parameters(tmp_path, py_module):
    net_path = tmp_path / "scale.prototxt"
    net_path.write_text('layer { name: "data" type: "Python" top: "x" top: "y" python_param { module: "pylayers" '
                        'layer: "Batches" } }\n'
                        'layer { name: "scale" type: "Python" bottom: "x" top: "z" python_param { module: "pylayers" '
                        'layer: "LearnedScale" } }\n'
                        'layer { name: "loss" type: "EuclideanLoss" bottom: "z" bottom: "y" top: "loss" }\n')
    solver_path = tmp_path / "solver.prototxt"
    solver_path.write_text(f'net: "{net_path}"\nbase_lr: 0.1 lr_policy: "fixed" display: 0 max_iter: 100 '
                           f'snapshot_prefix: "{tmp_path}/s"\n')
    solver = caffe.SGDSolver(str(solver_path))
    assert solver.net.params["scale"][0].data.tolist() == [0.5]
    first = solver.net.blobs["x"].data.copy()
    solver.step(50)
    assert not np.array_equal(solver.net.blobs["x"].data, first)     # a new batch every iteration
    assert solver.net.params["scale"][0].data[0] == pytest.approx(3.0, abs=1e-3)
    assert solver.net.layers[1].blobs[0].data[0] == pytest.approx(3.0, abs=1e-3)   # the layer sees the update
    solver.net.save(str(tmp_path / "scale.caffemodel"))
    again = caffe.Net(str(net_path), str(tmp_path / "scale.caffemodel"), caffe.TEST)
    assert again.layers[1].blobs[0].data[0] == pytest.approx(3.0, abs=1e-3)


def test_python_layer_in_a_plain_vggproto_net(tmp_path, py_module):
    """The layer is a registered vggproto layer: torch autograd (and so `vggproto train`) goes through it."""
    from vggproto.net.interpreter import Net as TorchNet
    net = TorchNet(_python_net(tmp_path, "ParamStr", "3"), phase="TEST")
    x = torch.randn(2, 3, requires_grad=True)
    out = net(data=x)["two"]
    assert torch.allclose(out, 9 * x.detach(), atol=1e-5)
    out.sum().backward()
    assert torch.allclose(x.grad, torch.full((2, 3), 9.0))


def test_forward_and_backward_start_end_as_caffe_tests_them(net_file):
    """Caffe's python/caffe/test/test_net.py test_forward_start_end / test_backward_start_end."""
    net = caffe.Net(net_file, caffe.TRAIN)
    _feed(net)
    net.forward()
    conv_blob, ip_blob = net.blobs["conv"], net.blobs["ip"]
    conv_blob.data[:] = np.random.default_rng(1).uniform(size=conv_blob.data.shape)
    assert "ip" in net.forward(start="ip", end="ip")
    manual = np.array([net.params["ip"][0].data @ conv_blob.data[i].reshape(-1) + net.params["ip"][1].data
                       for i in range(conv_blob.data.shape[0])])
    np.testing.assert_array_almost_equal(ip_blob.data, manual, 3)
    sample = np.random.default_rng(2).uniform(size=ip_blob.data.shape).astype(np.float32)
    ip_blob.diff[:] = sample
    assert "conv" in net.backward(start="ip", end="ip")
    manual = np.array([net.params["ip"][0].data.T @ sample[i] for i in range(sample.shape[0])])
    np.testing.assert_array_almost_equal(conv_blob.diff, manual.reshape(conv_blob.data.shape), 3)


def test_backward_before_any_forward(tmp_path):
    path = tmp_path / "linear.prototxt"
    path.write_text(force + LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    net.blobs["data"].data[...] = 1
    net.blobs["ip"].diff[...] = 1
    assert np.allclose(net.backward(ip=np.ones((2, 4)))["data"], np.ones((2, 4)) @ net.params["ip"][0].data)


def test_python_layer_parameter_as_caffe_tests_it(tmp_path, py_module):
    """Caffe's test_python_layer.py test_parameter: learn, save/load and share a Python layer's blob."""
    path = tmp_path / "param.prototxt"
    path.write_text("name: 'pythonnet' force_backward: true input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }\n"
                    "layer { type: 'Python' name: 'layer' bottom: 'data' top: 'top' "
                    "python_param { module: 'pylayers' layer: 'Parameter' } }\n")
    net = caffe.Net(str(path), caffe.TRAIN)
    net.forward()
    net.backward()
    layer = net.layers[list(net._layer_names).index("layer")]
    assert layer.blobs[0].data[0] == 0 and layer.blobs[0].diff[0] == 1
    layer.blobs[0].data[0] += layer.blobs[0].diff[0]
    assert layer.blobs[0].data[0] == 1 and net.params["layer"][0].data[0] == 1
    model = str(tmp_path / "param.caffemodel")
    net.save(model)
    layer.blobs[0].data[0] = -1
    net.copy_from(model)
    assert layer.blobs[0].data[0] == 1
    net2 = caffe.Net(str(path), caffe.TRAIN)
    net2.share_with(net)
    assert net2.layers[list(net2._layer_names).index("layer")].blobs[0].data[0] == 1


def test_solver_as_caffe_tests_it(net_file, tmp_path, monkeypatch):
    """Caffe's test_solver.py: solve, apply_update, nets outliving the solver, snapshot names."""
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "solver.prototxt"
    path.write_text(f'train_net: "{net_file}"\ntest_net: "{net_file}"\ntest_interval: 10\ntest_iter: 10\n'
                    'base_lr: 0.01 momentum: 0.9 weight_decay: 0.0005 lr_policy: "inv" gamma: 0.0001 power: 0.75\n'
                    'display: 100 max_iter: 100 snapshot_after_train: false snapshot_prefix: "model"\n')
    solver = caffe.SGDSolver(str(path))
    for net in (solver.net, solver.test_nets[0]):
        net.blobs["label"].data[...] = np.random.default_rng(0).integers(13, size=net.blobs["label"].data.shape)
    net = solver.net
    data = net.layers[1].blobs[0].data[...]
    data[...] = 0
    net.layers[1].blobs[0].diff[...] = 1
    solver.apply_update()
    assert (data - -0.01 * np.ones(data.shape)).max() < 1e-7
    solver.snapshot()
    assert (tmp_path / "model_iter_0.caffemodel").is_file() and (tmp_path / "model_iter_0.solverstate").is_file()
    assert solver.iter == 0
    solver.solve()
    assert solver.iter == 100
    nets = [solver.net, *solver.test_nets]
    del solver
    total = sum(p.data.sum() + p.diff.sum() for n in nets for ps in n.params.values() for p in ps)
    total += sum(b.data.sum() + b.diff.sum() for n in nets for b in n.blobs.values())
    assert np.isfinite(total)


def test_net_level_and_stages(tmp_path):
    path = tmp_path / "staged.prototxt"
    path.write_text(LINEAR + 'layer { name: "prob" type: "Softmax" bottom: "ip" top: "prob" '
                    'include { stage: "deploy" } }\n'
                    'layer { name: "deep" type: "ReLU" bottom: "ip" top: "deep" include { min_level: 2 } }\n')
    assert caffe.Net(str(path), caffe.TEST).outputs == ["ip"]
    assert caffe.Net(str(path), caffe.TEST, stages=["deploy"]).outputs == ["prob"]
    assert caffe.Net(str(path), caffe.TEST, level=2).outputs == ["deep"]


def test_caffe_shim_into_a_missing_folder_is_one_line(tmp_path):
    from click.testing import CliRunner

    from vggproto.cli import main
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["install-caffe-shim", "--target", str(tmp_path / "file" / "sub")])
    assert result.exit_code == 1 and "cannot write the caffe shim" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------- the blob store

def test_the_blob_store_feeds_through_the_nets_input_hook(net_file, tmp_path):
    """The torch net is not patched: pycaffe's store is its documented ``input_source``, so a solver's own step
    takes the Input blobs' buffers, and a net nobody wraps runs as before."""
    path = tmp_path / "solver.prototxt"
    path.write_text(SOLVER.format(net=net_file, prefix=tmp_path / "snap"))
    solver = caffe.SGDSolver(str(path))
    torch_net = solver.torch_solver.net
    assert "forward" not in vars(torch_net) and torch_net.input_source is not None
    solver.net.blobs["data"].data[...] = 0
    solver.net.blobs["label"].data[...] = 3
    solver.step(1)
    assert not solver.net.blobs["data"].data.any() and set(solver.net.blobs["label"].data) == {3}
    assert np.allclose(torch_net.blobs["data"].detach().numpy(), 0)     # the solver's forward took the buffer
    copied = copy.deepcopy(torch_net)   # a copy is a net of its own, not fed by this view
    assert copied.input_source is None and "loss" in copied.forward()
    plain = vggproto_net(net_file)
    assert plain.input_source is None
    assert plain.forward(data=torch.ones(5, 2, 3, 4), label=torch.zeros(5))["loss"].shape == ()


def vggproto_net(path: str):
    from vggproto.net import Net
    return Net(path, phase="TRAIN")


def test_a_custom_input_source_supplies_what_is_not_given(tmp_path):
    class Constant:
        def supply(self, inputs):
            inputs.setdefault("data", np.full((2, 3), 2.0, np.float32))

    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    from vggproto.net import Net
    net = Net(str(path))
    net.input_source = Constant()
    weight = net.layer_dict["ip"].blobs[0].detach().numpy()
    assert np.allclose(net.forward()["ip"].detach().numpy(), 2 * weight.sum(axis=1))
    assert np.allclose(net.forward(data=np.ones((2, 3)))["ip"].detach().numpy(), weight.sum(axis=1))


# ------------------------------------------------------------------------------------------------- wrong arguments

def test_wrong_names_are_clear_errors_that_are_still_key_errors(net_file):
    net = caffe.Net(net_file, caffe.TRAIN)
    for view, have in ((net.blobs, "data, label, conv, ip, loss"), (net.params, "conv, ip"),
                       (net.layer_dict, "data, conv, ip, loss"), (net.top_names, "data, conv, ip, loss")):
        with pytest.raises(KeyError) as raised:
            view["nope"]
        assert isinstance(raised.value, VGGProtoError) and str(raised.value).endswith(f"has: {have}")
    assert net.blobs.get("nope") is None and "nope" not in net.blobs and net.params.get("data") is None
    with pytest.raises(KeyError, match=r"^net.forward\(end='nope'\): no layer of that name; net.layer_dict has"):
        net.forward(end="nope")
    assert list(net.forward(blobs="conv")) == ["loss", "conv"]   # one name, not its letters


def test_a_long_list_of_names_is_elided(tmp_path):
    layers = "".join(f'layer {{ name: "relu_{i:03d}_{"x" * 20}" type: "ReLU" bottom: "data" top: "data" }}\n'
                     for i in range(60))
    path = tmp_path / "long.prototxt"
    path.write_text(LINEAR.splitlines()[0] + "\n" + layers)
    net = caffe.Net(str(path), caffe.TEST)
    with pytest.raises(KeyError) as raised:
        net.layer_dict["nope"]
    message = str(raised.value)
    assert " ... " in message and len(message) < 450 and "relu_000" in message and "relu_059" in message


def test_wrong_values_are_clear_errors_that_are_still_value_errors(tmp_path):
    path = tmp_path / "linear.prototxt"
    path.write_text(LINEAR)
    net = caffe.Net(str(path), caffe.TEST)
    with pytest.raises(ValueError, match=r"^net.blobs\['data'\].data = an array of shape \(3, 2\): does not fit the "
                                         r"blob's shape \(2, 3\)"):
        net.blobs["data"].data = np.zeros((3, 2))
    net.blobs["data"].data = 1.5                                  # numpy broadcasting still works
    assert (net.blobs["data"].data == 1.5).all()
    with pytest.raises(ValueError, match=r"linear.prototxt:2: layer 'ip' \(InnerProduct\): parameters of shapes "
                                         r"\[\(4, 3\), \(4,\)\] do not fit the bottoms after reshaping data \(2, 5\)"):
        net.forward(data=np.zeros((2, 5)))
    assert net.forward(data=np.ones((7, 3)))["ip"].shape == (7, 4)   # another batch size is fine
    for phase in (2, -1, "validate", None):
        with pytest.raises((ValueError, TypeError)) as raised:
            caffe.Net(str(path), phase=phase)
        assert isinstance(raised.value, VGGProtoError) and "caffe.TRAIN" in str(raised.value)


def test_a_plain_net_fed_a_shape_it_cannot_take_says_where(tmp_path):
    """The interpreter's own forward (the CLI's): the failure is explained by Caffe's reshape check, located."""
    from vggproto.errors import InputShapeError
    from vggproto.net import Net
    path = tmp_path / "conv.prototxt"
    path.write_text('layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 '
                    'dim: 8 } } }\nlayer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                    'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    net = Net(str(path))
    with pytest.raises(InputShapeError, match=r"conv.prototxt:2: layer 'c' \(Convolution\): parameters of shapes "
                                              r"\[\(2, 3, 3, 3\), \(2,\)\] do not fit .* data \(1, 4, 8, 8\)"):
        net.forward(data=torch.zeros(1, 4, 8, 8))
    assert net.forward(data=torch.zeros(2, 3, 5, 5))["c"].shape == (2, 2, 3, 3)
