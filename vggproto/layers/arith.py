"""Element-wise and reducing arithmetic layers: Eltwise, Reduction, MVN, Embed.

Where Caffe's backward is not the mathematical gradient (Eltwise MAX tie routing, PROD without stable_prod_grad,
MVN's eps placement) a small ``torch.autograd.Function`` or an index-gather reproduces Caffe's rule exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import DataError
from vggproto.layers.axes import canonical_axis, count, legacy_dim
from vggproto.layers.base import ANY, TRACED
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

_ELT = caffe_pb2.EltwiseParameter
_RED = caffe_pb2.ReductionParameter


class _UnstableProd(torch.autograd.Function):
    """PROD with ``stable_prod_grad: false``: Caffe's diff is top / bottom_i * top_diff (inf/nan at zeros)."""

    @staticmethod
    def forward(ctx, *bottoms: torch.Tensor) -> torch.Tensor:
        top = bottoms[0]
        for b in bottoms[1:]:
            top = top * b
        ctx.save_for_backward(top, *bottoms)
        return top

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        top, *bottoms = ctx.saved_tensors
        # Caffe: src/caffe/layers/eltwise_layer.cpp — caffe_div(top_data, bottom_data) then * top_diff
        return tuple(top / b * grad for b in bottoms)


@register("Eltwise")
class Eltwise(CaffeLayer):
    """Element-wise SUM (with per-bottom ``coeff``), PROD or MAX of equally shaped bottoms."""

    n_bottoms = (2, ANY)
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.eltwise_param
        shapes = [tuple(s) for s in spec.bottom_shapes]
        for i, shape in enumerate(shapes[1:], start=1):
            if shape != shapes[0]:
                raise spec.error(f"bottom {i} has shape {shape} but bottom 0 has shape {shapes[0]}: Eltwise "
                                 f"needs equal shapes")
        self.op = p.operation
        if len(p.coeff) and self.op != _ELT.SUM:
            raise spec.error("eltwise_param.coeff is only allowed with operation: SUM")
        if len(p.coeff) and len(p.coeff) != len(shapes):
            raise spec.error(f"eltwise_param.coeff has {len(p.coeff)} values; give one per bottom ({len(shapes)})")
        self.coeff = list(p.coeff) or [1.0] * len(shapes)
        self.stable_prod_grad = p.stable_prod_grad
        self.top_shapes = [shapes[0]]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.op == _ELT.SUM:
            top = bottoms[0] * self.coeff[0] if self.coeff[0] != 1 else bottoms[0]
            for c, b in zip(self.coeff[1:], bottoms[1:]):
                top = top + (b * c if c != 1 else b)
            return (top,)
        if self.op == _ELT.PROD:
            if not self.stable_prod_grad:
                return (_UnstableProd.apply(*bottoms),)
            top = bottoms[0]
            for b in bottoms[1:]:
                top = top * b
            return (top,)
        return (self._max(bottoms),)

    @staticmethod
    def _max(bottoms: tuple[torch.Tensor, ...]) -> torch.Tensor:
        # Caffe: src/caffe/layers/eltwise_layer.cpp — bottom 1 wins a tie with bottom 0 (a > b else b); later
        # bottoms need a strictly greater value (CPU code; the CUDA kernel gives later bottoms every tie).
        # The gradient goes to the recorded winner only.
        with torch.no_grad():
            best = torch.maximum(bottoms[0], bottoms[1])
            index = (bottoms[0] <= bottoms[1]).long()
            for k, b in enumerate(bottoms[2:], start=2):
                better = b > best
                index = torch.where(better, torch.full_like(index, k), index)
                best = torch.where(better, b, best)
        stacked = torch.stack(bottoms)
        return torch.gather(stacked, 0, index.unsqueeze(0)).squeeze(0)


