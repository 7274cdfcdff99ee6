"""The mobile-net and Faster R-CNN fork layers (vggproto/layers/mobile.py, rcnn.py) and four published fork nets.

Every layer is checked against an independent reference: OpenCV's dnn (one-layer nets) where OpenCV implements
the layer, and a hand-written numpy loop of the fork's C++ otherwise (or as well).  What OpenCV does not do:
DepthwiseConvolution (unknown to it), ConvolutionDepthwise without num_output, ReLU6's negative_slope, Axpy with
a batch above 1, SmoothL1Loss.  OpenCV's importer computes Axpy(a, X, Y) as a·Y + X (caffe_importer.cpp wires
bottom 2 into its Scale), not SENet's a·X + Y (axpy_layer.cpp), so OpenCV is handed the net with X and Y
exchanged.  Gradients: ROIPooling and SmoothL1Loss by gradcheck and by the forks' backward formulas in numpy.

The nets under tests/data/forks/ (shufflenet, se_resnet50, densenet121, faster_rcnn_vgg16) are reduced
re-creations of the published deploy nets (each file's header says of which and how); they get random weights
from vggproto and must match OpenCV to 1e-4 relative on their outputs and on intermediate blobs.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_text, read_net, write_net
from vggproto.errors import DataError, NetError
from vggproto.layers.registry import LayerSpec, build_layer
from vggproto.net.interpreter import Net
from vggproto.net.shapes import net_param_shapes

cv2 = pytest.importorskip("cv2")
FORKS = Path(__file__).parent / "data" / "forks"
RTOL = 1e-4


def make(text: str, *shapes, dialect: str = "bvlc", tops: int = 1):
    """One layer built from its prototxt text for bottoms of ``shapes``."""
    param = parse_text(text, caffe_pb2.LayerParameter())
    param.name = param.name or "l"
    if not len(param.top):
        param.top.extend(f"t{i}" for i in range(tops))
    return build_layer(LayerSpec(param, [tuple(s) for s in shapes], dialect=dialect))


def rel_diff(ours: np.ndarray, theirs: np.ndarray) -> float:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64).reshape(np.shape(ours))
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30)) if theirs.size else 0.0


def fill(net: Net, seed: int = 0, gains: dict[str, float] | None = None) -> None:
    """Random weights that keep activations O(1): He-normal filters, BatchNorm statistics with positive
    variances and scale factor 1, Scale gains around 1, small biases."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, blobs in net.params.items():
            kind = net.layer_dict[name].spec.type
            shapes = [tuple(b.shape) for b in blobs]
            if kind == "BatchNorm":
                values = [rng.normal(0, 0.2, shapes[0]), rng.uniform(0.5, 1.5, shapes[1]), np.ones(shapes[2])]
            elif kind == "Scale":
                values = [rng.uniform(0.5, 1.5, shapes[0])] + [rng.normal(0, 0.1, s) for s in shapes[1:]]
            else:
                fan_in = int(np.prod(shapes[0][1:]))
                values = [rng.standard_normal(shapes[0]) * math.sqrt(2.0 / fan_in) * (gains or {}).get(name, 1.0)]
                values += [rng.normal(0, 0.1, s) for s in shapes[1:]]
            for blob, value in zip(blobs, values):
                blob.copy_(torch.from_numpy(np.asarray(value, np.float32)))


def opencv_net(prototxt: Path, caffemodel: Path | None = None, fusion: bool = True):
    net = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel)) if caffemodel else \
        cv2.dnn.readNetFromCaffe(str(prototxt))
    if hasattr(net, "enableWinograd"):
        net.enableWinograd(False)
    net.enableFusion(fusion)
    return net


def opencv_run(net, inputs: dict[str, np.ndarray], layers: list[str]) -> list[np.ndarray]:
    for name, value in inputs.items():
        net.setInput(value, name)
    return [np.array(out) for out in net.forward(layers)]


