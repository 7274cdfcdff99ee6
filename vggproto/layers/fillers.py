"""Caffe's weight fillers (BVLC/caffe:include/caffe/filler.hpp), reproduced formula for formula.

Caffe's defaults matter: a layer without ``weight_filler`` gets ``constant`` 0, so its weights are all zero.
The random streams cannot match Caffe's (different RNG), but the distributions, fan conventions and sparsity
rules do; a seeded ``torch.Generator`` makes construction deterministic.
"""
from __future__ import annotations

import math

import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PrototxtError

FILLER_TYPES = ("constant", "uniform", "gaussian", "positive_unitball", "xavier", "msra", "bilinear")


def _fans(tensor: torch.Tensor) -> tuple[float, float]:
    # Caffe: include/caffe/filler.hpp — fan_in = count/shape(0), fan_out = count/shape(1) (count if 1-D)
    count = tensor.numel()
    fan_in = count / tensor.shape[0] if tensor.dim() >= 1 and tensor.shape[0] else count
    fan_out = count / tensor.shape[1] if tensor.dim() > 1 and tensor.shape[1] else count
    return fan_in, fan_out


def _variance_n(tensor: torch.Tensor, norm: int) -> float:
    fan_in, fan_out = _fans(tensor)
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return fan_out
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    return fan_in


def _uniform(tensor: torch.Tensor, low: float, high: float, gen: torch.Generator | None) -> None:
    # Caffe: util/math_functions.cpp caffe_rng_uniform — boost::uniform_real<Dtype>: drawn in the blob's float
    tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) * (high - low) + low)


def _gaussian(tensor: torch.Tensor, mean: float, std: float, gen: torch.Generator | None) -> None:
    # Caffe: util/math_functions.cpp caffe_rng_gaussian — boost::normal_distribution<Dtype>, in the blob's float
    tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype) * std + mean)


def _sparsify(tensor: torch.Tensor, sparse: int, gen: torch.Generator | None) -> None:
    # Caffe: GaussianFiller — Bernoulli(sparse / num_outputs) mask, num_outputs = shape(0)
    if tensor.dim() < 1:
        raise PrototxtError("gaussian filler with 'sparse' needs a blob with at least one axis")
    probability = min(1.0, sparse / float(tensor.shape[0]))
    mask = torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) < probability
    tensor.mul_(mask.to(tensor.dtype))


def _positive_unitball(tensor: torch.Tensor, gen: torch.Generator | None) -> None:
    # Caffe: PositiveUnitballFiller — U(0,1) then every shape(0)-row sums to 1
    _uniform(tensor, 0.0, 1.0, gen)
    rows = tensor.view(tensor.shape[0], -1) if tensor.dim() >= 1 else tensor.view(1, -1)
    rows.div_(rows.sum(dim=1, keepdim=True))


def _bilinear(tensor: torch.Tensor) -> None:
    # Caffe: BilinearFiller — f = ceil(K/2), c = (K-1)/(2f), w = (1-|x/f-c|)(1-|y/f-c|)
    if tensor.dim() != 4 or tensor.shape[2] != tensor.shape[3]:
        raise PrototxtError(f"bilinear filler needs a 4-D blob with square kernels, got shape {tuple(tensor.shape)}")
    size = tensor.shape[3]
    f = math.ceil(size / 2.0)
    c = (size - 1) / (2.0 * f)
    axis = 1.0 - (torch.arange(size, dtype=torch.float64) / f - c).abs()
    tensor.copy_((axis.view(-1, 1) * axis.view(1, -1)).expand_as(tensor))


def fill(tensor: torch.Tensor, filler: caffe_pb2.FillerParameter, generator: torch.Generator | None) -> torch.Tensor:
    """Fill ``tensor`` in place as Caffe's filler ``filler.type`` would, drawing from ``generator``."""
    kind = filler.type
    with torch.no_grad():
        if kind == "constant":
            tensor.fill_(filler.value)
        elif kind == "uniform":
            _uniform(tensor, filler.min, filler.max, generator)
        elif kind == "gaussian":
            _gaussian(tensor, filler.mean, filler.std, generator)
            if filler.sparse >= 0:
                _sparsify(tensor, filler.sparse, generator)
        elif kind == "positive_unitball":
            _positive_unitball(tensor, generator)
        elif kind == "xavier":
            scale = math.sqrt(3.0 / _variance_n(tensor, filler.variance_norm))
            _uniform(tensor, -scale, scale, generator)
        elif kind == "msra":
            std = math.sqrt(2.0 / _variance_n(tensor, filler.variance_norm))
            _gaussian(tensor, 0.0, std, generator)
        elif kind == "bilinear":
            _bilinear(tensor)
        else:
            raise PrototxtError(f"unknown filler type '{kind}'; supported: {', '.join(FILLER_TYPES)}")
        if filler.sparse >= 0 and kind != "gaussian":
            raise PrototxtError(f"filler '{kind}' does not support 'sparse' (only gaussian does)")
    return tensor
