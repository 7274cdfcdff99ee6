"""The segmentation forks' layers and nets against independent references.

BN (SegNet/ENet and PSPNet forms), Upsample (SegNet max-unpooling, YOLOv3 nearest), Interp (PSPNet/DeepLab),
Dropout's scale_train / sample_weights_test and SoftmaxWithLoss's class weighting, each against the fork's
formula written in numpy (forward, and the fork's hand-written backward where there is one), torch.nn.functional
(max_unpool2d, interpolate) and OpenCV's dnn (Interp, one-layer nets), plus finite-difference gradient checks.
The three reduced published nets (tests/data/forks/) run with random weights written by vggproto and are checked
layer by layer against a torch.nn.functional re-run of the net, PSPNet also against OpenCV (its BN rewritten as
the BatchNorm + Scale pair OpenCV has).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net, write_net
from vggproto.errors import DataError, NetError
from vggproto.layers.registry import LayerSpec, build_layer
from vggproto.net.interpreter import Net
from vggproto.weights.caffemodel import write_weights

FORKS = Path(__file__).parent / "data" / "forks"
TOL = dict(rtol=1e-10, atol=1e-12)


def single(layer: str, *shapes, phase: str = "TEST", dialect: str | None = None) -> Net:
    """A float64 net: Input layers with tops x0, x1, ... of ``shapes``, then ``layer`` (which uses them)."""
    text = "force_backward: true\n"
    for i, shape in enumerate(shapes):
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "in{i}" type: "Input" top: "x{i}" input_param {{ shape {{ {dims} }} }} }}\n'
    return Net(text + layer, phase=phase, seed=0, dialect=dialect).double()


def rand(*shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def gradcheck(net: Net, *xs: torch.Tensor, wrt: tuple[int, ...] = (0,)) -> None:
    """Finite differences of the net's differentiable outputs against autograd, w.r.t. the inputs ``wrt``."""
    def fn(*args):
        feed = {f"x{i}": (args[wrt.index(i)] if i in wrt else x) for i, x in enumerate(xs)}
        return tuple(v for v in net(**feed).values() if v.requires_grad)
    inputs = [xs[i].clone().requires_grad_(True) for i in wrt]
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


# ================================================================================================== BN

SEGNET_BN = ('layer {{ name: "bn" type: "BN" bottom: "x0" top: "y" {tops} param {{}} param {{}} bn_param {{ '
             'bn_mode: {mode} scale_filler {{ type: "gaussian" std: 1 }} shift_filler {{ type: "gaussian" }} }} }}')


def segnet_bn_ref(x, scale, shift):
    """SegNet bn_layer.cpp LEARN: batch statistics over N, H, W, var = E[x²] − E[x]², eps 1e-9."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = (x ** 2).mean(axis=(0, 2, 3), keepdims=True) - mean ** 2
    xhat = (x - mean) / np.sqrt(var + 1e-9)
    return xhat * scale + shift, mean, var, xhat


def batch_formula_backward(g, slope, xhat, inv_std):
    """The bottom diff both forks' Backward_cpu compute: inv_std·(h − mean(h) − x̂·mean(h·x̂)), h = g·slope."""
    h = g * slope
    axes = (0, 2, 3)
    return (h - h.mean(axis=axes, keepdims=True) - xhat * (h * xhat).mean(axis=axes, keepdims=True)) * inv_std


