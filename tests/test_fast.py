"""Speed options (vggproto.fast): the Winograd F(m×m, 3×3) convolution against F.conv2d and a hand-written
correlation, and optimize_for_inference on a small VGG-style net against the plain interpreter."""
from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F

from vggproto.errors import VGGProtoError
from vggproto.fast import optimize_for_inference, transform_weights, winograd_conv2d, winograd_matrices
from vggproto.fast.fused import ConvReLU, FusedAway, MaxPool2x2
from vggproto.fast.optimize import WinogradConv
from vggproto.net.interpreter import Net

#: Documented float32 error bounds (max |error| / max |reference|, see docs/notes/perf.md).
F32_TOL = {2: 2e-6, 4: 3e-5, 6: 1e-4}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("m", [2, 4, 6])
def test_matrices_compute_the_1d_correlation_exactly(m):
    at, g, bt = winograd_matrices(m)
    alpha = m + 2
    assert (len(at), len(at[0]), len(g), len(g[0]), len(bt), len(bt[0])) == (m, alpha, alpha, 3, alpha, alpha)
    d = [Fraction(v, 7) for v in (3, -1, 4, 1, -5, 9, 2, -6)[:alpha]]
    w = [Fraction(2), Fraction(-3, 5), Fraction(7, 3)]
    gw = [sum(g[j][k] * w[k] for k in range(3)) for j in range(alpha)]
    bd = [sum(bt[j][i] * d[i] for i in range(alpha)) for j in range(alpha)]
    y = [sum(at[i][j] * gw[j] * bd[j] for j in range(alpha)) for i in range(m)]
    assert y == [sum(d[i + k] * w[k] for k in range(3)) for i in range(m)]   # exact rational arithmetic


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("n,c,k,h,w,pad", [(1, 3, 5, 7, 9, 1), (2, 16, 8, 14, 14, 1), (3, 8, 4, 10, 11, 0),
                                           (1, 32, 24, 12, 5, 1), (2, 1, 1, 3, 3, 0), (1, 4, 6, 4, 6, 2)])
