"""Core layers in float64 against independent references: hand-written Caffe loops (pooling, LRN), closed-form
formulas and torch.nn.functional; finite-difference gradient checks; construction errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vggproto.errors import NetError
from vggproto.net.interpreter import Net

TOL = dict(rtol=1e-10, atol=1e-12)


def single(layer: str, *shapes, phase: str = "TEST", seed: int = 0, tops: int = 1) -> Net:
    """A float64 net: one Input layer (bottoms x0, x1, ...) and ``layer`` (whose text uses those names)."""
    text = "force_backward: true\n"
    for i, shape in enumerate(shapes):
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "in{i}" type: "Input" top: "x{i}" input_param {{ shape {{ {dims} }} }} }}\n'
    return Net(text + layer, phase=phase, seed=seed).double()


def rand(*shape, seed=0, low=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.abs() + low if low is not None else x


def run(net: Net, *xs) -> torch.Tensor:
    out = net(**{f"x{i}": x for i, x in enumerate(xs)})
    return next(iter(out.values()))


def gradcheck(net: Net, *xs) -> None:
    xs = [x.clone().requires_grad_(True) for x in xs]

    def fn(*args):
        out = net(**{f"x{i}": a for i, a in enumerate(args)})
        return tuple(v for v in out.values() if v.requires_grad)   # the MAX mask top has no gradient
    assert torch.autograd.gradcheck(fn, xs, eps=1e-6, atol=1e-5, fast_mode=True)


# ------------------------------------------------------------------------------------------ reference loops

def caffe_pool_ref(x: np.ndarray, method: str, k, s, p, ceil=True):
    """Caffe: pooling_layer.cpp Forward_cpu, written as the plain loops."""
    n, c, h, w = x.shape
    out = []
    for size, kk, ss, pp in ((h, k[0], s[0], p[0]), (w, k[1], s[1], p[1])):
        span = (size + 2 * pp - kk) / ss
        o = (math.ceil(span) if ceil else math.floor(span)) + 1
        if (p[0] or p[1]) and (o - 1) * ss >= size + pp:
            o -= 1
        out.append(o)
    y = np.zeros((n, c, *out))
    mask = np.zeros((n, c, *out))
    for ph in range(out[0]):
        for pw in range(out[1]):
            hs, ws = ph * s[0] - p[0], pw * s[1] - p[1]
            he, we = min(hs + k[0], h + p[0]), min(ws + k[1], w + p[1])
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            if method == "MAX":
                y[:, :, ph, pw] = win.max(-1)
                arg = win.argmax(-1)
                mask[:, :, ph, pw] = (hs + arg // (we - ws)) * w + ws + arg % (we - ws)
            elif method == "AVE":
                y[:, :, ph, pw] = win.sum(-1) / size
            else:   # STOCHASTIC, TEST
                y[:, :, ph, pw] = (win ** 2).sum(-1) / (win.sum(-1) + 1.1754943508222875e-38)
    return y, mask


POOL_CASES = [  # (H, W, kernel, stride, pad, round_mode)
    ((7, 9), (2, 2), (2, 2), (0, 0), "CEIL"),
    ((10, 10), (3, 3), (2, 2), (0, 0), "CEIL"),
    ((5, 7), (2, 2), (2, 2), (1, 1), "CEIL"),
    ((8, 8), (3, 3), (2, 2), (1, 1), "FLOOR"),
    ((9, 13), (3, 5), (2, 3), (1, 2), "CEIL"),
    ((11, 6), (3, 2), (3, 1), (0, 1), "FLOOR"),
    ((6, 6), (3, 3), (3, 3), (2, 2), "CEIL"),
]


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("size,kernel,stride,pad,mode", POOL_CASES)
def test_pooling_matches_caffe_loops(method, size, kernel, stride, pad, mode):
    mask_top = 'top: "m"' if method == "MAX" else ""
    layer = (f'layer {{ name: "p" type: "Pooling" bottom: "x0" top: "y" {mask_top} '
             f'pooling_param {{ pool: {method} kernel_h: {kernel[0]} kernel_w: {kernel[1]} stride_h: {stride[0]} '
             f'stride_w: {stride[1]} pad_h: {pad[0]} pad_w: {pad[1]} round_mode: {mode} }} }}')
    net = single(layer, (2, 3, *size))
    x = rand(2, 3, *size)
    net(x0=x)
    ref, mask = caffe_pool_ref(x.numpy(), method, kernel, stride, pad, mode == "CEIL")
    assert net.blob_shapes["y"] == ref.shape
    np.testing.assert_allclose(net.blobs["y"].numpy(), ref, **TOL)
    if method == "MAX":
        np.testing.assert_array_equal(net.blobs["m"].numpy(), mask)
    gradcheck(net, x)


def test_pooling_ceil_vs_floor_and_pad_clip_shapes():
    # 7x9, k2 s2: Caffe CEIL -> 4x5 (torch's default floor would give 3x4)
    assert single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { kernel_size: 2 '
                  'stride: 2 } }', (1, 1, 7, 9)).blob_shapes["y"] == (1, 1, 4, 5)
    assert single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { kernel_size: 2 '
                  'stride: 2 round_mode: FLOOR } }', (1, 1, 7, 9)).blob_shapes["y"] == (1, 1, 3, 4)
    # pad 1 on 5x7: ceil gives 4x5, the clip rule (pad > 0 only) drops the last window -> 3x4
    assert single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: AVE '
                  'kernel_size: 2 stride: 2 pad: 1 } }', (1, 1, 5, 7)).blob_shapes["y"] == (1, 1, 3, 4)


def test_pooling_agrees_with_torch_where_semantics_coincide():
    x = rand(2, 3, 10, 10)
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: AVE '
                 'kernel_size: 3 stride: 2 } }', (2, 3, 10, 10))
    torch.testing.assert_close(run(net, x), F.avg_pool2d(x, 3, 2, ceil_mode=True, count_include_pad=True))
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: MAX '
                 'kernel_size: 2 stride: 2 } }', (2, 3, 8, 8))
    x = rand(2, 3, 8, 8)
    torch.testing.assert_close(run(net, x), F.max_pool2d(x, 2, 2))


def test_global_and_stochastic_test_pooling():
    x = rand(2, 3, 7, 9, low=0.1)
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: AVE '
                 'global_pooling: true } }', (2, 3, 7, 9))
    torch.testing.assert_close(run(net, x), x.mean(dim=(2, 3), keepdim=True))
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: STOCHASTIC '
                 'kernel_size: 3 stride: 2 } }', (2, 3, 7, 9))
    ref, _ = caffe_pool_ref(x.numpy(), "STO", (3, 3), (2, 2), (0, 0))
    np.testing.assert_allclose(run(net, x).numpy(), ref, **TOL)


def test_stochastic_train_picks_window_elements():
    x = rand(1, 2, 6, 6, low=0.1)
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: STOCHASTIC '
                 'kernel_size: 2 stride: 2 } }', (1, 2, 6, 6), phase="TRAIN")
    y = run(net, x)
    windows = x.unfold(2, 2, 2).unfold(3, 2, 2).reshape(1, 2, 3, 3, 4)
    assert ((windows == y.unsqueeze(-1)).any(-1)).all()


def test_spp_levels():
    x = rand(2, 3, 7, 9)
    net = single('layer { name: "s" type: "SPP" bottom: "x0" top: "y" spp_param { pyramid_height: 3 } }',
                 (2, 3, 7, 9))
    y = run(net, x)
    assert y.shape == (2, 3 * (1 + 4 + 16)) == net.blob_shapes["y"]
    torch.testing.assert_close(y[:, :3], x.amax(dim=(2, 3)))
    # level 1: 2x2 bins of kernel (4, 5), pad (1, 1)? Caffe: pad = (k*bins - H + 1) // 2 -> (1, 1)
    ref, _ = caffe_pool_ref(x.numpy(), "MAX", (4, 5), (4, 5), (1, 1))
    np.testing.assert_allclose(y[:, 3:15].numpy(), ref.reshape(2, -1), **TOL)
    gradcheck(net, x)


# ------------------------------------------------------------------------------------------ convolution / IP

@pytest.mark.parametrize("params,shape", [
    ("num_output: 4 kernel_size: 3 stride: 2 pad: 1", (2, 3, 9, 8)),
    ("num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 stride_h: 1 stride_w: 2 group: 2", (1, 4, 6, 7)),
    ("num_output: 2 kernel_size: 3 dilation: 2 bias_term: false", (1, 3, 9, 9)),
    ("num_output: 2 kernel_size: 2 kernel_size: 3 stride: 1 stride: 2 pad: 0 pad: 1", (1, 2, 5, 6)),
])
def test_convolution_matches_torch(params, shape):
    net = single(f'layer {{ name: "c" type: "Convolution" bottom: "x0" top: "y" convolution_param {{ {params} '
                 f'weight_filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }} }} }}', shape)
    p = net.layer_dict["c"]
    x = rand(*shape)
    ref = F.conv2d(x, p.blobs[0], p.blobs[1] if len(p.blobs) > 1 else None, p.stride, p.pad, p.dilation, p.group)
    y = run(net, x)
    torch.testing.assert_close(y, ref)
    assert tuple(y.shape) == net.blob_shapes["y"]
    for axis, size in enumerate(shape[2:]):   # Caffe's output size formula
        ext = p.dilation[axis] * (p.kernel[axis] - 1) + 1
        assert y.shape[2 + axis] == (size + 2 * p.pad[axis] - ext) // p.stride[axis] + 1
    gradcheck(net, x)


def test_convolution_nd_and_axis():
    x = rand(2, 3, 5, 4, 6)
    net = single('layer { name: "c" type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 2 '
                 'kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }', tuple(x.shape))
    torch.testing.assert_close(run(net, x), F.conv3d(x, net.params["c"][0], net.params["c"][1], padding=1))
    x = rand(2, 4, 3, 9)   # axis 2: (2*4) images of 3 channels, 1-D convolution over the last axis
    net = single('layer { name: "c" type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 5 '
                 'kernel_size: 3 axis: 2 weight_filler { type: "xavier" } } }', tuple(x.shape))
    ref = F.conv1d(x.reshape(8, 3, 9), net.params["c"][0], net.params["c"][1]).reshape(2, 4, 5, 7)
    torch.testing.assert_close(run(net, x), ref)


def test_deconvolution_matches_torch():
    x = rand(2, 4, 5, 7)
    net = single('layer { name: "d" type: "Deconvolution" bottom: "x0" top: "y" convolution_param { num_output: 6 '
                 'kernel_size: 3 stride: 2 pad: 1 group: 2 weight_filler { type: "gaussian" } '
                 'bias_filler { type: "gaussian" } } }', (2, 4, 5, 7))
    w, b = net.params["d"]
    assert tuple(w.shape) == (4, 3, 3, 3)
    y = run(net, x)
    torch.testing.assert_close(y, F.conv_transpose2d(x, w, b, stride=2, padding=1, groups=2))
    assert tuple(y.shape) == (2, 6, 2 * 4 + 3 - 2, 2 * 6 + 3 - 2) == net.blob_shapes["y"]
    gradcheck(net, x)


@pytest.mark.parametrize("axis,transpose", [(1, False), (2, False), (1, True), (-1, True)])
def test_inner_product(axis, transpose):
    x = rand(2, 3, 4, 5)
    net = single(f'layer {{ name: "ip" type: "InnerProduct" bottom: "x0" top: "y" inner_product_param {{ '
                 f'num_output: 6 axis: {axis} transpose: {str(transpose).lower()} weight_filler {{ type: "gaussian" }}'
                 f' bias_filler {{ type: "gaussian" }} }} }}', (2, 3, 4, 5))
    w, b = net.params["ip"]
    a = axis % 4
    flat = x.reshape(*x.shape[:a], -1)
    ref = (flat @ w if transpose else flat @ w.t()) + b
    torch.testing.assert_close(run(net, x), ref)
    assert tuple(w.shape) == ((flat.shape[-1], 6) if transpose else (6, flat.shape[-1]))
    gradcheck(net, x)


# ------------------------------------------------------------------------------------------ neurons

NEURONS = [
    ("ReLU", "", lambda x: x.clamp(min=0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: torch.where(x > 0, x, 0.1 * x)),
    ("ELU", "elu_param { alpha: 0.5 }", lambda x: torch.where(x > 0, x, 0.5 * (torch.exp(x) - 1))),
    ("Sigmoid", "", lambda x: 1 / (1 + torch.exp(-x))),
    ("TanH", "", lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1)),
    ("AbsVal", "", lambda x: x.abs()),
    ("BNLL", "", lambda x: torch.log(1 + torch.exp(x))),
    ("Power", "power_param { power: 3 scale: 0.5 shift: 1 }", lambda x: (1 + 0.5 * x) ** 3),
    ("Exp", "", lambda x: torch.exp(x)),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 0.1 }", lambda x: 2 ** (0.1 + 0.5 * x)),
    ("Log", "log_param { base: 10 scale: 2 shift: 9 }", lambda x: torch.log10(9 + 2 * x)),
    ("Log", "log_param { shift: 5 }", lambda x: torch.log(5 + x)),
    ("Clip", "clip_param { min: -0.5 max: 0.7 }", lambda x: x.clamp(-0.5, 0.7)),
    ("Swish", "swish_param { beta: 1.5 }", lambda x: x / (1 + torch.exp(-1.5 * x))),
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", lambda x: x),
]


@pytest.mark.parametrize("kind,params,formula", NEURONS)
def test_neuron_formulas_and_gradients(kind, params, formula):
    net = single(f'layer {{ name: "n" type: "{kind}" bottom: "x0" top: "x0" {params} }}', (2, 3, 5, 7))
    x = rand(2, 3, 5, 7, seed=1)
    torch.testing.assert_close(run(net, x), formula(x))
    gradcheck(net, x)


def test_threshold_and_prelu():
    x = rand(2, 3, 4, 5)
    net = single('layer { name: "t" type: "Threshold" bottom: "x0" top: "y" threshold_param { threshold: 0.2 } }',
                 (2, 3, 4, 5))
    torch.testing.assert_close(run(net, x), (x > 0.2).double())
    net = single('layer { name: "p" type: "PReLU" bottom: "x0" top: "y" }', (2, 3, 4, 5))
    assert net.params["p"][0].tolist() == [0.25] * 3   # Caffe's default filler
    with torch.no_grad():
        net.params["p"][0].copy_(torch.tensor([0.1, -0.2, 0.3]))
    torch.testing.assert_close(run(net, x), torch.where(x > 0, x, x * torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)))
    gradcheck(net, x)
    net = single('layer { name: "p" type: "PReLU" bottom: "x0" top: "y" prelu_param { channel_shared: true } }',
                 (2, 3, 4, 5))
    assert tuple(net.params["p"][0].shape) == ()
    torch.testing.assert_close(run(net, x), torch.where(x > 0, x, 0.25 * x))


def test_dropout_train_is_inverted_and_test_identity():
    x = torch.ones(4, 1000, dtype=torch.float64)
    net = single('layer { name: "d" type: "Dropout" bottom: "x0" top: "x0" dropout_param { dropout_ratio: 0.25 } }',
                 (4, 1000), phase="TRAIN")
    torch.manual_seed(0)
    y = run(net, x)
    values = set(np.unique(y.numpy()).tolist())
    assert values == {0.0, 1 / 0.75}
    assert abs((y == 0).double().mean().item() - 0.25) < 0.03
    test_net = single('layer { name: "d" type: "Dropout" bottom: "x0" top: "x0" }', (4, 1000))
    assert torch.equal(run(test_net, x), x)


# ------------------------------------------------------------------------------------------ LRN / BN / Scale / Bias

def test_lrn_across_channels_matches_torch_and_formula():
    x = rand(2, 7, 4, 5)
    net = single('layer { name: "l" type: "LRN" bottom: "x0" top: "y" lrn_param { local_size: 5 alpha: 0.3 '
                 'beta: 0.75 k: 2 } }', (2, 7, 4, 5))
    y = run(net, x)
    torch.testing.assert_close(y, F.local_response_norm(x, 5, alpha=0.3, beta=0.75, k=2))
    c = 3
    window = (x[:, c - 2:c + 3] ** 2).sum(1)
    torch.testing.assert_close(y[:, c], x[:, c] * (2 + 0.3 / 5 * window) ** -0.75)
    gradcheck(net, x)


def test_lrn_within_channel_formula():
    x = rand(2, 3, 5, 6)
    net = single('layer { name: "l" type: "LRN" bottom: "x0" top: "y" lrn_param { local_size: 3 alpha: 0.9 '
                 'beta: 0.75 k: 5 norm_region: WITHIN_CHANNEL } }', (2, 3, 5, 6))
    padded = F.pad(x ** 2, (1, 1, 1, 1))
    ref = torch.empty_like(x)
    for h in range(5):
        for w in range(6):   # k is ignored; the sum is always divided by n² = 9
            s = padded[:, :, h:h + 3, w:w + 3].sum(dim=(2, 3))
            ref[:, :, h, w] = x[:, :, h, w] * (1 + 0.9 * s / 9) ** -0.75
    torch.testing.assert_close(run(net, x), ref)
    gradcheck(net, x)


def test_batchnorm_global_stats_and_train_update():
    x = rand(4, 3, 2, 5)
    net = single('layer { name: "bn" type: "BatchNorm" bottom: "x0" top: "y" batch_norm_param { eps: 0.01 } }',
                 (4, 3, 2, 5))
    with torch.no_grad():
        for blob, value in zip(net.params["bn"], ([3.0, -1.5, 0.3], [6.0, 1.5, 0.9], [3.0])):
            blob.copy_(torch.tensor(value))
    mean, var = torch.tensor([1.0, -0.5, 0.1]), torch.tensor([2.0, 0.5, 0.3])
    torch.testing.assert_close(run(net, x), F.batch_norm(x, mean.double(), var.double(), eps=0.01))
    train = single('layer { name: "bn" type: "BatchNorm" bottom: "x0" top: "y" batch_norm_param { '
                   'moving_average_fraction: 0.9 } }', (4, 3, 2, 5), phase="TRAIN")
    y = run(train, x)
    torch.testing.assert_close(y, F.batch_norm(x, None, None, training=True, eps=1e-5))
    m = 4 * 2 * 5
    b0, b1, b2 = (b.detach() for b in train.params["bn"])
    torch.testing.assert_close(b2, torch.tensor([1.0], dtype=torch.float64))
    torch.testing.assert_close(b0, x.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(b1, x.var(dim=(0, 2, 3), unbiased=False) * m / (m - 1))
    assert all(not p.requires_grad for p in train.params["bn"])
    assert [lp.lr_mult for lp in train.learnable_params] == [0.0, 0.0, 0.0]
    with pytest.raises(NetError, match="param 0 must have lr_mult 0, got 1"):
        single('layer { name: "bn" type: "BatchNorm" bottom: "x0" top: "y" param { lr_mult: 1 } }', (4, 3))


def test_scale_and_bias_variants():
    x, s = rand(2, 3, 4, 5), rand(3, 4, seed=3)
    net = single('layer { name: "sc" type: "Scale" bottom: "x0" top: "y" scale_param { num_axes: 2 '
                 'bias_term: true bias_filler { type: "gaussian" } } }', (2, 3, 4, 5))
    scale, bias = net.params["sc"]
    assert scale.tolist() == [[1.0] * 4] * 3   # Caffe's default: identity
    with torch.no_grad():
        scale.copy_(s)
    torch.testing.assert_close(run(net, x), x * s.view(1, 3, 4, 1) + bias.view(1, 3, 4, 1))
    gradcheck(net, x)
    net = single('layer { name: "sc" type: "Scale" bottom: "x0" bottom: "x1" top: "y" scale_param { axis: 0 } }',
                 (2, 3, 4, 5), (2, 3))
    torch.testing.assert_close(run(net, x, s[:2, :3]), x * s[:2, :3].view(2, 3, 1, 1))
    gradcheck(net, x, s[:2, :3])
    net = single('layer { name: "b" type: "Bias" bottom: "x0" bottom: "x1" top: "y" bias_param { axis: 2 } }',
                 (2, 3, 4, 5), (4, 5))
    torch.testing.assert_close(run(net, x, s[:, :].repeat(2, 2)[:4, :5]), x + s.repeat(2, 2)[:4, :5])
    net = single('layer { name: "b" type: "Bias" bottom: "x0" top: "y" bias_param { num_axes: -1 '
                 'filler { type: "constant" value: 0.5 } } }', (2, 3, 4, 5))
    assert tuple(net.params["b"][0].shape) == (3, 4, 5)
    torch.testing.assert_close(run(net, x), x + 0.5)


# ------------------------------------------------------------------------------------------ sources

def test_dummy_memory_parameter_layers():
    net = Net('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
              'data_filler { type: "constant" value: 2 } data_filler { type: "gaussian" std: 3 } '
              'shape { dim: 2 dim: 3 } shape { dim: 4000 } } }')
    out = net()
    assert torch.equal(out["a"], torch.full((2, 3), 2.0))
    assert out["b"].shape == (4000,) and 2.7 < out["b"].std().item() < 3.3
    assert all(t.dtype == torch.float64 for t in net.double()().values())   # follows the net's dtype
    legacy = Net('layer { name: "d" type: "DummyData" top: "a" dummy_data_param { num: 2 channels: 3 height: 4 '
                 'width: 5 } }')
    assert legacy.blob_shapes["a"] == (2, 3, 4, 5)
    mem = Net('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 '
              'channels: 1 height: 2 width: 2 } }')
    out = mem(data=np.ones((2, 1, 2, 2)), label=np.array([3, 4]))
    assert out["label"].tolist() == [3.0, 4.0] and mem.blob_shapes["data"] == (2, 1, 2, 2)
    par = Net('layer { name: "p" type: "Parameter" top: "w" parameter_param { shape { dim: 3 dim: 2 } } }')
    assert par()["w"].shape == (3, 2) and len(par.learnable_params) == 1


def test_memory_data_set_input_arrays_walks_batches_and_wraps():
    """Caffe's MemoryDataLayer::Reset + Forward_cpu (pycaffe set_input_arrays): batch_size rows per forward,
    position wraps around N; feeding tops explicitly still works; N must be a multiple of batch_size."""
    mem = Net('layer { name: "m" type: "MemoryData" top: "data" top: "label" memory_data_param { batch_size: 2 '
              'channels: 1 height: 2 width: 2 } }')
    images = np.arange(6 * 4, dtype=np.float32).reshape(6, 1, 2, 2)
    mem.set_input_arrays(images, np.array([10, 11, 12, 13, 14, 15]))
    seen = [mem()["label"].tolist() for _ in range(4)]
    assert seen == [[10, 11], [12, 13], [14, 15], [10, 11]]
    assert torch.equal(mem.blobs["data"], torch.from_numpy(images[:2]))
    assert mem(data=np.zeros((2, 1, 2, 2)), label=np.array([7, 8]))["label"].tolist() == [7, 8]
    assert mem()["label"].tolist() == [12, 13]                    # the explicit feed did not move the position
    with pytest.raises(NetError, match="positive multiple of memory_data_param.batch_size"):
        mem.set_input_arrays(images[:5], np.arange(5))
    with pytest.raises(NetError, match=r"shape \(N, 1, 2, 2\)"):
        mem.set_input_arrays(np.zeros((2, 3, 2, 2)), np.arange(2))
    with pytest.raises(NetError, match="2 images but 3 labels"):
        mem.set_input_arrays(images[:2], np.arange(3))
    with pytest.raises(NetError, match="needs a MemoryData layer named 'x'; this net has: m"):
        mem.set_input_arrays(images, np.arange(6), layer="x")


@pytest.mark.parametrize("layer,message", [
    ('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { kernel_size: 2 pad: 2 } }',
     "must be smaller than the kernel"),
    ('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { global_pooling: true '
     'kernel_size: 2 } }', "kernel size cannot be specified"),
    ('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" pooling_param { pool: STOCHASTIC kernel_size: 3 '
     'pad: 1 } }', "only for MAX and AVE"),
    ('layer { name: "l" type: "LRN" bottom: "x0" top: "y" lrn_param { local_size: 4 } }', "must be odd"),
    ('layer { name: "c" type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 4 '
     'kernel_size: 3 group: 2 } }', "group 2 must divide"),
    ('layer { name: "c" type: "Convolution" bottom: "x0" top: "y" convolution_param { num_output: 4 } }',
     "kernel_size"),
    ('layer { name: "c" type: "InnerProduct" bottom: "x0" top: "y" inner_product_param { num_output: 4 '
     'weight_filler { type: "nonsense" } } }', "unknown filler type 'nonsense'"),
])
def test_layer_errors_are_located(layer, message):
    with pytest.raises(NetError) as info:
        single(layer, (1, 3, 6, 6))
    assert message in str(info.value)
    assert str(info.value).startswith("<text>:3: layer '")


def test_convolution_with_several_bottoms_shares_its_weights():
    a, b = rand(1, 2, 5, 5), rand(1, 2, 5, 5, seed=4)
    net = single('layer { name: "c" type: "Convolution" bottom: "x0" bottom: "x1" top: "ya" top: "yb" '
                 'convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" } } }',
                 (1, 2, 5, 5), (1, 2, 5, 5))
    out = net(x0=a, x1=b)
    w, bias = net.params["c"]
    torch.testing.assert_close(out["ya"], F.conv2d(a, w, bias))
    torch.testing.assert_close(out["yb"], F.conv2d(b, w, bias))


def test_max_pooling_ties_go_to_the_first_cell_like_caffe():
    # After a ReLU whole windows are 0; Caffe's strict '>' keeps the first cell in row-major order
    net = single('layer { name: "p" type: "Pooling" bottom: "x0" top: "y" top: "m" pooling_param { kernel_size: 2 '
                 'stride: 2 } }', (1, 1, 4, 4))
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    out = net(x0=x)
    assert out["m"].flatten().tolist() == [0.0, 2.0, 8.0, 10.0]
    out["y"].sum().backward()
    expected = torch.zeros(4, 4, dtype=torch.float64)
    expected[::2, ::2] = 1
    assert torch.equal(x.grad[0, 0], expected)


def test_lrn_across_channels_with_fewer_channels_than_local_size():
    """Caffe pads the channel window with zeros, so C < local_size is legal (it was a crash here once)."""
    import torch

    from vggproto.net.interpreter import Net
    net = Net('layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }\n'
              'layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 5 alpha: 0.5 k: 2 } }\n')
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    y = net.double().forward(x=x)["y"]
    expected = x * (2 + 0.5 / 5 * (x * x).sum(1, keepdim=True)) ** -0.75  # both channels are in every window
    assert torch.allclose(y, expected)


# --------------------------------------------------------------------------- the base class and the registry

@pytest.mark.parametrize("layer, shapes, message", [
    ('layer { name: "r" type: "ReLU" bottom: "x0" bottom: "x1" top: "r" }', [(2, 3), (2, 3)],
     "layer 'r' (ReLU): needs 1 bottom blob(s), got 2"),
    ('layer { name: "r" type: "ReLU" bottom: "x0" top: "r" top: "s" }', [(2, 3)],
     "layer 'r' (ReLU): needs 1 top blob(s), got 2"),
    ('layer { name: "e" type: "Eltwise" bottom: "x0" top: "e" }', [(2, 3)],
     "layer 'e' (Eltwise): needs at least 2 bottom blob(s), got 1"),
    ('layer { name: "u" type: "Upsample" bottom: "x0" bottom: "x0" bottom: "x0" top: "u" }', [(1, 1, 2, 2)],
     "layer 'u' (Upsample): needs 1 to 2 bottom blob(s), got 3"),
    ('layer { name: "p" type: "Pooling" bottom: "x0" top: "p" pooling_param { kernel_size: 2 } }', [(2, 3, 4)],
     "layer 'p' (Pooling): needs a 4-D bottom (N, C, H, W), got shape (2, 3, 4)"),
])
def test_declared_arity_and_rank_are_checked_once_by_the_base_class(layer, shapes, message):
    with pytest.raises(NetError) as info:
        single(layer, *shapes)
    assert message in str(info.value)


def test_every_layer_module_is_found_by_walking_the_package():
    from pathlib import Path

    import vggproto.layers as package
    from vggproto.layers.registry import layer_modules, supported_types
    files = {p.stem for p in Path(package.__path__[0]).glob("*.py") if p.stem != "__init__"}
    assert layer_modules() == sorted(f"vggproto.layers.{name}" for name in files)
    assert {"Python", "ROIPooling", "Interp", "LSTM", "Data", "Softmax"} <= set(supported_types())


def test_a_layer_module_that_fails_to_import_is_an_error(tmp_path, monkeypatch):
    import sys

    import vggproto.layers as package
    from vggproto.layers.registry import supported_types
    (tmp_path / "zz_broken.py").write_text("import no_such_dependency_of_a_layer\n")
    monkeypatch.setattr(package, "__path__", [*package.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "vggproto.layers.zz_broken", raising=False)
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_a_layer"):
        supported_types()
