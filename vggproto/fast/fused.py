"""Exact inference shortcuts around the convolutions: ReLU fused into the preceding convolution, and 2×2/2 max
pooling by two elementwise maxima.

Why: on CPU at batch 1, torch's ``max_pool2d`` reads VGG's 64×224×224 map several times slower than memory allows
(about 5× slower than two strided ``torch.maximum`` on this machine, see docs/notes/perf.md), and an out-of-place
ReLU after a convolution costs a full extra write.  Both replacements compute bit-identical results.
"""
from __future__ import annotations

import torch
from torch import nn

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.registry import CaffeLayer

P = caffe_pb2.PoolingParameter


class FusedAway(CaffeLayer):
    """Stands in for an in-place ReLU whose work the preceding convolution now does: the identity."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (x,)


class ConvReLU(nn.Module):
    """Forward of a Convolution layer followed by its in-place ReLU (the library's direct convolution)."""

    def forward(self, layer: CaffeLayer, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(relu_after_conv(layer.convolve(x)) for x in bottoms)

    def extra_repr(self) -> str:
        return "direct + ReLU"


def relu_after_conv(y: torch.Tensor) -> torch.Tensor:
    """ReLU of a fresh convolution output: in place when autograd is off (nothing else holds ``y``)."""
    return torch.relu(y) if torch.is_grad_enabled() else torch.relu_(y)


class MaxPool2x2(CaffeLayer):
    """Caffe MAX pooling, kernel 2, stride 2, no pad, one top, on even H and W (where Caffe's ceil rule and the
    floor rule agree: every window is complete).  Other inputs go to the original layer."""

    def __init__(self, original: CaffeLayer):
        super().__init__(original.spec)
        self.original = original
        self.top_shapes = list(original.top_shapes)
        self.blob_shapes = []

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if x.dim() != 4 or x.shape[-2] % 2 or x.shape[-1] % 2 or torch.is_grad_enabled():
            return self.original(x)
        rows = torch.maximum(x[:, :, 0::2], x[:, :, 1::2])
        return (torch.maximum(rows[..., 0::2], rows[..., 1::2]),)


def is_plain_max_pool_2x2(layer: CaffeLayer) -> bool:
    """A Pooling layer this shortcut computes exactly (see :class:`MaxPool2x2`)."""
    return (layer.spec.type == "Pooling" and getattr(layer, "method", None) == P.MAX
            and list(layer.kernel) == [2, 2] and list(layer.stride) == [2, 2] and list(layer.pad) == [0, 0]
            and len(layer.top_shapes) == 1 and not layer.spec.param.pooling_param.global_pooling)
