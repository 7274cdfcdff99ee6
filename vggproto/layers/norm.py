"""Normalisation and affine layers: LRN, BatchNorm, Scale, Bias.

LRN follows Caffe's formulas (alpha divided by the window size, WITHIN_CHANNEL ignoring k); BatchNorm keeps
Caffe's three blobs (mean·f, variance·f, [f]) and its running-average update; Scale and Bias broadcast a learned
blob (or a second bottom) over axes [axis, axis + num_axes).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, canonical_axis
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

LRNP = caffe_pb2.LRNParameter


@register("LRN")
class LRN(CaffeLayer):
    """Caffe: src/caffe/layers/lrn_layer.cpp.

    ACROSS_CHANNELS: y = x·(k + α/n·Σ_{window of n channels} x²)^−β.
    WITHIN_CHANNEL: y = x·(1 + α·avgpool_{n×n, pad (n−1)/2}(x²))^−β (always divided by n², k ignored).
    """

    n_bottoms = 1
    n_tops = 1
    bottom_ndim = 4
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.lrn_param
        shape = spec.bottom_shapes[0]
        if p.local_size % 2 == 0 or p.local_size < 1:
            raise spec.error(f"lrn_param.local_size must be odd and positive, got {p.local_size}")
        self.size, self.alpha, self.beta, self.k = p.local_size, p.alpha, p.beta, p.k
        self.region = p.norm_region
        self.top_shapes = [tuple(shape)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        pad = (self.size - 1) // 2
        square = x * x
        if self.region == LRNP.ACROSS_CHANNELS:
            # Zero-pad the channel axis explicitly: avg_pool3d's own padding refuses C < local_size, Caffe does not.
            padded = F.pad(square.unsqueeze(1), (0, 0, 0, 0, pad, pad))
            window = F.avg_pool3d(padded, (self.size, 1, 1), stride=1).squeeze(1)
            scale = self.k + self.alpha * window
        else:
            # Caffe: lrn_layer.cpp WITHIN_CHANNEL — power(shift 1, scale α) of AVE pool; k is not used
            window = F.avg_pool2d(square, self.size, stride=1, padding=pad, count_include_pad=True)
            scale = 1.0 + self.alpha * window
        return (x * _negative_power(scale, self.beta),)


def _negative_power(scale: torch.Tensor, beta: float) -> torch.Tensor:
    """scale^−β; in an ONNX export (β ≠ 0) as exp(−β·log scale), the same value to 1e-7 (0 → inf and negative
    → NaN alike): onnxruntime's Pow kernel is scalar and took a tenth of GoogLeNet's time at batch 1, its Exp
    and Log are vectorised (4.5× faster; ONNX's own LRN op is 4× slower than Pow)."""
    if torch.onnx.is_in_onnx_export() and beta != 0:
        return torch.exp(torch.log(scale) * -beta)
    return torch.pow(scale, -beta)


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe: src/caffe/layers/batch_norm_layer.cpp — blobs mean·f, variance·f, [f] (never learned).

    Global stats: mean = blob0/f, var = blob1/f (f = 0 ⇒ 0).  Batch stats (TRAIN default): biased batch variance,
    and the forward updates f ← λf + 1, blob0 ← λ·blob0 + μ, blob1 ← λ·blob1 + m/(m−1)·σ²
    (m = count/C).
    """

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.batch_norm_param
        shape = spec.bottom_shapes[0]
        channels = shape[1] if len(shape) > 1 else 1
        self.use_global = p.use_global_stats if p.HasField("use_global_stats") else not spec.train
        self.fraction, self.eps = p.moving_average_fraction, p.eps
        for blob_shape in ((channels,), (channels,), (1,)):
            self.add_blob(blob_shape, learnable=False)
        self.top_shapes = [tuple(shape)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        view = (1, -1) + (1,) * (x.dim() - 2) if x.dim() > 1 else (-1,)
        if self.use_global:
            factor = self.blobs[2].detach()[0]
            scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
            mean, var = self.blobs[0].detach() * scale, self.blobs[1].detach() * scale
            if torch.onnx.is_in_onnx_export():   # x·a + b with constant a, b: onnxruntime folds it into the conv
                inverse = torch.rsqrt(var + self.eps)
                return (x * inverse.view(view) + (-mean * inverse).view(view),)
        else:
            axes = [0] + list(range(2, x.dim()))
            mean = x.mean(dim=axes)
            var = ((x - mean.view(view)) ** 2).mean(dim=axes)
            self._update(mean.detach(), var.detach(), x.numel() // max(mean.numel(), 1))
        return ((x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps),)

    @torch.no_grad()
    def _update(self, mean: torch.Tensor, var: torch.Tensor, m: int) -> None:
        # Caffe: batch_norm_layer.cpp Forward_cpu — moving averages with the unbiased variance correction
        correction = m / (m - 1) if m > 1 else 1.0
        self.blobs[2].mul_(self.fraction).add_(1.0)
        self.blobs[0].mul_(self.fraction).add_(mean)
        self.blobs[1].mul_(self.fraction).add_(var * correction)


class _Affine(CaffeLayer):
    """Shared geometry of Scale and Bias: the operand covers bottom axes [axis, axis + operand ndim)."""

    n_bottoms = (1, 2)
    n_tops = 1
    onnx = TRACED
    backward = True

    def _setup(self, spec: LayerSpec, axis: int, num_axes: int, filler: caffe_pb2.FillerParameter) -> tuple:
        shape = tuple(spec.bottom_shapes[0])
        field = f"{spec.param.type.lower()}_param.axis"     # scale_param.axis or bias_param.axis
        if len(spec.bottom_shapes) == 2:
            operand = tuple(spec.bottom_shapes[1])
            self.axis = 0 if not operand else canonical_axis(spec, axis, shape, field)
        else:
            self.axis = canonical_axis(spec, axis, shape, field) if shape else 0
            if num_axes < -1:
                raise spec.error(f"num_axes must be -1 or non-negative, got {num_axes}")
            end = len(shape) if num_axes == -1 else self.axis + num_axes
            if end > len(shape):
                raise spec.error(f"axis {axis} + num_axes {num_axes} exceeds the bottom's {len(shape)} axes")
            operand = shape[self.axis:end]
            self.add_blob(operand, filler)
        if shape[self.axis:self.axis + len(operand)] != operand:
            raise spec.error(f"operand shape {operand} does not match bottom shape {shape} at axis {self.axis}")
        self.operand_shape = operand
        self.top_shapes = [shape]
        return operand

    def _broadcast(self, operand: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        inner = x.dim() - self.axis - len(self.operand_shape)
        # a bottom operand's own sizes: it may follow the batch (axis 0), and an ONNX trace keeps them symbolic
        own = tuple(operand.shape) if operand.dim() == len(self.operand_shape) else tuple(self.operand_shape)
        return operand.reshape((1,) * self.axis + own + (1,) * inner)


@register("Scale")
class Scale(_Affine):
    """Caffe: src/caffe/layers/scale_layer.cpp — y = x·s (+ b); s learned (default filler 1) or bottom[1]."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.scale_param
        filler = caffe_pb2.FillerParameter()
        if p.HasField("filler"):
            filler.CopyFrom(p.filler)
        else:
            filler.type, filler.value = "constant", 1.0   # Caffe: scale_layer.cpp — identity by default
        operand = self._setup(spec, p.axis, p.num_axes, filler)
        self.bias_term = p.bias_term
        self.bias_index = len(self.blobs)
        if p.bias_term:
            self.add_blob(operand, p.bias_filler)

    def forward(self, x: torch.Tensor, *other: torch.Tensor) -> tuple[torch.Tensor]:
        scale = other[0] if other else blob(self, 0)
        y = x * self._broadcast(scale, x)
        if self.bias_term:
            y = y + self._broadcast(blob(self, self.bias_index), x)
        return (y,)


@register("Bias")
class Bias(_Affine):
    """Caffe: src/caffe/layers/bias_layer.cpp — y = x + b; b learned (default filler constant 0) or bottom[1]."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.bias_param
        self._setup(spec, p.axis, p.num_axes, p.filler)

    def forward(self, x: torch.Tensor, *other: torch.Tensor) -> tuple[torch.Tensor]:
        bias = other[0] if other else blob(self, 0)
        return (x + self._broadcast(bias, x),)

