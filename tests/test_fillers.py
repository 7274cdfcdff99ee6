"""Caffe fillers (include/caffe/filler.hpp): distributions, fan conventions, sparsity, bilinear, determinism."""
from __future__ import annotations

import math

import pytest
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError, PrototxtError
from vggproto.layers.fillers import fill
from vggproto.net.interpreter import Net


def filled(shape, seed=0, **fields) -> torch.Tensor:
    param = caffe_pb2.FillerParameter(**fields)
    return fill(torch.empty(shape, dtype=torch.float64), param, torch.Generator().manual_seed(seed))


def test_constant_default_is_zero_and_value():
    assert torch.equal(filled((3, 4)), torch.zeros(3, 4, dtype=torch.float64))
    value = torch.tensor(0.1, dtype=torch.float32).item()   # FillerParameter.value is a float32 field
    assert torch.equal(filled((2,), value=0.1, type="constant"), torch.full((2,), value, dtype=torch.float64))


def test_uniform_range_and_moments():
    x = filled((200, 500), type="uniform", min=-0.3, max=0.5)
    assert x.min() >= -0.3 and x.max() <= 0.5
    assert abs(x.mean().item() - 0.1) < 0.005
    assert abs(x.var().item() - 0.8 ** 2 / 12) < 0.002


def test_gaussian_and_sparse():
    x = filled((200, 500), type="gaussian", mean=1.0, std=0.5)
    assert abs(x.mean().item() - 1.0) < 0.01 and abs(x.std().item() - 0.5) < 0.01
    # Caffe: Bernoulli(sparse / num_outputs) mask with num_outputs = shape[0]
    x = filled((40, 5000), type="gaussian", std=1.0, sparse=10)
    assert abs((x != 0).double().mean().item() - 10 / 40) < 0.01


def test_positive_unitball_rows_sum_to_one():
    x = filled((6, 3, 2, 2), type="positive_unitball")
    assert (x >= 0).all()
    torch.testing.assert_close(x.reshape(6, -1).sum(1), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("norm,n", [(0, 32 * 9), (1, 64 * 9), (2, (32 * 9 + 64 * 9) / 2)])
def test_xavier_and_msra_fan_conventions(norm, n):
    shape = (64, 32, 3, 3)   # fan_in = count/shape[0] = 32·9, fan_out = count/shape[1] = 64·9
    x = filled(shape, type="xavier", variance_norm=norm)
    bound = math.sqrt(3.0 / n)
    assert x.abs().max() <= bound and x.abs().max() > 0.99 * bound
    y = filled(shape, type="msra", variance_norm=norm)
    assert abs(y.std().item() / math.sqrt(2.0 / n) - 1) < 0.03
    assert abs(y.mean().item()) < 0.01


def test_bilinear_kernel():
    x = filled((2, 1, 4, 4), type="bilinear")
    axis = torch.tensor([0.25, 0.75, 0.75, 0.25], dtype=torch.float64)   # f = 2, c = 0.75
    torch.testing.assert_close(x[1, 0], axis.view(-1, 1) * axis.view(1, -1))
    x = filled((1, 1, 3, 3), type="bilinear")
    axis = torch.tensor([0.5, 1.0, 0.5], dtype=torch.float64)   # f = 2, c = 0.5
    torch.testing.assert_close(x[0, 0], axis.view(-1, 1) * axis.view(1, -1))
    with pytest.raises(PrototxtError, match="square"):
        filled((1, 1, 3, 4), type="bilinear")


def test_deterministic_given_a_generator():
    assert torch.equal(filled((5, 5), seed=3, type="gaussian"), filled((5, 5), seed=3, type="gaussian"))
    assert not torch.equal(filled((5, 5), seed=3, type="gaussian"), filled((5, 5), seed=4, type="gaussian"))


def test_errors():
    with pytest.raises(PrototxtError, match="unknown filler type 'gauss'.*gaussian"):
        filled((2, 2), type="gauss")
    with pytest.raises(PrototxtError, match="only gaussian"):
        filled((2, 2), type="uniform", sparse=1)


NET = """layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "c" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 kernel_size: 3 %s } }"""


def test_layers_use_fillers_with_caffe_defaults_and_seeds():
    net = Net(NET % "")
    w, b = net.params["c"]
    assert not w.detach().any() and not b.detach().any()   # no weight_filler: Caffe fills constant 0
    seeded = NET % 'weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.2 }'
    a, b = Net(seeded, seed=5), Net(seeded, seed=5)
    assert torch.equal(a.params["c"][0], b.params["c"][0]) and a.params["c"][0].abs().sum() > 0
    assert not torch.equal(a.params["c"][0], Net(seeded, seed=6).params["c"][0])
    assert torch.equal(a.params["c"][1], torch.full((2,), 0.2))
    with pytest.raises(NetError, match=r"<text>:2: layer 'c' \(Convolution\): unknown filler type"):
        Net(NET % 'weight_filler { type: "bogus" }')
