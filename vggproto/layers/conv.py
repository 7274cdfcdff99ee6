"""Convolution and Deconvolution with Caffe's geometry: per-axis kernel/stride/pad/dilation, group, axis, N-d.

Caffe: src/caffe/layers/base_conv_layer.cpp parses the parameters; conv_layer.cpp / deconv_layer.cpp give the
output sizes (:func:`vggproto.caffe.shapes.conv_output_size` / ``deconv_output_size``).  The math is torch's
conv{1,2,3}d / conv_transpose{1,2,3}d, which compute the same cross-correlation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from vggproto.caffe.shapes import Shape, conv_output_size, deconv_output_size
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, canonical_axis, conv_geometry, count
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _BaseConv(CaffeLayer):
    n_bottoms = (1, 64)
    onnx = TRACED
    backward = True
    transposed = False

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        if len(spec.param.top) != len(spec.bottom_shapes):
            raise spec.error(f"needs as many tops as bottoms, got {len(spec.param.top)} tops "
                             f"and {len(spec.bottom_shapes)} bottoms")
        p = spec.param.convolution_param
        shape = spec.bottom_shapes[0]
        self.axis = canonical_axis(spec, p.axis, shape, "convolution_param.axis")
        n_sp = len(shape) - self.axis - 1
        if n_sp not in _CONV:
            raise spec.error(f"supports 1 to 3 spatial axes, got {n_sp} (bottom shape {shape}, axis {self.axis})")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(spec, p, n_sp)
        for field, values in (("kernel_size", self.kernel), ("stride", self.stride), ("dilation", self.dilation)):
            if min(values) <= 0:
                raise spec.error(f"convolution_param.{field} must be positive, got {values}")
        channels, self.group, n_out = shape[self.axis], p.group, p.num_output
        if n_out <= 0:
            raise spec.error("convolution_param.num_output must be positive")
        if self.group <= 0 or channels % self.group or n_out % self.group:
            raise spec.error(f"group {self.group} must divide both the input channels ({channels}) and "
                             f"num_output ({n_out})")
        for other in spec.bottom_shapes[1:]:
            if tuple(other) != tuple(shape):
                raise spec.error(f"all bottoms must have the same shape: {shape} vs {other}")
        # Caffe: base_conv_layer.cpp — weight (out, in/group, k...) for conv, (in, out/group, k...) for deconv
        if self.transposed:
            wshape = (channels, n_out // self.group, *self.kernel)
        else:
            wshape = (n_out, channels // self.group, *self.kernel)
        self.add_blob(wshape, p.weight_filler)
        if p.bias_term:
            self.add_blob((n_out,), p.bias_filler)
        self.bias_term = p.bias_term
        self.accelerated = None   # optional fast forward(layer, *bottoms), installed by vggproto.fast
        spatial = [self._out_size(shape[self.axis + 1 + i], i) for i in range(n_sp)]
        if min(spatial) <= 0:
            raise spec.error(self._empty_output(shape, spatial))
        out: Shape = (*shape[:self.axis], n_out, *spatial)
        self.top_shapes = [out] * len(spec.bottom_shapes)

    def _empty_output(self, shape: Shape, spatial: list[int]) -> str:
        """Which axis is too small for the kernel, with the sizes and Caffe's rule (a user fixes one number)."""
        i = next(i for i, size in enumerate(spatial) if size <= 0)
        axis = ("height", "width")[i] if len(spatial) == 2 else f"spatial axis {i}"
        size, extent = shape[self.axis + 1 + i], self.dilation[i] * (self.kernel[i] - 1) + 1
        if self.transposed:
            return (f"output {axis} would be {spatial[i]}: input {size}, kernel {self.kernel[i]}, stride "
                    f"{self.stride[i]}, pad {self.pad[i]}; rule: stride*(in-1) + dilation*(kernel-1) + 1 - 2*pad >= 1")
        return (f"convolution_param.kernel_size {self.kernel[i]} (extent {extent} with dilation {self.dilation[i]}) "
                f"is larger than the padded input {axis}: {size} + 2*pad {self.pad[i]} = {size + 2 * self.pad[i]}; "
                f"rule: dilation*(kernel-1) + 1 <= input + 2*pad")

    def _out_size(self, size: int, i: int) -> int:
        # Caffe: conv_layer.cpp / deconv_layer.cpp compute_output_shape (written once, in vggproto.caffe.shapes)
        rule = deconv_output_size if self.transposed else conv_output_size
        return rule(size, self.kernel[i], self.stride[i], self.pad[i], self.dilation[i])

    def convolve(self, x: torch.Tensor) -> torch.Tensor:
        outer = x.shape[:self.axis]
        if len(outer) != 1:  # one batch axis needs no flattening (keeps the batch symbolic for ONNX export)
            x = x.reshape(count(outer), *x.shape[self.axis:])
        bias = blob(self, 1) if self.bias_term else None
        kwargs = dict(stride=self.stride, padding=self.pad, dilation=self.dilation, groups=self.group)
        if self.transposed:
            y = _DECONV[len(self.kernel)](x, blob(self, 0), bias, **kwargs)
        else:
            y = _CONV[len(self.kernel)](x, blob(self, 0), bias, **kwargs)
        return y if len(outer) == 1 else y.reshape(*outer, *y.shape[1:])

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.accelerated is not None:
            return self.accelerated(self, *bottoms)
        return tuple(self.convolve(x) for x in bottoms)


@register("Convolution")
class Convolution(_BaseConv):
    """Caffe: src/caffe/layers/conv_layer.cpp — out = floor((in + 2p − (d(k−1)+1)) / s) + 1."""


@register("Deconvolution")
class Deconvolution(_BaseConv):
    """Caffe: src/caffe/layers/deconv_layer.cpp — out = s(in − 1) + d(k−1) + 1 − 2p."""

    transposed = True