def one_layer(tmp_path: Path, text: str, inputs: dict[str, np.ndarray], weights=None, dialect=None):
    """Our output and OpenCV's for a net of Input layers plus one layer named ``l`` with top ``t``."""
    header = "".join(f'input: "{k}" input_shape {{ {" ".join(f"dim: {d}" for d in v.shape)} }}\n'
                     for k, v in inputs.items())
    path = tmp_path / "one.prototxt"
    path.write_text(header + text)
    net = Net(str(path), dialect=dialect)
    model = None
    if weights is not None:
        with torch.no_grad():
            for blob, value in zip(net.params["l"], weights):
                blob.copy_(torch.from_numpy(value))
        model = tmp_path / "one.caffemodel"
        net.save_weights(model)
    with torch.no_grad():
        net.forward(**inputs)
    theirs, = opencv_run(opencv_net(path, model), inputs, ["l"])
    return net.blobs["t"].numpy(), theirs


RNG = np.random.default_rng(7)
X = (RNG.standard_normal((2, 6, 5, 7)) * 4).astype(np.float32)


# ------------------------------------------------------------------------------------------------- mobile layers

def shuffle_ref(x: np.ndarray, group: int) -> np.ndarray:
    out, k = np.empty_like(x), x.shape[1] // group
    for i in range(group):          # shuffle_channel_layer.cpp Resize_cpu: in (i·k + j) -> out (j·g + i)
        for j in range(k):
            out[:, j * group + i] = x[:, i * k + j]
    return out


@pytest.mark.parametrize("group", [1, 2, 3, 6])
def test_shuffle_channel_matches_opencv_and_loops(tmp_path, group):
    text = (f'layer {{ name: "l" type: "ShuffleChannel" bottom: "data" top: "t" '
            f'shuffle_channel_param {{ group: {group} }} }}')
    ours, theirs = one_layer(tmp_path, text, {"data": X})
    assert np.array_equal(ours, theirs) and np.array_equal(ours, shuffle_ref(X, group))


def test_shuffle_channel_errors_and_gradient():
    with pytest.raises(NetError, match="group 4 must divide"):
        make("type: 'ShuffleChannel' shuffle_channel_param { group: 4 }", (1, 6, 2, 2))
    layer = make("type: 'ShuffleChannel' shuffle_channel_param { group: 3 }", (1, 6, 2, 2)).double()
    x = torch.randn(1, 6, 2, 2, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda v: layer(v)[0], (x,))


