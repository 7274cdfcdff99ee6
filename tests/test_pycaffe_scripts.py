"""Issue 25's seven pycaffe gaps, each as a tiny pycaffe script in the style of the client code that hit it (the
fine-tuning notebook, R-CNN detection, ``classify.py``, ``draw_net.py``, a partial forward, deepdream-style
deprocessing, Caffe's own ``test_python_layer.py::test_reshape``)."""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
from google.protobuf import text_format

import vggproto.pycaffe as caffe
from vggproto.errors import NetError, VGGProtoError

LINEAR = """name: "linear"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" } } }
"""


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# 1 ------------------------------------------------------------------------------------ one weights file name

def test_weights_file_name_with_a_comma(tmp_path):
    model = _write(tmp_path, "deploy.prototxt", LINEAR)
    net = caffe.Net(model, caffe.TEST)
    weights = str(tmp_path / "weights.pretrained, end-to-end.caffemodel")   # the fine-tuning notebook's name
    net.save(weights)
    for again in (caffe.Net(model, weights, caffe.TEST), caffe.Net(model, caffe.TEST, weights=weights)):
        assert np.array_equal(again.params["ip"][0].data, net.params["ip"][0].data)
        assert np.array_equal(again.params["ip"][1].data, net.params["ip"][1].data)
    other = caffe.Net(model, caffe.TEST)
    other.copy_from(weights)
    assert np.array_equal(other.params["ip"][0].data, net.params["ip"][0].data)


# 2 ------------------------------------------------------------------------------------ selective search