@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_segnet_bn_learn_uses_batch_statistics_in_every_phase(phase):
    net = single(SEGNET_BN.format(mode="LEARN", tops='top: "mean" top: "var"'), (3, 4, 5, 6), phase=phase)
    x = rand(3, 4, 5, 6) * 3 + 1
    xv = x.clone().requires_grad_(True)
    out = net(x0=xv)
    scale, shift = (b.detach().numpy() for b in net.params["bn"])
    y, mean, var, xhat = segnet_bn_ref(x.numpy(), scale, shift)
    np.testing.assert_allclose(net.blobs["y"].detach().numpy(), y, **TOL)
    np.testing.assert_allclose(out["mean"].numpy(), mean.reshape(1, 4, 1, 1), **TOL)
    np.testing.assert_allclose(out["var"].numpy(), var.reshape(1, 4, 1, 1), **TOL)
    assert not out["mean"].requires_grad and not out["var"].requires_grad
    g = rand(3, 4, 5, 6, seed=1)
    (net.blobs["y"] * g).sum().backward()
    want = batch_formula_backward(g.numpy(), scale, xhat, 1 / np.sqrt(var + 1e-9))
    np.testing.assert_allclose(xv.grad.numpy(), want, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(net.params["bn"][0].grad.numpy(), (xhat * g.numpy()).sum((0, 2, 3), keepdims=True),
                               **TOL)
    np.testing.assert_allclose(net.params["bn"][1].grad.numpy(), g.numpy().sum((0, 2, 3), keepdims=True), **TOL)
    gradcheck(net, x)


def test_segnet_bn_inference_is_scale_and_shift():
    net = single(SEGNET_BN.format(mode="INFERENCE", tops=""), (2, 3, 4, 4))
    assert [tuple(b.shape) for b in net.params["bn"]] == [(1, 3, 1, 1)] * 2
    x = rand(2, 3, 4, 4)
    scale, shift = (b.detach().numpy() for b in net.params["bn"])
    np.testing.assert_allclose(net(x0=x)["y"].detach().numpy(), x.numpy() * scale + shift, **TOL)
    gradcheck(net, x)


PSP_BN = ('layer {{ name: "bn" type: "BN" bottom: "x0" top: "y" param {{}} param {{}} param {{}} param {{}} '
          'bn_param {{ slope_filler {{ type: "gaussian" std: 1 }} bias_filler {{ type: "gaussian" }} {extra} }} }}')


def psp_net(extra: str, phase: str, shape=(3, 4, 5, 6)) -> tuple[Net, list[np.ndarray]]:
    net = single(PSP_BN.format(extra=extra), shape, phase=phase)
    with torch.no_grad():   # running statistics as a deploy caffemodel carries them
        net.params["bn"][2].copy_(rand(1, shape[1], 1, 1, seed=5))
        net.params["bn"][3].copy_(rand(1, shape[1], 1, 1, seed=6).abs() + 0.5)
    return net, [b.detach().numpy().copy() for b in net.params["bn"]]


@pytest.mark.parametrize("extra, phase", [("", "TEST"), ("frozen: true", "TRAIN"), ("frozen: true", "TEST"),
                                          ("eps: 0.01", "TEST")])
def test_pspnet_bn_running_statistics(extra, phase):
    net, (slope, bias, mean, var) = psp_net(extra, phase)
    eps = float(np.float32(0.01 if "eps" in extra else 1e-5))   # the proto field is a float
    x = rand(3, 4, 5, 6, seed=2) * 2
    xv = x.clone().requires_grad_(True)
    y = net(x0=xv)["y"]
    inv_std = 1 / np.sqrt(var + eps)
    xhat = (x.numpy() - mean) * inv_std
    np.testing.assert_allclose(y.detach().numpy(), xhat * slope + bias, **TOL)
    g = rand(3, 4, 5, 6, seed=3)
    (y * g).sum().backward()
    if "frozen" in extra:   # PSPNet bn_layer.cpp: frozen backward is slope/std only, no parameter diffs
        want = g.numpy() * slope * inv_std
        assert net.params["bn"][0].grad is None and net.params["bn"][1].grad is None
        gradcheck(net, x)
    else:                   # TEST, not frozen: the batch formula on the running-statistics x̂ (not d forward/dx)
        want = batch_formula_backward(g.numpy(), slope, xhat, inv_std)
        np.testing.assert_allclose(net.params["bn"][0].grad.numpy(), (xhat * g.numpy()).sum((0, 2, 3),
                                   keepdims=True), **TOL)
    np.testing.assert_allclose(xv.grad.numpy(), want, rtol=1e-9, atol=1e-11)
    np.testing.assert_array_equal(net.params["bn"][2].detach().numpy(), mean)   # never updated here


def test_pspnet_bn_train_batch_statistics_and_running_update():
    net, (slope, bias, mean0, var0) = psp_net("momentum: 0.75", "TRAIN")
    x = rand(3, 4, 5, 6, seed=4) * 2 + 1
    y = net(x0=x)["y"].detach().numpy()
    bmean = x.numpy().mean((0, 2, 3), keepdims=True)
    bvar = ((x.numpy() - bmean) ** 2).mean((0, 2, 3), keepdims=True)
    np.testing.assert_allclose(y, (x.numpy() - bmean) / np.sqrt(bvar + 1e-5) * slope + bias, **TOL)
    # PSPNet bn_layer.cpp: r ← momentum·r + (1 − momentum)·batch, biased variance
    np.testing.assert_allclose(net.params["bn"][2].detach().numpy(), 0.75 * mean0 + 0.25 * bmean, **TOL)
    np.testing.assert_allclose(net.params["bn"][3].detach().numpy(), 0.75 * var0 + 0.25 * bvar, **TOL)
    net, _ = psp_net("momentum: 0.75", "TRAIN")
    gradcheck(net, x)   # in TRAIN the fork's backward is the derivative of its forward


def test_pspnet_bn_blobs_fillers_and_forced_learning_rates():
    net = single('layer { name: "bn" type: "BN" bottom: "x0" top: "y" param { lr_mult: 3 decay_mult: 2 } '
                 'bn_param { slope_filler { type: "constant" value: 2 } frozen: true engine: CUDNN eps: 1e-7 } }',
                 (2, 5, 3, 3), phase="TRAIN")
    slope, bias, mean, var = (b.detach().numpy() for b in net.params["bn"])
    assert slope.shape == (1, 5, 1, 1) and (slope == 2).all() and (bias == 0).all() and (mean == 0).all()
    assert (var == 1).all()        # frozen: running variance initialised to 1
    assert net.layer_dict["bn"].eps == 1e-5   # cudnn_bn_layer.cpp: eps raised to CUDNN_BN_MIN_EPSILON
    specs = net.net_param.layer[-1].param
    assert [(s.lr_mult, s.decay_mult) for s in specs] == [(0.0, 0.0)] * 4
    assert all(lp.lr_mult == 0 for lp in net.learnable_params)
    net = single('layer { name: "bn" type: "BN" bottom: "x0" top: "y" bn_param { eps: 1e-3 } }', (2, 5, 3, 3),
                 phase="TRAIN", dialect="pspnet")
    assert [(lp.lr_mult, lp.decay_mult) for lp in net.learnable_params] == [(1, 1), (1, 1), (0, 0), (0, 0)]
    assert (net.params["bn"][3].detach() == 0).all()


def bn_layer(dialect: str, params: int = 0, **fields) -> object:
    param = caffe_pb2.LayerParameter(name="bn", type="BN", bottom=["x"], top=["y"])
    for _ in range(params):
        param.param.add()
    for key, value in fields.items():
        setattr(param.bn_param, key, value)
    return build_layer(LayerSpec(param=param, bottom_shapes=[(2, 3, 4, 4)], dialect=dialect))


def test_bn_form_follows_fields_then_dialect_then_param_count():
    assert len(bn_layer("bvlc", bn_mode=caffe_pb2.BNParameter.INFERENCE).blobs) == 2
    assert len(bn_layer("bvlc", frozen=True).blobs) == 4
    assert len(bn_layer("enet", params=4).blobs) == 2
    assert len(bn_layer("segnet").blobs) == 2
    assert len(bn_layer("deeplab").blobs) == 4
    assert len(bn_layer("bvlc", params=4).blobs) == 4
    assert len(bn_layer("bvlc", params=2).blobs) == 2
    with pytest.raises(NetError, match="bn_param mixes SegNet/ENet fields .bn_mode. with PSPNet fields .frozen."):
        bn_layer("bvlc", bn_mode=caffe_pb2.BNParameter.LEARN, frozen=True)
    net = single('layer { name: "bn" type: "BN" bottom: "x0" top: "y" bn_param { bn_mode: INFERENCE } }',
                 (1, 2, 3, 3), dialect="enet")
    assert net.dialect == "enet" and net.layer_dict["bn"].form == "segnet"


# ================================================================================================== Upsample

def unpool_ref(values: np.ndarray, mask: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """SegNet upsample_layer.cpp Forward_cpu as its loop: zero top, top[mask[i]] = bottom[i] in order."""
    n, c = values.shape[:2]
    top = np.zeros((n, c, out_h * out_w))
    for i in range(n):
        for j in range(c):
            for value, index in zip(values[i, j].ravel(), mask[i, j].ravel()):
                top[i, j, int(index)] = value
    return top.reshape(n, c, out_h, out_w)


UNPOOL_CASES = [  # (bottom H, W, pooling kernel = stride, upsample_param, top H, W)
    ((9, 11), (2, 2), "scale: 2 upsample_h: 9 upsample_w: 11", (9, 11)),
    ((9, 11), (2, 2), "pad_out_h: true pad_out_w: true", (9, 11)),
    ((8, 10), (2, 2), "", (8, 10)),
    ((9, 12), (3, 2), "scale_h: 3 scale_w: 2", (9, 12)),
]


@pytest.mark.parametrize("size, kernel, upsample, top", UNPOOL_CASES)
def test_upsample_unpools_by_the_pooling_mask(size, kernel, upsample, top):
    pooling = f"kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {kernel[0]} stride_w: {kernel[1]}"
    net = single(f'layer {{ name: "pool" type: "Pooling" bottom: "x0" top: "p" top: "mask" pooling_param {{ '
                 f'pool: MAX {pooling} }} }}\n layer {{ name: "up" type: "Upsample" bottom: "p" bottom: "mask" '
                 f'top: "u" upsample_param {{ {upsample} }} }}', (2, 3, *size))
    assert net.dialect == "segnet" and net.blob_shapes["u"] == (2, 3, *top)
    x = rand(2, 3, *size)
    u = net(x0=x)["u"].detach()
    p, mask = net.blobs["p"].detach(), net.blobs["mask"]
    np.testing.assert_array_equal(u.numpy(), unpool_ref(p.numpy(), mask.numpy(), *top))
    torch_ref = F.max_unpool2d(p, mask.long(), kernel_size=kernel, output_size=top)
    np.testing.assert_array_equal(u.numpy(), torch_ref.numpy())
    gradcheck(net, x)


def test_upsample_repeated_indices_last_writer_forward_gather_backward():
    values, mask = rand(1, 2, 2, 3), torch.tensor([[[[0., 5, 0], [3, 3, 8]], [[1, 1, 1], [2, 0, 7]]]])
    net = single('layer { name: "up" type: "Upsample" bottom: "x0" bottom: "x1" top: "u" upsample_param { '
                 'upsample_h: 3 upsample_w: 3 } }', (1, 2, 2, 3), (1, 2, 2, 3))
    v = values.clone().requires_grad_(True)
    u = net(x0=v, x1=mask)["u"]
    np.testing.assert_array_equal(u.detach().numpy(), unpool_ref(values.numpy(), mask.numpy(), 3, 3))
    g = rand(1, 2, 3, 3, seed=1)
    (u * g).sum().backward()
    # SegNet upsample_layer.cpp Backward_cpu: bottom_diff[i] = top_diff[mask[i]], repeated indices included
    want = np.take_along_axis(g.numpy().reshape(1, 2, 9), mask.numpy().reshape(1, 2, 6).astype(int), 2)
    np.testing.assert_array_equal(v.grad.numpy(), want.reshape(1, 2, 2, 3))
    with pytest.raises(DataError, match="mask index 9 is outside the 3x3 top plane"):
        net(x0=values, x1=mask + 1)


@pytest.mark.parametrize("upsample, message", [
    ("scale: 1", r"scale \(or scale_h and scale_w\) must be > 1"),
    ("scale: 2 scale_h: 2 scale_w: 2", "needs upsample_h and upsample_w, or .deprecated. scale"),
    ("scale_h: 2", "needs upsample_h and upsample_w"),
    ("upsample_h: 1 upsample_w: 8", "upsample_h and upsample_w must be > 1"),
    ("scale: 3 pad_out_w: true", "pad_out_w needs scale 2"),
])
def test_upsample_unpool_errors(upsample, message):
    with pytest.raises(NetError, match=message):
        single(f'layer {{ name: "up" type: "Upsample" bottom: "x0" bottom: "x1" top: "u" upsample_param {{ '
               f'{upsample} }} }}', (1, 2, 4, 4), (1, 2, 4, 4))
    with pytest.raises(NetError, match="values and mask of one shape"):
        single('layer { name: "up" type: "Upsample" bottom: "x0" bottom: "x1" top: "u" }', (1, 2, 4, 4),
               (1, 2, 4, 5))


@pytest.mark.parametrize("dialect", [None, "yolov3"])
def test_upsample_one_bottom_is_yolov3_nearest(dialect):
    net = single('layer { name: "up" type: "Upsample" bottom: "x0" top: "u" upsample_param { scale: 2 } }',
                 (2, 3, 4, 5), dialect=dialect)
    x = rand(2, 3, 4, 5)
    u = net(x0=x)["u"].detach().numpy()
    np.testing.assert_array_equal(u, np.repeat(np.repeat(x.numpy(), 2, axis=2), 2, axis=3))
    np.testing.assert_array_equal(u, F.interpolate(x, scale_factor=2, mode="nearest").numpy())
    gradcheck(net, x)
    # darknet2caffe's scale defaults to 1 (the shared schema's default 2 is SegNet's)
    net = single('layer { name: "up" type: "Upsample" bottom: "x0" top: "u" }', (2, 3, 4, 5), dialect=dialect)
    np.testing.assert_array_equal(net(x0=x)["u"].detach().numpy(), x.numpy())


def test_upsample_one_bottom_errors():
    with pytest.raises(NetError, match="upsample_param.upsample_h belongs to SegNet/ENet max-unpooling"):
        single('layer { name: "up" type: "Upsample" bottom: "x0" top: "u" upsample_param { upsample_h: 8 '
               'upsample_w: 8 } }', (1, 2, 4, 4))
    with pytest.raises(NetError, match="scale must be at least 1, got 0"):
        single('layer { name: "up" type: "Upsample" bottom: "x0" top: "u" upsample_param { scale: 0 } }',
               (1, 2, 4, 4))


# ================================================================================================== Interp

def interp_ref(x: np.ndarray, out_h: int, out_w: int, pad_beg: int = 0, pad_end: int = 0) -> np.ndarray:
    """PSPNet src/caffe/util/interp.cpp caffe_cpu_interp2 as its loops (crop at −pad_beg on both axes)."""
    h1, w1 = x.shape[2] + pad_beg + pad_end, x.shape[3] + pad_beg + pad_end
    src = x[:, :, -pad_beg:-pad_beg + h1, -pad_beg:-pad_beg + w1]
    if (h1, w1) == (out_h, out_w):
        return src.copy()
    rh = (h1 - 1) / (out_h - 1) if out_h > 1 else 0.0
    rw = (w1 - 1) / (out_w - 1) if out_w > 1 else 0.0
    top = np.zeros(x.shape[:2] + (out_h, out_w))
    for i in range(out_h):
        r = rh * i
        y0 = int(r)
        dy, ly = (1 if y0 < h1 - 1 else 0), r - y0
        for j in range(out_w):
            c = rw * j
            x0 = int(c)
            dx, lx = (1 if x0 < w1 - 1 else 0), c - x0
            top[:, :, i, j] = ((1 - ly) * ((1 - lx) * src[:, :, y0, x0] + lx * src[:, :, y0, x0 + dx])
                               + ly * ((1 - lx) * src[:, :, y0 + dy, x0] + lx * src[:, :, y0 + dy, x0 + dx]))
    return top


INTERP_CASES = [  # (interp_param, bottom H, W, top H, W, pad_beg, pad_end)
    ("zoom_factor: 3", 5, 7, 13, 19, 0, 0),
    ("height: 9 width: 4", 5, 7, 9, 4, 0, 0),
    ("height: 1 width: 1", 5, 7, 1, 1, 0, 0),
    ("shrink_factor: 2", 5, 7, 3, 4, 0, 0),
    ("shrink_factor: 2 zoom_factor: 2", 5, 7, 5, 7, 0, 0),
    ("zoom_factor: 2 height: 30 width: 30", 5, 7, 9, 13, 0, 0),          # a factor alone beats height/width
    ("shrink_factor: 2 zoom_factor: 3 height: 6 width: 8", 5, 7, 6, 8, 0, 0),   # height/width beat both factors
    ("zoom_factor: 2 pad_beg: -1 pad_end: -1", 6, 8, 7, 11, -1, -1),
    ("height: 5 width: 5 pad_end: -2", 6, 8, 5, 5, 0, -2),
    ("zoom_factor: 1 pad_beg: -1", 6, 8, 5, 7, -1, 0),                     # equal sizes: a copy of the crop
]


@pytest.mark.parametrize("param, h, w, oh, ow, pad_beg, pad_end", INTERP_CASES)
def test_interp_sizes_and_values(param, h, w, oh, ow, pad_beg, pad_end):
    net = single(f'layer {{ name: "i" type: "Interp" bottom: "x0" top: "y" interp_param {{ {param} }} }}',
                 (2, 3, h, w))
    assert net.dialect == "pspnet" and net.blob_shapes["y"] == (2, 3, oh, ow)
    x = rand(2, 3, h, w)
    y = net(x0=x)["y"].detach().numpy()
    np.testing.assert_allclose(y, interp_ref(x.numpy(), oh, ow, pad_beg, pad_end), **TOL)
    if not pad_beg and not pad_end:
        np.testing.assert_allclose(y, F.interpolate(x, size=(oh, ow), mode="bilinear", align_corners=True)
                                   .numpy(), **TOL)
    gradcheck(net, x)


@pytest.mark.parametrize("param, h, w", [("zoom_factor: 3", 5, 7), ("zoom_factor: 8", 12, 12),
                                         ("height: 9 width: 4", 5, 7), ("height: 12 width: 12", 1, 1),
                                         ("height: 17 width: 23", 6, 6)])
def test_interp_matches_opencv(tmp_path, param, h, w):
    cv2 = pytest.importorskip("cv2")
    text = (f'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: {h}\ninput_dim: {w}\n'
            f'layer {{ name: "i" type: "Interp" bottom: "data" top: "y" interp_param {{ {param} }} }}\n')
    path = tmp_path / "interp.prototxt"
    path.write_text(text)
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    reference = cv2.dnn.readNetFromCaffe(str(path))
    reference.setInput(x)
    want = reference.forward()
    got = Net(str(path)).forward(data=x)["y"].numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("param, message", [
    ("zoom_factor: 2 pad_beg: 1", "interp_param.pad_beg must be <= 0"),
    ("zoom_factor: 2 pad_end: 2", "interp_param.pad_end must be <= 0"),
    ("height: 5", "needs zoom_factor, shrink_factor, or both height and width"),
    ("zoom_factor: 0", "zoom_factor must be at least 1, got 0"),
    ("height: 0 width: 3", "empty output 0x3"),
    ("zoom_factor: 2 pad_beg: -3 pad_end: -3", "crop the 5x7 input to nothing"),
])
def test_interp_errors(param, message):
    with pytest.raises(NetError, match=message):
        single(f'layer {{ name: "i" type: "Interp" bottom: "x0" top: "y" interp_param {{ {param} }} }}',
               (1, 2, 5, 7))


def test_interp_recomputes_its_size_for_a_reshaped_input():
    net = single('layer { name: "i" type: "Interp" bottom: "x0" top: "y" interp_param { zoom_factor: 2 } }',
                 (1, 2, 5, 7))
    x = rand(1, 2, 4, 6)
    np.testing.assert_allclose(net(x0=x)["y"].detach().numpy(), interp_ref(x.numpy(), 7, 11), **TOL)


# ================================================================================================== Dropout

def dropout(extra: str, phase: str) -> Net:
    return single(f'layer {{ name: "d" type: "Dropout" bottom: "x0" top: "y" dropout_param {{ dropout_ratio: 0.25 '
                  f'{extra} }} }}', (4000,), phase=phase)


def test_dropout_scale_train_false_faster_rcnn():
    x = rand(4000).abs() + 1
    np.testing.assert_allclose(dropout("scale_train: false", "TEST")(x0=x)["y"].detach().numpy(), x.numpy() * 0.75,
                               **TOL)
    torch.manual_seed(0)
    xv = x.clone().requires_grad_(True)
    y = dropout("scale_train: false", "TRAIN")(x0=xv)["y"]
    kept = y.detach() != 0
    np.testing.assert_array_equal(y.detach()[kept].numpy(), x[kept].numpy())   # unscaled mask
    assert abs(1 - kept.double().mean().item() - 0.25) < 0.03
    y.sum().backward()
    np.testing.assert_array_equal(xv.grad.numpy(), kept.double().numpy())


def test_dropout_sample_weights_test_segnet():
    x = rand(4000).abs() + 1
    net = dropout("sample_weights_test: true", "TEST")
    assert net.dialect == "segnet"
    torch.manual_seed(0)
    xv = x.clone().requires_grad_(True)
    y = net(x0=xv)["y"]
    kept = y.detach() != 0
    np.testing.assert_allclose(y.detach()[kept].numpy(), x[kept].numpy() / 0.75, **TOL)
    assert abs(1 - kept.double().mean().item() - 0.25) < 0.03
    assert not torch.equal(net(x0=x)["y"], y.detach())   # a new mask each forward (Monte-Carlo dropout)
    y.sum().backward()
    np.testing.assert_allclose(xv.grad.numpy(), kept.double().numpy() / 0.75, **TOL)
    np.testing.assert_array_equal(dropout("", "TEST")(x0=x)["y"].detach().numpy(), x.numpy())


# ================================================================================================== weighted loss

WEIGHTS = (0.5, 2.0, 1.0, 3.0)


def weighted_loss_net(extra: str = "") -> Net:
    weighting = " ".join(f"class_weighting: {w}" for w in WEIGHTS)
    return single(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "x0" bottom: "x1" top: "loss" '
                  f'loss_param {{ weight_by_label_freqs: true {weighting} {extra} }} }}', (2, 4, 3, 5), (2, 1, 3, 5))


@pytest.mark.parametrize("extra", ["", "ignore_label: 2", "normalize: false"])
def test_softmax_loss_class_weighting(extra):
    net = weighted_loss_net(extra)
    assert net.dialect == "segnet"
    x = rand(2, 4, 3, 5) * 2
    label = torch.randint(0, 4, (2, 1, 3, 5), generator=torch.Generator().manual_seed(1)).double()
    xv = x.clone().requires_grad_(True)
    loss = net(x0=xv, x1=label)["loss"]
    p = torch.softmax(x, 1).numpy()
    lab = label.numpy().astype(int)[:, 0]
    valid = lab != 2 if "ignore" in extra else np.ones_like(lab, bool)
    w = np.array(WEIGHTS)[lab] * valid
    nll = -np.log(np.take_along_axis(p, lab[:, None], 1)[:, 0])
    norm = 2 if "normalize" in extra else valid.sum()   # SegNet: count of counted pixels, or outer_num
    np.testing.assert_allclose(loss.item(), (w * nll).sum() / norm, **TOL)
    loss.backward()
    onehot = np.eye(4)[lab].transpose(0, 3, 1, 2)
    # SegNet softmax_loss_layer.cpp Backward_cpu: (p − onehot)·w[label] / normaliser, ignored pixels 0
    np.testing.assert_allclose(xv.grad.numpy(), (p - onehot) * w[:, None] / norm, **TOL)


def test_softmax_loss_class_weighting_errors_and_ignored_without_flag():
    with pytest.raises(NetError, match="needs one class_weighting value per class .4., got 2"):
        single('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x0" bottom: "x1" top: "loss" loss_param { '
               'weight_by_label_freqs: true class_weighting: 1 class_weighting: 2 } }', (2, 4), (2,))
    net = single('layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x0" bottom: "x1" top: "loss" loss_param { '
                 'class_weighting: 5 } }', (2, 4), (2,))
    x, label = rand(2, 4), torch.tensor([1.0, 3.0])
    want = -torch.log_softmax(x, 1)[[0, 1], [1, 3]].mean()
    np.testing.assert_allclose(net(x0=x, x1=label)["loss"].item(), want.item(), **TOL)


# ================================================================================================== published nets

def net_weights(net_param: caffe_pb2.NetParameter, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Random weights for every layer with blobs (shapes from vggproto's meta build): He-scaled filters, BN
    scales in [0.5, 1.5], positive running variances, PReLU slopes in [0, 0.5]."""
    from vggproto.net.shapes import net_param_shapes
    rng = np.random.default_rng(seed)
    types = {layer.name: layer.type for layer in net_param.layer}
    out = {}
    for name, shapes in net_param_shapes(net_param)[1].items():
        if types[name] == "BN":
            blobs = [rng.uniform(0.5, 1.5, shapes[0]), rng.normal(0, 0.1, shapes[1])]
            if len(shapes) == 4:
                blobs += [rng.normal(0, 0.1, shapes[2]), rng.uniform(0.5, 1.5, shapes[3])]
        elif types[name] == "PReLU":
            blobs = [rng.uniform(0, 0.5, shapes[0])]
        else:
            fan_in = int(np.prod(shapes[0][1:]))
            blobs = [rng.standard_normal(shapes[0]) * np.sqrt(2.0 / fan_in)]
            blobs += [rng.normal(0, 0.1, s) for s in shapes[1:]]
        out[name] = [b.astype(np.float32) for b in blobs]
    return out


def _geometry(cp: caffe_pb2.ConvolutionParameter) -> dict:
    kernel = (cp.kernel_h, cp.kernel_w) if cp.HasField("kernel_h") else (cp.kernel_size[0],) * 2
    return dict(kernel=kernel, stride=cp.stride[0] if cp.stride else 1, padding=cp.pad[0] if cp.pad else 0,
                dilation=cp.dilation[0] if cp.dilation else 1, groups=cp.group)


def reference_layer(layer: caffe_pb2.LayerParameter, x: list[torch.Tensor], w: list[torch.Tensor]) -> list:
    """One layer of the published nets in torch.nn.functional / the forks' formulas, float64."""
    t = layer.type
    if t in ("Convolution", "Deconvolution"):
        g = _geometry(layer.convolution_param)
        bias = w[1] if layer.convolution_param.bias_term else None
        fn = F.conv2d if t == "Convolution" else F.conv_transpose2d
        return [fn(x[0], w[0], bias, g["stride"], g["padding"], dilation=g["dilation"], groups=g["groups"])]
    if t == "BN" and len(w) == 4:   # PSPNet, frozen: running statistics
        return [w[0] * (x[0] - w[2]) / torch.sqrt(w[3] + float(np.float32(layer.bn_param.eps))) + w[1]]
    if t == "BN":                   # SegNet / ENet INFERENCE
        assert layer.bn_param.bn_mode == caffe_pb2.BNParameter.INFERENCE
        return [x[0] * w[0] + w[1]]
    if t == "Pooling":
        p = layer.pooling_param
        args = (x[0], p.kernel_size, p.stride, p.pad)
        if p.pool == caffe_pb2.PoolingParameter.AVE:
            return [F.avg_pool2d(*args, ceil_mode=True)]
        y, index = F.max_pool2d(*args, ceil_mode=True, return_indices=True)   # torch: same rounding rule
        return [y, index.double()][:len(layer.top)]
    if t == "Upsample":
        p = layer.upsample_param
        n, c, h, w_ = x[0].shape
        size = (p.upsample_h, p.upsample_w) if p.HasField("upsample_h") else (2 * h, 2 * w_)
        return [F.max_unpool2d(x[0], x[1].long(), 2, output_size=size)]
    if t == "Interp":
        p = layer.interp_param
        h, w_ = x[0].shape[2:]
        size = (p.height, p.width) if p.HasField("height") else (h + (h - 1) * (p.zoom_factor - 1),
                                                                 w_ + (w_ - 1) * (p.zoom_factor - 1))
        return [F.interpolate(x[0], size=size, mode="bilinear", align_corners=True)]
    simple = {"ReLU": lambda: torch.relu(x[0]), "Concat": lambda: torch.cat(x, 1), "Eltwise": lambda: sum(x),
              "PReLU": lambda: torch.where(x[0] > 0, x[0], x[0] * w[0].view(1, -1, 1, 1)),
              "Power": lambda: x[0] * layer.power_param.scale, "Dropout": lambda: x[0],
              "Softmax": lambda: torch.softmax(x[0], 1)}
    return [simple[t]()]


def reference_forward(net_param: caffe_pb2.NetParameter, weights: dict, data: np.ndarray) -> dict:
    blobs = {}
    for layer in net_param.layer:
        if layer.type == "Input":
            blobs[layer.top[0]] = torch.as_tensor(data, dtype=torch.float64)
            continue
        w = [torch.as_tensor(b, dtype=torch.float64) for b in weights.get(layer.name, [])]
        blobs.update(zip(layer.top, reference_layer(layer, [blobs[b] for b in layer.bottom], w)))
    return blobs


NETS = [  # (file, dialect of the fork, input shape, output blob, output shape)
    ("segnet_inference.prototxt", "segnet", (1, 3, 36, 44), "prob", (1, 11, 36, 44)),
    ("enet_deploy.prototxt", "enet", (1, 3, 48, 96), "deconv6_0_0", (1, 5, 48, 96)),
    ("pspnet_deploy.prototxt", "pspnet", (1, 3, 89, 89), "conv6_interp", (1, 7, 89, 89)),
]


def build(tmp_path: Path, name: str, dialect: str) -> tuple[Net, dict]:
    """The published net with random weights written by vggproto in the fork's own wire numbering."""
    net_param = read_net(str(FORKS / name), dialect=dialect)
    weights = net_weights(net_param)
    model = tmp_path / "weights.caffemodel"
    write_weights(str(model), weights, net_param, dialect=dialect)
    return Net(str(FORKS / name), str(model), dialect=dialect), weights


def max_relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got.double() - want).abs().max().item() / max(1.0, want.abs().max().item())


@pytest.mark.parametrize("name, dialect, shape, output, out_shape", NETS)
def test_published_net_layer_by_layer(tmp_path, name, dialect, shape, output, out_shape):
    net, weights = build(tmp_path, name, dialect)
    assert net.dialect == dialect
    data = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        out = net.forward(data=data)
    assert tuple(out[output].shape) == out_shape and list(out) == [output]
    ref = reference_forward(net.net_param, weights, data)
    assert set(ref) == set(net.blobs)
    worst = {blob: max_relative(net.blobs[blob], ref[blob]) for blob in ref}
    assert max(worst.values()) < 2e-5, sorted(worst.items(), key=lambda kv: -kv[1])[:5]
    for blob in (b for b in ref if b.endswith("_mask")):
        np.testing.assert_array_equal(net.blobs[blob].numpy(), ref[blob].numpy())


def opencv_twin(net_param: caffe_pb2.NetParameter, weights: dict) -> tuple[caffe_pb2.NetParameter, dict]:
    """The PSPNet net with each BN as BatchNorm (global statistics) + Scale (bias), which OpenCV runs."""
    twin = caffe_pb2.NetParameter()
    twin.CopyFrom(net_param)
    del twin.layer[:]
    blobs = {}
    for layer in net_param.layer:
        if layer.type != "BN":
            twin.layer.add().CopyFrom(layer)
            blobs.update({layer.name: weights[layer.name]} if layer.name in weights else {})
            continue
        slope, bias, mean, var = (b.reshape(-1) for b in weights[layer.name])
        norm = twin.layer.add(name=layer.name, type="BatchNorm", bottom=layer.bottom, top=layer.top)
        norm.batch_norm_param.use_global_stats = True
        norm.batch_norm_param.eps = layer.bn_param.eps
        scale = twin.layer.add(name=layer.name + "/scale", type="Scale", bottom=layer.top, top=layer.top)
        scale.scale_param.bias_term = True
        blobs[norm.name] = [mean, var, np.ones(1, np.float32)]
        blobs[scale.name] = [slope, bias]
    return twin, blobs


def test_pspnet_matches_opencv(tmp_path):
    cv2 = pytest.importorskip("cv2")
    net, weights = build(tmp_path, "pspnet_deploy.prototxt", "pspnet")
    twin, twin_weights = opencv_twin(read_net(str(FORKS / "pspnet_deploy.prototxt")), weights)
    write_net(twin, str(tmp_path / "twin.prototxt"))
    write_weights(str(tmp_path / "twin.caffemodel"), twin_weights)   # name + blobs only: OpenCV matches names
    reference = cv2.dnn.readNetFromCaffe(str(tmp_path / "twin.prototxt"), str(tmp_path / "twin.caffemodel"))
    data = np.random.default_rng(2).standard_normal((1, 3, 89, 89)).astype(np.float32)
    reference.setInput(data)
    names = ["conv5_1_concat", "conv6", "conv6_interp"]
    wanted = dict(zip(names, reference.forward(names)))
    with torch.no_grad():
        net.forward(data=data)
    for blob in names:
        assert tuple(net.blobs[blob].shape) == wanted[blob].shape
        assert max_relative(net.blobs[blob], torch.as_tensor(wanted[blob], dtype=torch.float64)) < 2e-5, blob