def depthwise_ref(x, w, b, stride, pad, dilation=(1, 1)):
    """conv_dw_layer.cpp Forward_cpu as loops: one filter per channel, zero padding."""
    n, c, h, wd = x.shape
    kh, kw = w.shape[2:]
    oh = (h + 2 * pad[0] - (dilation[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dilation[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, c, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            for u in range(kh):
                for v in range(kw):
                    hi, wi = -pad[0] + i * stride[0] + u * dilation[0], -pad[1] + j * stride[1] + v * dilation[1]
                    if 0 <= hi < h and 0 <= wi < wd:
                        out[:, :, i, j] += w[None, :, 0, u, v] * x[:, :, hi, wi]
    return out + (b[None, :, None, None] if b is not None else 0)


@pytest.mark.parametrize("conv, stride, pad, kernel, bias", [
    ("num_output: 6 kernel_size: 3 pad: 1 stride: 2", (2, 2), (1, 1), (3, 3), True),
    ("num_output: 6 kernel_size: 3", (1, 1), (0, 0), (3, 3), True),                  # no pad: 0 (defined here)
    ("num_output: 6 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 bias_term: false",
     (1, 2), (1, 0), (3, 2), False),
])
def test_convolution_depthwise_matches_opencv_and_loops(tmp_path, conv, stride, pad, kernel, bias):
    w = RNG.standard_normal((6, 1, *kernel)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32) if bias else None
    text = f'layer {{ name: "l" type: "ConvolutionDepthwise" bottom: "data" top: "t" convolution_param {{ {conv} }} }}'
    ours, theirs = one_layer(tmp_path, text, {"data": X}, [w] + ([b] if bias else []))
    assert rel_diff(ours, theirs) < 1e-5
    assert rel_diff(ours, depthwise_ref(X, w, b, stride, pad)) < 1e-5


def test_convolution_depthwise_reads_only_kernel_pad_stride_dilation():
    # OpenCV insists on num_output; the fork never reads it (nor group): outputs = input channels
    layer = make("type: 'ConvolutionDepthwise' convolution_param { kernel_size: 3 dilation: 2 group: 2 }",
                 (2, 6, 5, 7))
    assert [tuple(b.shape) for b in layer.blobs] == [(6, 1, 3, 3), (6,)] and layer.top_shapes == [(2, 6, 1, 3)]
    w, b = (blob.detach().numpy() for blob in layer.blobs)
    with torch.no_grad():
        ours = layer(torch.from_numpy(X))[0].numpy()
    assert rel_diff(ours, depthwise_ref(X, w, b, (1, 1), (0, 0), (2, 2))) < 1e-5
    with pytest.raises(NetError, match="4-D"):
        make("type: 'ConvolutionDepthwise' convolution_param { kernel_size: 3 }", (2, 6, 5))


def test_depthwise_convolution_is_bvlc_grouped_convolution():
    # OpenCV has no DepthwiseConvolution; reference: BVLC Convolution with the same param, and torch's conv2d
    text = "convolution_param { num_output: 6 group: 6 kernel_size: 3 pad: 1 stride: 2 }"
    ours = make(f"type: 'DepthwiseConvolution' {text}", X.shape)
    bvlc = make(f"type: 'Convolution' {text}", X.shape)
    assert [b.shape for b in ours.blobs] == [b.shape for b in bvlc.blobs] == [(6, 1, 3, 3), (6,)]
    with torch.no_grad():
        for a, b in zip(ours.blobs, bvlc.blobs):
            b.copy_(a)
        x = torch.from_numpy(X)
        out = ours(x)[0]
        assert torch.equal(out, bvlc(x)[0])
        ref = torch.nn.functional.conv2d(x, ours.blobs[0], ours.blobs[1], stride=2, padding=1, groups=6)
    assert rel_diff(out.numpy(), ref.numpy()) < 1e-6


def test_axpy_matches_senet_formula_and_opencv_with_x_y_exchanged(tmp_path):
    a = RNG.standard_normal((1, 6, 1, 1)).astype(np.float32)
    x, y = X[:1], (RNG.standard_normal((1, 6, 5, 7))).astype(np.float32)
    ours, theirs = one_layer(tmp_path, 'layer { name: "l" type: "Axpy" bottom: "a" bottom: "y" bottom: "x" top: "t" }',
                             {"a": a, "x": x, "y": y})
    # ours computes a·Y + X for these bottoms (SENet order a, X, Y); OpenCV's importer, a·(bottom 2) + bottom 1
    assert rel_diff(ours, a * y + x) < 1e-6 and rel_diff(theirs, a * x + y) < 1e-6
    layer = make("type: 'Axpy'", (2, 6), (2, 6, 5, 7), (2, 6, 5, 7)).double()
    args = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in ((2, 6), (2, 6, 5, 7), (2, 6, 5, 7))]
    out = layer(*args)[0].detach().numpy()
    assert np.allclose(out, args[0].detach().numpy()[:, :, None, None] * args[1].detach().numpy() +
                       args[2].detach().numpy())
    assert gradcheck(lambda *v: layer(*v)[0], args)
    with pytest.raises(NetError, match="N×C or N×C×1×1"):
        make("type: 'Axpy'", (2, 6, 2, 1), (2, 6, 5, 7), (2, 6, 5, 7))
    with pytest.raises(NetError, match="same shape"):
        make("type: 'Axpy'", (2, 6), (2, 6, 5, 7), (2, 6, 5, 6))


def test_relu6_matches_opencv_without_param(tmp_path):
    x = np.concatenate([X.ravel(), [0.0, 6.0, -0.0, 5.999, 6.001]]).astype(np.float32).reshape(1, 1, 1, -1)
    ours, theirs = one_layer(tmp_path, 'layer { name: "l" type: "ReLU6" bottom: "data" top: "t" }', {"data": x})
    assert np.array_equal(ours, theirs) and np.array_equal(ours, np.minimum(np.maximum(x, 0), 6))


@pytest.mark.parametrize("slope", [0.0, 0.1, -0.5])
def test_relu6_negative_slope_and_fork_gradient(slope):
    # relu6_layer.cpp: y = min(max(x,0) + slope·min(x,0), 6); dy/dx = ((x > 0) + slope·(x <= 0))·(x < 6)
    layer = make(f"type: 'ReLU6' relu6_param {{ negative_slope: {slope} }}", (40,), dialect="relu6")
    x = torch.tensor(np.r_[np.linspace(-20, 10, 36), 0.0, 6.0, -1e-3, 6 + 1e-3], dtype=torch.float32,
                     requires_grad=True)
    y = layer(x)[0]
    xv = x.detach().numpy()
    assert np.array_equal(y.detach().numpy(),
                          np.minimum(np.maximum(xv, 0) + np.float32(slope) * np.minimum(xv, 0), 6).astype(np.float32))
    y.backward(torch.ones_like(y))
    assert np.array_equal(x.grad.numpy(), (((xv > 0) + slope * (xv <= 0)) * (xv < 6)).astype(np.float32))


def mish_ref(x: np.ndarray) -> np.ndarray:
    """darknet2caffe mish_layer.cpp in float32: softplus thresholded at ±20, tanh as 2/(1+exp(−2v)) − 1."""
    x = x.astype(np.float32)
    with np.errstate(over="ignore"):
        sp = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log(np.exp(x) + np.float32(1))))
    return x * (np.float32(2) / (np.float32(1) + np.exp(np.float32(-2) * sp)) - np.float32(1))


def test_mish_matches_opencv_and_fork_threshold(tmp_path):
    x = np.concatenate([X.ravel() * 3, [-25, -20.5, -20, 0, 19.5, 20, 20.5, 30]]).astype(np.float32)
    x = x.reshape(1, 1, 1, -1)
    ours, theirs = one_layer(tmp_path, 'layer { name: "l" type: "Mish" bottom: "data" top: "t" }', {"data": x})
    assert rel_diff(ours, theirs) < 1e-5
    assert np.allclose(ours, mish_ref(x), rtol=1e-5, atol=1e-6)
    assert ours.ravel()[-8] == np.float32(-25 * (2 / (1 + np.exp(-2 * np.exp(np.float32(-25)))) - 1))


def test_mish_backward_is_the_forks_formula_at_the_top_value():
    layer = make("type: 'Mish'", (50,), dialect="yolov3")
    x = torch.linspace(-8, 8, 50, dtype=torch.float32, requires_grad=True)
    y = layer(x)[0]
    y.backward(torch.ones_like(y))
    yv = y.detach().numpy().astype(np.float64)
    sp = np.log1p(np.exp(yv))   # mish_layer.cpp Backward_cpu: inp = top_data[i]
    expected = yv * (1 - np.tanh(sp) ** 2) * (1 - np.exp(-sp)) + np.tanh(sp)
    assert np.allclose(x.grad.numpy(), expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- ROIPooling

def c_round(v: float) -> int:
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def roi_pool_ref(features: np.ndarray, rois: np.ndarray, ph: int, pw: int, scale: float):
    """roi_pooling_layer.cpp Forward_cpu as loops (float32 bin arithmetic); returns (top, argmax)."""
    n, c, h, w = features.shape
    top = np.zeros((len(rois), c, ph, pw), np.float32)
    argmax = -np.ones((len(rois), c, ph, pw), np.int64)
    f32 = np.float32
    for r, roi in enumerate(rois.astype(np.float32)):
        b = int(roi[0])
        x1, y1, x2, y2 = (c_round(float(f32(v) * f32(scale))) for v in roi[1:])
        bin_h, bin_w = f32(max(y2 - y1 + 1, 1)) / f32(ph), f32(max(x2 - x1 + 1, 1)) / f32(pw)
        for i in range(ph):
            for j in range(pw):
                hs = min(max(int(math.floor(f32(i) * bin_h)) + y1, 0), h)
                he = min(max(int(math.ceil(f32(i + 1) * bin_h)) + y1, 0), h)
                ws = min(max(int(math.floor(f32(j) * bin_w)) + x1, 0), w)
                we = min(max(int(math.ceil(f32(j + 1) * bin_w)) + x1, 0), w)
                if he <= hs or we <= ws:
                    continue
                for ch in range(c):
                    best, where = -np.inf, -1
                    for y in range(hs, he):
                        for x in range(ws, we):
                            if features[b, ch, y, x] > best:
                                best, where = features[b, ch, y, x], y * w + x
                    top[r, ch, i, j], argmax[r, ch, i, j] = best, where
    return top, argmax


ROIS = np.array([[0, 0, 0, 100, 100], [1, 8.5, 7.9, 40.2, 60.3], [0, -20, -20, 30, 10],
                 [1, 150, 150, 300, 300], [0, 24, 24, 24, 24], [1, 10, 40, 200, 50],
                 [0, 4, 12, 20, 28],           # ×0.125 = 0.5, 1.5, 2.5, 3.5: C's round goes away from zero
                 [1, -4, -12, 3.96, 99]], np.float32)
FEATURES = RNG.standard_normal((2, 4, 12, 15)).astype(np.float32)


@pytest.mark.parametrize("ph, pw, scale", [(3, 4, 0.125), (7, 7, 0.0625), (2, 2, 1.0)])
def test_roi_pooling_matches_opencv_and_loops(tmp_path, ph, pw, scale):
    text = (f'layer {{ name: "l" type: "ROIPooling" bottom: "f" bottom: "r" top: "t" '
            f'roi_pooling_param {{ pooled_h: {ph} pooled_w: {pw} spatial_scale: {scale} }} }}')
    ours, theirs = one_layer(tmp_path, text, {"f": FEATURES, "r": ROIS})
    ref, _ = roi_pool_ref(FEATURES, ROIS, ph, pw, scale)
    assert np.array_equal(ours, theirs) and np.array_equal(ours, ref)
    assert ours.shape == (len(ROIS), 4, ph, pw)


def test_roi_pooling_gradient_routes_to_argmax():
    layer = make("type: 'ROIPooling' roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.125 }",
                 FEATURES.shape, ROIS.shape)
    feats = torch.tensor(FEATURES, requires_grad=True)
    top = layer(feats, torch.tensor(ROIS))[0]
    diff = torch.tensor(RNG.standard_normal(top.shape).astype(np.float32))
    top.backward(diff)
    _, argmax = roi_pool_ref(FEATURES, ROIS, 3, 4, 0.125)
    expected = np.zeros((2, 4, 12 * 15), np.float32)   # roi_pooling_layer.cu ROIPoolBackward: Σ over argmax hits
    for r, ch, i, j in np.ndindex(argmax.shape):
        if argmax[r, ch, i, j] >= 0:
            expected[int(ROIS[r, 0]), ch, argmax[r, ch, i, j]] += diff[r, ch, i, j].item()
    assert np.allclose(feats.grad.numpy().reshape(2, 4, -1), expected, atol=1e-6)
    small = make("type: 'ROIPooling' roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.25 }",
                 (2, 2, 6, 8), ROIS.shape).double()
    x = torch.tensor(FEATURES[:, :2, :6, :8].astype(np.float64), requires_grad=True)
    assert gradcheck(lambda v: small(v, torch.tensor(ROIS, dtype=torch.float64))[0], (x,), eps=1e-6)


def test_roi_pooling_errors_and_meta_shapes():
    with pytest.raises(NetError, match="pooled_h and pooled_w must be positive"):
        make("type: 'ROIPooling' roi_pooling_param { pooled_w: 2 }", (1, 2, 4, 4), (3, 5))
    with pytest.raises(NetError, match="R×5"):
        make("type: 'ROIPooling' roi_pooling_param { pooled_h: 2 pooled_w: 2 }", (1, 2, 4, 4), (3, 4))
    layer = make("type: 'ROIPooling' roi_pooling_param { pooled_h: 2 pooled_w: 3 }", (1, 2, 4, 4), (3, 5, 1, 1))
    assert layer.top_shapes == [(3, 2, 2, 3)]
    with pytest.raises(DataError, match="batch index"):
        layer(torch.zeros(1, 2, 4, 4), torch.tensor([[1.0, 0, 0, 1, 1]] * 3))


# ------------------------------------------------------------------------------------------------- Proposal

def rpn_inputs(seed: int, a: int, h: int, w: int, spread: float):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((1, 2, a * h, w)).astype(np.float32) * 2
    e = np.exp(logits - logits.max(1, keepdims=True))
    prob = (e / e.sum(1, keepdims=True)).reshape(1, 2 * a, h, w).astype(np.float32)
    return prob, (rng.standard_normal((1, 4 * a, h, w)) * spread).astype(np.float32)


@pytest.mark.parametrize("seed, params, info, spread", [
    (0, "ratio: 0.5 ratio: 1 ratio: 2 scale: 2 scale: 4 scale: 8", [96, 128, 1], 0.3),
    (1, "ratio: 0.5 ratio: 1 ratio: 2 scale: 2 scale: 4 scale: 8 pre_nms_topn: 100 post_nms_topn: 20",
     [96.7, 127.3, 1], 0.3),
    (2, "ratio: 1 ratio: 3 scale: 1 scale: 5 feat_stride: 8 base_size: 12 post_nms_topn: 50 nms_thresh: 0.5",
     [50, 66, 1.5], 1.0),
    (3, "ratio: 0.5 ratio: 1 ratio: 2 scale: 2 scale: 4 scale: 8 pre_nms_topn: 30 nms_thresh: 0.3",
     [96, 128, 1], 0.3),
])
def test_proposal_matches_opencv(tmp_path, seed, params, info, spread):
    a = params.count("ratio") * params.count("scale")
    prob, deltas = rpn_inputs(seed, a, 6, 8, spread)
    text = (f'layer {{ name: "l" type: "Proposal" bottom: "s" bottom: "d" bottom: "i" top: "t" top: "t2" '
            f'proposal_param {{ {params} }} }}')
    (tmp_path / "p.prototxt").write_text("".join(
        f'input: "{k}" input_shape {{ {" ".join(f"dim: {d}" for d in v)} }}\n'
        for k, v in (("s", prob.shape), ("d", deltas.shape), ("i", (1, 3)))) + text)
    net = Net(str(tmp_path / "p.prototxt"))
    inputs = {"s": prob, "d": deltas, "i": np.array([info], np.float32)}
    with torch.no_grad():
        net.forward(**inputs)
    cv = opencv_net(tmp_path / "p.prototxt")
    for k, v in inputs.items():
        cv.setInput(v, k)
    rois, scores = cv.forwardAndRetrieve(["l"])[0]
    ours_rois, ours_scores = net.blobs["t"].numpy(), net.blobs["t2"].numpy()
    assert ours_rois.shape == rois.shape and ours_scores.shape == scores.shape
    assert np.array_equal(ours_scores, scores)          # the same boxes, kept in the same order
    assert np.abs(ours_rois - rois).max() <= 1e-6 * max(info) * 32 and rel_diff(ours_rois, rois) < 1e-6
    kept = int((scores[:, 0] > 0).sum())
    assert kept > 0 and not ours_rois[kept:].any() and np.all(ours_rois[:kept, 0] == 0)
    assert np.all(ours_rois[:kept, 3] <= int(info[1]) - 1) and np.all(ours_rois[:kept, 1:] >= 0)


def test_proposal_shape_errors():
    shapes = [(1, 18, 4, 5), (1, 36, 4, 5), (1, 3)]
    layer = make("type: 'Proposal' proposal_param { post_nms_topn: 7 }", *shapes)   # py-faster-rcnn's 9 anchors
    assert layer.top_shapes == [(7, 5)]
    with pytest.raises(NetError, match=r"1×18×H×W"):
        make("type: 'Proposal'", (2, 18, 4, 5), shapes[1], shapes[2])
    with pytest.raises(NetError, match="box deltas"):
        make("type: 'Proposal'", shapes[0], (1, 36, 4, 4), shapes[2])
    with pytest.raises(NetError, match="im_info"):
        make("type: 'Proposal'", shapes[0], shapes[1], (1,))


# ------------------------------------------------------------------------------------------------- SmoothL1Loss

def smooth_l1_ref(pred, target, inside=None, outside=None, sigma=1.0):
    d = (pred - target) * (inside if inside is not None else 1)
    s2 = sigma * sigma
    f = np.where(np.abs(d) < 1 / s2, 0.5 * s2 * d * d, np.abs(d) - 0.5 / s2)
    grad = np.where(np.abs(d) < 1 / s2, s2 * d, np.sign(d))
    return (f * (outside if outside is not None else 1)).sum() / pred.shape[0], grad / pred.shape[0]


SHAPE = (3, 8, 2, 2)
PRED, TARGET = RNG.standard_normal(SHAPE) * 1.5, RNG.standard_normal(SHAPE) * 1.5
W_IN, W_OUT = RNG.uniform(0, 2, SHAPE), RNG.uniform(0, 2, SHAPE)


@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_smooth_l1_faster_rcnn_form(sigma):
    layer = make(f"type: 'SmoothL1Loss' smooth_l1_loss_param {{ sigma: {sigma} }}", *[SHAPE] * 4,
                 dialect="fast-rcnn").double()
    args = [torch.tensor(v, requires_grad=i < 2) for i, v in enumerate((PRED, TARGET, W_IN, W_OUT))]
    loss = layer(*args)[0]
    expected, g = smooth_l1_ref(PRED, TARGET, W_IN, W_OUT, sigma)
    assert loss.shape == () and math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()   # smooth_L1_loss_layer.cu Backward_gpu: f'(d) · w_in · w_out / num, negated for the target
    assert np.allclose(args[0].grad.numpy(), g * W_IN * W_OUT) and np.allclose(args[1].grad.numpy(), -g * W_IN * W_OUT)
    assert gradcheck(lambda p, t: layer(p, t, args[2], args[3])[0], (args[0], args[1]))
    two = make(f"type: 'SmoothL1Loss' smooth_l1_loss_param {{ sigma: {sigma} }}", SHAPE, SHAPE).double()
    p = torch.tensor(PRED, requires_grad=True)
    assert math.isclose(two(p, torch.tensor(TARGET))[0].item(), smooth_l1_ref(PRED, TARGET, sigma=sigma)[0],
                        rel_tol=1e-12)
    assert gradcheck(lambda v: two(v, torch.tensor(TARGET))[0], (p,))


def test_smooth_l1_ssd_form_does_not_chain_its_weight():
    layer = make("type: 'SmoothL1Loss'", SHAPE, SHAPE, SHAPE).double()     # 3 bottoms: SSD's form
    pred, target = torch.tensor(PRED, requires_grad=True), torch.tensor(TARGET, requires_grad=True)
    loss = layer(pred, target, torch.tensor(W_IN))[0]
    expected, g = smooth_l1_ref(PRED, TARGET, W_IN)
    assert math.isclose(loss.item(), expected, rel_tol=1e-12)
    loss.backward()   # weiliu89 ssd smooth_L1_loss_layer.cpp Backward_cpu: f'(w·(p − t)) / num, w not chained
    assert np.allclose(pred.grad.numpy(), g) and np.allclose(target.grad.numpy(), -g)
    ssd2 = make("type: 'SmoothL1Loss'", SHAPE, SHAPE, dialect="ssd").double()
    assert ssd2.form == "ssd" and math.isclose(ssd2(torch.tensor(PRED), torch.tensor(TARGET))[0].item(),
                                               smooth_l1_ref(PRED, TARGET)[0], rel_tol=1e-12)


def test_smooth_l1_bottom_counts_dialects_and_loss_weight(tmp_path):
    with pytest.raises(NetError, match="Faster R-CNN's SmoothL1Loss takes 2 bottoms or 4"):
        make("type: 'SmoothL1Loss' smooth_l1_loss_param { sigma: 3 }", *[SHAPE] * 3)
    with pytest.raises(NetError, match="SSD's SmoothL1Loss takes 2 bottoms or 3"):
        make("type: 'SmoothL1Loss'", *[SHAPE] * 4, dialect="ssd")
    with pytest.raises(NetError, match="bottom 2 has shape"):
        make("type: 'SmoothL1Loss'", SHAPE, SHAPE, (3, 8, 2, 1))
    assert make("type: 'SmoothL1Loss'", *[SHAPE] * 4).form == "rcnn"
    (tmp_path / "n.prototxt").write_text(
        'input: "a" input_shape { dim: 3 dim: 4 }\ninput: "b" input_shape { dim: 3 dim: 4 }\n'
        'layer { name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "loss" '
        'smooth_l1_loss_param { sigma: 3 } }\n')
    net = Net(str(tmp_path / "n.prototxt"))
    assert net.dialect == "fast-rcnn" and net.loss_weights == {"loss": 1.0}


# ------------------------------------------------------------------------------------------------- whole nets

def producers(net_param: caffe_pb2.NetParameter) -> dict[str, str]:
    """The last layer writing each blob: the name OpenCV gives that blob's final value."""
    return {top: layer.name for layer in net_param.layer for top in layer.top}


def check_net(tmp_path, prototxt: Path, inputs: dict[str, np.ndarray], blobs: list[str], seed: int = 0,
              gains=None, opencv_prototxt: Path | None = None) -> dict[str, float]:
    """Random weights, our forward, OpenCV's (fused for the outputs, unfused for intermediates): relative diffs."""
    net = Net(str(prototxt))
    fill(net, seed, gains)
    model = tmp_path / "weights.caffemodel"
    net.save_weights(model)
    with torch.no_grad():
        outputs = net.forward(**inputs)
        again = Net(str(prototxt), str(model)).forward(**inputs)   # the fork-dialect caffemodel reads back
    assert all(torch.equal(outputs[name], again[name]) for name in outputs)
    where = producers(net.net_param)
    diffs = {}
    for fusion, names in ((True, list(outputs)), (False, blobs)):
        cv = opencv_net(opencv_prototxt or prototxt, model, fusion)
        for name, theirs in zip(names, opencv_run(cv, inputs, [where[n] for n in names])):
            diffs[name] = max(diffs.get(name, 0.0), rel_diff(net.blobs[name].numpy(), theirs))
    assert max(diffs.values()) <= RTOL, diffs
    return diffs


def test_fork_nets_build_on_the_meta_device():
    for name in ("shufflenet", "se_resnet50", "densenet121", "faster_rcnn_vgg16"):
        _, shapes = net_param_shapes(FORKS / f"{name}_deploy.prototxt")
        assert shapes


def test_shufflenet_matches_opencv(tmp_path):
    data = RNG.standard_normal((2, 3, 48, 48)).astype(np.float32)
    diffs = check_net(tmp_path, FORKS / "shufflenet_deploy.prototxt", {"data": data},
                      ["pool1", "resx1_concat", "shuffle2", "resx2_conv2", "resx2_elewise", "resx3_concat",
                       "shuffle4", "resx4_elewise", "pool_ave", "fc10"])
    assert set(diffs) >= {"fc10", "shuffle4"}


def test_se_resnet50_matches_opencv_given_senet_axpy_order(tmp_path):
    prototxt = FORKS / "se_resnet50_deploy.prototxt"
    swapped = read_net(str(prototxt))
    for layer in swapped.layer:   # OpenCV's Axpy is a·(bottom 2) + bottom 1: hand it SENet's a·X + Y that way
        if layer.type == "Axpy":
            layer.bottom[1], layer.bottom[2] = layer.bottom[2], layer.bottom[1]
    write_net(swapped, str(tmp_path / "opencv_order.prototxt"))
    data = RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)
    diffs = check_net(tmp_path, prototxt, {"data": data},
                      ["conv2_1_1x1_up", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "classifier"],
                      opencv_prototxt=tmp_path / "opencv_order.prototxt")
    assert "prob" in diffs


def test_densenet121_with_ceil_mode_false_matches_opencv(tmp_path):
    prototxt = FORKS / "densenet121_deploy.prototxt"
    net_shapes = Net(str(prototxt)).blob_shapes
    assert net_shapes["pool1"] == (2, 16, 8, 8)   # ceil_mode: false (Caffe's default rounding would give 9×9)
    data = RNG.standard_normal((2, 3, 32, 32)).astype(np.float32)
    check_net(tmp_path, prototxt, {"data": data},
              ["pool1", "concat_2_2", "pool2", "concat_3_2", "pool4", "concat_5_2", "pool5", "fc6"])


def test_faster_rcnn_vgg16_matches_opencv(tmp_path):
    prototxt = FORKS / "faster_rcnn_vgg16_deploy.prototxt"
    data = RNG.standard_normal((1, 3, 96, 128)).astype(np.float32)
    inputs = {"data": data, "im_info": np.array([[96, 128, 1]], np.float32)}
    diffs = check_net(tmp_path, prototxt, inputs,
                      ["rpn_cls_prob_reshape", "rpn_bbox_pred", "rois", "pool5", "fc7", "cls_prob", "bbox_pred"],
                      gains={"rpn_bbox_pred": 0.2})
    assert {"cls_prob", "bbox_pred", "rois"} <= set(diffs)