DETECTOR = """name: "det"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 6 dim: 6 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

SELECTIVE_SEARCH = '''import numpy as np
calls = []

def get_windows(image_fnames, cmd="selective_search"):
    calls.append((list(image_fnames), cmd))
    return [np.array([[0, 0, 5, 7], [2, 1, 9, 9], [3, 3, 6, 6]]) for _ in image_fnames]
'''


@pytest.fixture
def detector(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    return caffe.Detector(_write(tmp_path, "det.prototxt", DETECTOR), None, raw_scale=255,
                          mean=np.array([100.0, 110.0, 120.0]), channel_swap=(2, 1, 0))


def test_detect_selective_search_uses_the_external_module(tmp_path, monkeypatch, detector):
    (tmp_path / "ss").mkdir()
    (tmp_path / "ss" / "selective_search_ijcv_with_python.py").write_text(SELECTIVE_SEARCH)
    monkeypatch.syspath_prepend(str(tmp_path / "ss"))
    monkeypatch.delitem(sys.modules, "selective_search_ijcv_with_python", raising=False)
    seen = []
    original = caffe.Detector.detect_windows
    monkeypatch.setattr(caffe.Detector, "detect_windows",
                        lambda self, images_windows: seen.append(list(images_windows)) or original(self, seen[-1]))
    monkeypatch.chdir(tmp_path)
    detections = detector.detect_selective_search(["cat.png"])
    module = sys.modules["selective_search_ijcv_with_python"]
    absolute = str(tmp_path / "cat.png")
    assert module.calls == [([absolute], "selective_search_rcnn")]   # absolute paths, R-CNN's command
    assert len(seen) == 1 and seen[0][0][0] == absolute
    assert [list(d["window"]) for d in detections] == [[0, 0, 5, 7], [2, 1, 9, 9], [3, 3, 6, 6]]
    direct = original(detector, [(absolute, module.get_windows([absolute])[0])])
    for got, want in zip(detections, direct):
        assert got["filename"] == absolute and got["prediction"].shape == (5,)
        assert np.allclose(got["prediction"], want["prediction"])


def test_detect_selective_search_without_the_module(monkeypatch, detector):
    monkeypatch.setitem(sys.modules, "selective_search_ijcv_with_python", None)   # not importable
    with pytest.raises(ModuleNotFoundError, match="needs the selective_search_ijcv_with_python module on "
                                                  "PYTHONPATH"):
        detector.detect_selective_search(["cat.png"])


# 3 ------------------------------------------------------------------------------------ a mean of another size

def test_set_mean_resizes_a_mean_image_to_the_input():
    transformer = caffe.io.Transformer({"data": (1, 3, 227, 227)})   # classify.py: a 256 x 256 ilsvrc mean
    constant = np.ones((3, 256, 256)) * np.array([104.0, 117.0, 123.0])[:, None, None]
    transformer.set_mean("data", constant)
    assert transformer.mean["data"].shape == (3, 227, 227)
    assert np.allclose(transformer.mean["data"], constant[:, :227, :227])
    ramp = np.tile(np.arange(256, dtype=np.float64), (3, 256, 1))   # value = x
    transformer.set_mean("data", ramp)
    # a bilinear, pixel-centre aligned resize of a linear ramp is the ramp at the source coordinates
    x = (np.arange(227) + 0.5) * 256 / 227 - 0.5
    inner = slice(2, 225)
    assert np.allclose(transformer.mean["data"][1, 100, inner], x[inner], atol=1e-4)
    assert np.allclose(transformer.mean["data"][:, :, 50], transformer.mean["data"][0, 0, 50])
    with pytest.raises(ValueError, match="incompatible"):
        transformer.set_mean("data", np.zeros((1, 256, 256)))   # one channel for a 3-channel input


# 4 ------------------------------------------------------------------------------------ draw to any format

@pytest.mark.skipif(shutil.which("dot") is None, reason="needs graphviz's dot binary")
def test_draw_net_to_jpg(tmp_path):
    net = caffe.proto.caffe_pb2.NetParameter()
    text_format.Merge(LINEAR, net)                       # draw_net.py reads the prototxt this way
    out = tmp_path / "linear.jpg"
    caffe.draw.draw_net_to_file(net, str(out), "LR")
    assert out.read_bytes()[:3] == b"\xff\xd8\xff"       # a JPEG
    assert caffe.draw.draw_net(net, "LR", "gif")[:4] == b"GIF8"
    with pytest.raises(VGGProtoError, match="cannot draw to '.nope'"):
        caffe.draw.draw_net_to_file(net, str(tmp_path / "linear.nope"))


# 5 ------------------------------------------------------------------------------------ forward(end=)

PARTIAL = """name: "partial"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }
layer { name: "c" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 2 kernel_size: 2 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "pool" type: "Pooling" bottom: "c" top: "pool" pooling_param { pool: AVE kernel_size: 7 } }
"""


def test_forward_end_stops_there(tmp_path):
    net = caffe.Net(_write(tmp_path, "partial.prototxt", PARTIAL), caffe.TEST)
    net.blobs["data"].reshape(1, 1, 4, 4)          # too small for the 7 x 7 pooling
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    net.blobs["data"].data[...] = x
    out = net.forward(end="c")
    w, b = net.params["c"][0].data, net.params["c"][1].data
    want = np.array([[[(x[0, 0, i:i + 2, j:j + 2] * w[k, 0]).sum() + b[k] for j in range(3)] for i in range(3)]
                     for k in range(2)])
    assert list(out) == ["c"] and np.allclose(out["c"][0], want, atol=1e-5)
    assert net.blobs["pool"].data.shape == (1, 2, 1, 1)   # not reshaped: the pass stopped at c
    net.blobs["data"].reshape(1, 1, 9, 9)
    out = net.forward(end="pool")
    assert list(out) == ["pool"] and out["pool"].shape == (1, 2, 2, 2)


# 6 ------------------------------------------------------------------------------------ deprocess is float32

def test_deprocess_gives_float32_images():
    transformer = caffe.io.Transformer({"data": (1, 3, 4, 4)})
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_raw_scale("data", 255)
    transformer.set_mean("data", np.array([104.00698793, 116.66876762, 122.67891434]))   # ilsvrc_2012_mean
    white = np.ones((4, 4, 3), dtype=np.float32)
    image = transformer.deprocess("data", transformer.preprocess("data", white))
    assert image.dtype == np.float32 and image.shape == (4, 4, 3)
    assert image.max() <= 1.0 and np.allclose(image, 1.0)   # in float64 it is 1.0000000212: img_as_ubyte raises


# 7 ------------------------------------------------------------------------------------ reshape to other axes

SIMPLE_LAYER = '''import vggproto.pycaffe as caffe


class SimpleLayer(caffe.Layer):
    """Caffe's python/caffe/test/test_python_layer.py SimpleLayer: top = 10 * bottom."""

    def setup(self, bottom, top):
        pass

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 10 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 10 * top[0].diff
'''

PYTHON_NET = """name: 'pythonnet' force_backward: true
input: 'data' input_shape { dim: 10 dim: 9 dim: 8 }
layer { type: 'Python' name: 'one' bottom: 'data' top: 'one'
  python_param { module: 'simple_layer_25' layer: 'SimpleLayer' } }
layer { type: 'Python' name: 'two' bottom: 'one' top: 'two'
  python_param { module: 'simple_layer_25' layer: 'SimpleLayer' } }
layer { type: 'Python' name: 'three' bottom: 'two' top: 'three'
  python_param { module: 'simple_layer_25' layer: 'SimpleLayer' } }
"""


def test_reshape_to_another_number_of_axes(tmp_path, monkeypatch):
    (tmp_path / "simple_layer_25.py").write_text(SIMPLE_LAYER)
    monkeypatch.syspath_prepend(str(tmp_path))
    net = caffe.Net(_write(tmp_path, "python.prototxt", PYTHON_NET), caffe.TRAIN)
    s = 4
    net.blobs["data"].reshape(s, s, s, s)
    net.blobs["data"].data[...] = 1
    net.forward()
    for blob in net.blobs.values():
        for d in blob.data.shape:
            assert d == s
    assert np.allclose(net.blobs["three"].data, 1000)


def test_reshape_that_the_net_cannot_take_is_one_located_error(tmp_path):
    net = caffe.Net(_write(tmp_path, "partial.prototxt", PARTIAL), caffe.TEST)
    net.blobs["data"].reshape(1, 1, 8, 8, 8)   # 3 spatial axes: Caffe's pooling is 2-D only
    with pytest.raises(NetError, match=r"partial.prototxt:5: layer 'pool' \(Pooling\): needs a 4-D bottom "
                                       r".* \(after reshaping data \(1, 1, 8, 8, 8\)\)"):
        net.forward()
    net.blobs["data"].reshape(2, 1, 9, 9)       # the declared number of axes again: runs
    assert net.forward()["pool"].shape == (2, 2, 2, 2)
    conv = caffe.Net(_write(tmp_path, "conv.prototxt", PARTIAL.rsplit("layer {", 1)[0]), caffe.TEST)
    conv.blobs["data"].reshape(1, 1, 8, 8, 8)  # a 3-D convolution would need 3-D kernels
    with pytest.raises(NetError, match=r"conv.prototxt:3: layer 'c' \(Convolution\): parameters of shapes "
                                       r"\[\(2, 1, 2, 2\), \(2,\)\] do not fit the bottoms after reshaping data "
                                       r"\(1, 1, 8, 8, 8\) \(they would need \[\(2, 1, 2, 2, 2\), \(2,\)\]\)"):
        conv.forward()
    conv.blobs["data"].reshape(1, 8, 8)         # N=1, C=8, one spatial axis: the weights have 1 channel
    with pytest.raises(NetError, match=r"conv.prototxt:3: layer 'c' .*they would need \[\(2, 8, 2\)"):
        conv.forward()


TWO_INPUTS = """name: "two"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
"""


def test_inputs_reshaped_together_are_checked_together_once(tmp_path, monkeypatch):
    from vggproto.net.interpreter import Net
    builds = []
    real = Net.shapes_only
    monkeypatch.setattr(Net, "shapes_only", classmethod(lambda cls, *args, **kw: builds.append(args) or
                                                        real(*args, **kw)))
    net = caffe.Net(_write(tmp_path, "two.prototxt", TWO_INPUTS), caffe.TEST)
    net.blobs["a"].reshape(2, 3, 4)
    net.blobs["b"].reshape(2, 3, 4)            # Eltwise needs both of one shape: checked as a pair
    net.blobs["a"].data[...] = 1
    net.blobs["b"].data[...] = 2
    assert np.allclose(net.forward()["sum"], 3) and net.blobs["sum"].data.shape == (2, 3, 4)
    net.forward()
    assert len(builds) == 1                    # the same new shapes are not checked again
    net.blobs["b"].reshape(2, 3, 5)
    with pytest.raises(NetError, match=r"two.prototxt:4: layer 'sum' \(Eltwise\): .*after reshaping a \(2, 3, 4\), "
                                       r"b \(2, 3, 5\)"):
        net.forward()