def test_winograd_equals_conv2d_float64(m, n, c, k, h, w, pad):
    gen = torch.Generator().manual_seed(n * 100 + c)
    x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64)
    wt = torch.randn(k, c, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(k, generator=gen, dtype=torch.float64)
    ref = F.conv2d(x, wt, b, padding=pad)
    y = winograd_conv2d(x, transform_weights(wt, m), b, pad=(pad, pad), m=m)
    assert y.shape == ref.shape and y.is_contiguous()
    assert _rel(y, ref) < 1e-12
    y = winograd_conv2d(x, transform_weights(wt, m), None, pad=(pad, pad), m=m, relu=True)
    assert _rel(y, F.conv2d(x, wt, None, padding=pad).relu()) < 1e-12


@pytest.mark.parametrize("m", [2, 4, 6])
@pytest.mark.parametrize("c,size", [(64, 28), (256, 13), (9, 30)])
def test_winograd_float32_within_documented_tolerance(m, c, size):
    gen = torch.Generator().manual_seed(c)
    x = torch.randn(1, c, size, size, generator=gen)
    wt = torch.randn(32, c, 3, 3, generator=gen) * (2 / (9 * c)) ** 0.5
    b = torch.randn(32, generator=gen) * 0.1
    ref = F.conv2d(x.double(), wt.double(), b.double(), padding=1)
    y = winograd_conv2d(x, transform_weights(wt, m), b, pad=(1, 1), m=m)
    assert y.dtype == torch.float32
    assert _rel(y, ref) < F32_TOL[m]
    direct = F.conv2d(x, wt, b, padding=1)
    assert _rel(direct, ref) < F32_TOL[m]   # sanity: the direct float32 path is within the same bound


def test_winograd_rejects_mismatched_weights():
    u = transform_weights(torch.randn(4, 3, 3, 3), 4)
    with pytest.raises(ValueError, match="do not match"):
        winograd_conv2d(torch.randn(1, 5, 8, 8), u, m=4)
    with pytest.raises(ValueError, match="do not match"):
        winograd_conv2d(torch.randn(1, 3, 8, 8), u, m=2)
    with pytest.raises(ValueError, match=r"\(K, C, 3, 3\)"):
        transform_weights(torch.randn(4, 3, 5, 5), 4)


SMALL_VGG = """name: "small_vgg"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: %(h)d dim: %(w)d } } }
layer { name: "conv1_1" type: "Convolution" bottom: "data" top: "conv1_1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1_1" type: "ReLU" bottom: "conv1_1" top: "conv1_1" }
layer { name: "conv1_2" type: "Convolution" bottom: "conv1_1" top: "conv1_2"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu1_2" type: "ReLU" bottom: "conv1_2" top: "conv1_2" }
layer { name: "pool1" type: "Pooling" bottom: "conv1_2" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2_1" type: "Convolution" bottom: "pool1" top: "conv2_1"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1 weight_filler { type: "msra" }
                      bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2_1" type: "ReLU" bottom: "conv2_1" top: "relu2_1" }
layer { name: "conv2_2" type: "Convolution" bottom: "relu2_1" top: "conv2_2"
  convolution_param { num_output: 12 kernel_size: 3 weight_filler { type: "msra" } bias_term: false } }
layer { name: "leaky" type: "ReLU" bottom: "conv2_2" top: "conv2_2" relu_param { negative_slope: 0.1 } }
layer { name: "strided" type: "Convolution" bottom: "conv2_2" top: "strided"
  convolution_param { num_output: 12 kernel_size: 3 stride: 2 weight_filler { type: "msra" } } }
layer { name: "fc" type: "InnerProduct" bottom: "strided" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "xavier" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


def small_vgg(h: int = 17, w: int = 22, dtype=torch.float32) -> Net:
    return Net(SMALL_VGG % {"h": h, "w": w}, seed=3).to(dtype)


def _inputs(h=17, w=22, dtype=torch.float32):
    return torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(7), dtype=dtype)


def test_optimize_installs_winograd_on_eligible_layers_and_fuses_in_place_relu():
    net = small_vgg()
    optimize_for_inference(net, min_channels=1, min_tiles=0)
    assert _winograd_layers(net) == {"conv1_1", "conv1_2", "conv2_1", "conv2_2"}    # not the stride-2 conv
    assert net.layer_dict["conv1_1"].accelerated.relu and net.layer_dict["conv1_2"].accelerated.relu
    assert not net.layer_dict["conv2_1"].accelerated.relu            # its ReLU writes another blob
    assert not net.layer_dict["conv2_2"].accelerated.relu            # leaky ReLU is not fused
    assert isinstance(net.layer_dict["relu1_1"], FusedAway) and net.layer_list[2] is net.layer_dict["relu1_1"]
    assert type(net.layer_dict["relu2_1"]).__name__ == "ReLU"
    plain = small_vgg()
    assert list(net.state_dict()) == list(plain.state_dict())


def test_min_channels_keeps_narrow_layers_direct():
    net = small_vgg()
    optimize_for_inference(net, min_channels=16)
    assert _winograd_layers(net) == {"conv2_1", "conv2_2"}


@pytest.mark.parametrize("tile", [2, 4, 6])
def test_optimized_net_matches_plain_float64_exactly(tile):
    plain, net = small_vgg(dtype=torch.float64), small_vgg(dtype=torch.float64)
    fast = optimize_for_inference(net, winograd=True, tile=tile, min_channels=1, min_tiles=0)
    x = _inputs(dtype=torch.float64)
    with torch.no_grad():
        ref = plain(data=x)
    out = fast(data=x)
    assert _rel(out["prob"], ref["prob"]) < 1e-12
    for blob in ("conv1_2", "relu2_1", "conv2_2", "fc"):
        assert _rel(net.blobs[blob], plain.blobs[blob]) < 1e-12, blob


@pytest.mark.parametrize("h,w", [(17, 22), (16, 16), (9, 13)])
def test_optimized_net_matches_plain_float32(h, w):
    plain, net = small_vgg(h, w), small_vgg(h, w)
    fast = optimize_for_inference(net, min_channels=1, min_tiles=0)
    x = _inputs(h, w)
    with torch.no_grad():
        plain(data=x)
    fast(data=x)
    assert _rel(net.blobs["fc"], plain.blobs["fc"]) < F32_TOL[4]


def test_training_falls_back_to_the_exact_path_with_gradients():
    plain, net = small_vgg(dtype=torch.float64), small_vgg(dtype=torch.float64)
    optimize_for_inference(net, winograd=True, min_channels=1, min_tiles=0)
    x = _inputs(dtype=torch.float64)
    for n in (plain, net):
        n(data=x)["prob"][:, 0].sum().backward()
    for name in ("conv1_1", "conv1_2", "conv2_2"):
        assert torch.equal(net.params[name][0].grad, plain.params[name][0].grad)
    assert torch.equal(net.blobs["conv1_2"], plain.blobs["conv1_2"])   # the fused ReLU is applied there too


def test_transformed_weights_follow_weight_changes_and_device_moves():
    plain, net = small_vgg(), small_vgg()
    fast = optimize_for_inference(net, min_channels=1, min_tiles=0)
    x = _inputs()
    fast(data=x)
    cached = net.layer_dict["conv1_2"].accelerated.u
    with torch.no_grad():
        for n in (plain, net):
            n.params["conv1_2"][0].mul_(-0.5)   # in place, as load_weights does
        ref = plain(data=x)
    out = fast(data=x)
    assert net.layer_dict["conv1_2"].accelerated.u is not cached
    assert _rel(out["prob"], ref["prob"]) < F32_TOL[4]
    net.double()
    out = fast(data=x.double())
    assert out["prob"].dtype == torch.float64 and net.layer_dict["conv1_2"].accelerated.u.dtype == torch.float64


def test_channels_last_and_autocast_bf16_on_cpu():
    plain = small_vgg()
    x = _inputs()
    with torch.no_grad():
        plain(data=x)
    ref = plain.blobs["fc"]
    for channels_last, autocast, winograd in itertools.product([False, True], [None, "bf16"], [False, True]):
        net = small_vgg()
        fast = optimize_for_inference(net, channels_last=channels_last, autocast=autocast, winograd=winograd,
                                      min_channels=1, min_tiles=0)
        fast(data=x)
        got = net.blobs["fc"]
        tol = 3e-2 if autocast else F32_TOL[4]
        assert _rel(got.float(), ref) < tol, (channels_last, autocast, winograd)
        if channels_last:
            assert net.params["conv1_2"][0].is_contiguous(memory_format=torch.channels_last)


def _winograd_layers(net: Net) -> set[str]:
    return {n for n, layer in net.layer_dict.items() if isinstance(getattr(layer, "accelerated", None), WinogradConv)}


def test_winograd_defaults_off_under_autocast_and_for_narrow_layers():
    net = small_vgg()
    optimize_for_inference(net, autocast="bf16", min_channels=1)
    assert not _winograd_layers(net)
    net = small_vgg()
    optimize_for_inference(net)   # default min_channels 128: nothing this narrow
    assert not _winograd_layers(net)
    assert isinstance(net.layer_dict["conv1_1"].accelerated, ConvReLU)   # the exact fusions still apply
    assert isinstance(net.layer_dict["pool1"], MaxPool2x2)


def test_exact_fusions_are_bit_identical():
    plain, net = small_vgg(16, 20), small_vgg(16, 20)
    optimize_for_inference(net, winograd=False)
    assert isinstance(net.layer_dict["relu1_2"], FusedAway) and isinstance(net.layer_dict["pool1"], MaxPool2x2)
    assert isinstance(net.layer_dict["conv1_2"].accelerated, ConvReLU)
    assert net.layer_dict["conv2_1"].accelerated is None                  # its ReLU is not in place
    x = _inputs(16, 20)
    with torch.no_grad():
        plain(data=x)
        net(data=x)
    for blob in plain.blobs:
        assert torch.equal(net.blobs[blob], plain.blobs[blob]), blob
    odd_plain, odd = small_vgg(15, 21), small_vgg(15, 21)              # odd sizes: Caffe's ceil windows
    optimize_for_inference(odd, winograd=False)
    x = _inputs(15, 21)
    with torch.no_grad():
        assert torch.equal(odd(data=x)["prob"], odd_plain(data=x)["prob"])
    net.zero_grad()
    plain(data=_inputs(16, 20))["prob"][:, 1].sum().backward()
    net(data=_inputs(16, 20))["prob"][:, 1].sum().backward()               # with autograd: the original layers
    assert torch.equal(net.params["conv1_1"][0].grad, plain.params["conv1_1"][0].grad)


def test_bad_options_are_user_errors():
    with pytest.raises(VGGProtoError, match="tile 5"):
        optimize_for_inference(small_vgg(), winograd=True, tile=5)
    with pytest.raises(VGGProtoError, match="bf16 or fp16"):
        optimize_for_inference(small_vgg(), autocast="int8")


def test_winograd_module_repr():
    assert "F(4x4,3x3) + ReLU" in repr(WinogradConv(4, relu=True))


def test_calls_with_few_tiles_use_the_direct_path():
    plain, net = small_vgg(), small_vgg()
    fast = optimize_for_inference(net, min_channels=1, min_tiles=19)   # conv2_x on 9×11: 2 × 3 × 3 = 18 tiles
    x = _inputs()
    with torch.no_grad():
        plain(data=x)
    fast(data=x)
    w, b = net.params["conv2_1"]
    with torch.no_grad():
        direct = F.conv2d(net.blobs["pool1"], w, b, padding=1)
    assert torch.equal(net.blobs["conv2_1"], direct)                         # direct: bit-identical
    assert not torch.equal(net.blobs["conv1_2"], plain.blobs["conv1_2"])  # Winograd: rounding differs
    assert _rel(net.blobs["conv1_2"], plain.blobs["conv1_2"]) < F32_TOL[4]
