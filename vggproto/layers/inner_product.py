"""InnerProduct: a fully connected layer over the C-order flatten of all axes from ``axis`` on.

Caffe: src/caffe/layers/inner_product_layer.cpp — K = count(axis..), weight (N, K) or (K, N) when
``transpose: true``, bias (N,); the output keeps the axes before ``axis`` and appends N.  A bottom whose K does
not match the weights (e.g. fc6 expects 25088 = 512·7·7 but a 192-pixel image gives 16384) fails at
construction with both numbers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, canonical_axis, count
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    """y = x·Wᵀ + b over the flattened trailing axes."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.inner_product_param
        shape = spec.bottom_shapes[0]
        if p.num_output <= 0:
            raise spec.error("inner_product_param.num_output must be positive")
        self.axis = canonical_axis(spec, p.axis, shape, "inner_product_param.axis")
        self.k, self.n, self.transpose = count(shape, self.axis), p.num_output, p.transpose
        self.add_blob((self.k, self.n) if self.transpose else (self.n, self.k), p.weight_filler)
        self.bias_term = p.bias_term
        if p.bias_term:
            self.add_blob((self.n,), p.bias_filler)
        self.top_shapes = [(*shape[:self.axis], self.n)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        flat = x.flatten(self.axis) if self.axis > 0 else x.reshape(1, -1)  # symbolic batch for ONNX export
        if flat.shape[-1] != self.k:
            # Caffe: inner_product_layer.cpp Reshape — CHECK K_ == new_K
            raise self.spec.error(f"bottom has {flat.shape[-1]} inputs per sample (shape {tuple(x.shape)}) but the "
                                  f"weights expect {self.k}")
        weight = blob(self, 0)
        bias = blob(self, 1) if self.bias_term else None
        if self.transpose:
            y = flat @ weight if bias is None else flat @ weight + bias
        else:
            y = F.linear(flat, weight, bias)     # one fused GEMM + bias (addmm), as torchvision's nn.Linear
        return (y if self.axis > 0 else y.reshape(self.n),)