@register("Reduction")
class Reduction(CaffeLayer):
    """Reduce all axes from ``axis`` on with SUM, ASUM, SUMSQ or MEAN, times ``coeff``."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.reduction_param
        shape = tuple(spec.bottom_shapes[0])
        # Caffe: src/caffe/layers/reduction_layer.cpp — top shape = bottom shape[:axis] (a scalar for axis 0)
        self.axis = canonical_axis(spec, p.axis, shape, "reduction_param.axis") if shape else 0
        self.op, self.coeff = p.operation, p.coeff
        self.top_shapes = [shape[:self.axis]]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = bottoms[0]
        flat = x.reshape(*x.shape[:self.axis], -1)
        if self.op == _RED.ASUM:
            top = flat.abs().sum(-1)
        elif self.op == _RED.SUMSQ:
            top = (flat * flat).sum(-1)
        elif self.op == _RED.MEAN:
            top = flat.sum(-1) / max(1, flat.shape[-1])
        else:
            top = flat.sum(-1)
        return (top * self.coeff if self.coeff != 1 else top,)


class _MVNFn(torch.autograd.Function):
    """y = (x - mean) / (sqrt(var) + eps) per row, with Caffe's backward formula (mvn_layer.cpp)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        centered = x - x.mean(dim=1, keepdim=True)
        std = (centered * centered).mean(dim=1, keepdim=True).sqrt() + eps  # Caffe: sqrt(var) + eps
        y = centered / std
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, std = ctx.saved_tensors
        # Caffe: src/caffe/layers/mvn_layer.cpp — dx = (dy - mean(dy) - y * mean(y * dy)) / (sqrt(var) + eps)
        dx = grad - grad.mean(dim=1, keepdim=True) - y * (y * grad).mean(dim=1, keepdim=True)
        return dx / std, None


@register("MVN")
class MVN(CaffeLayer):
    """Mean-variance normalisation per (sample, channel), or per sample with ``across_channels``."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.mvn_param
        self.normalize_variance, self.across_channels, self.eps = p.normalize_variance, p.across_channels, p.eps
        self.top_shapes = [tuple(spec.bottom_shapes[0])]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = bottoms[0]
        shape = tuple(x.shape)
        # Caffe: src/caffe/layers/mvn_layer.cpp — rows = num (across channels) or num * channels (legacy dims)
        rows = legacy_dim(shape, 0) * (1 if self.across_channels else legacy_dim(shape, 1))
        flat = x.reshape(rows, -1) if count(shape) else x.reshape(rows, 0)
        if self.normalize_variance:
            y = _MVNFn.apply(flat, float(self.eps))
        else:
            y = flat - flat.mean(dim=1, keepdim=True)
        return (y.reshape(shape),)


@register("Embed")
class Embed(CaffeLayer):
    """Look up row ``index`` of a (input_dim, num_output) table for every bottom element (+ bias)."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.embed_param
        if p.input_dim < 1 or p.num_output < 1:
            raise spec.error(f"embed_param.input_dim ({p.input_dim}) and num_output ({p.num_output}) must both "
                             f"be positive")
        self.input_dim = p.input_dim
        # Caffe: src/caffe/layers/embed_layer.cpp — blob 0 = weight (input_dim, num_output), blob 1 = bias
        self.add_blob((p.input_dim, p.num_output), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((p.num_output,), p.bias_filler)
        self.top_shapes = [tuple(spec.bottom_shapes[0]) + (p.num_output,)]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        index = bottoms[0].detach().long()  # Caffe: static_cast<int>; no gradient to the indices
        if index.numel() and bool(((index < 0) | (index >= self.input_dim)).any()):
            bad = index[(index < 0) | (index >= self.input_dim)][0].item()
            raise DataError(f"layer '{self.spec.name}' (Embed): index {bad} is outside [0, "
                            f"embed_param.input_dim = {self.input_dim})")
        top = F.embedding(index, self.blobs[0])
        if self.bias_term:
            top = top + self.blobs[1]
        return (top,)
