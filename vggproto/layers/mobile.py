"""Layers of the mobile/compact-net forks: ShuffleChannel, the two depthwise convolutions, Axpy, ReLU6 and Mish.

Each class names the fork that defines it (docs/notes/forks-schema.md §7 has the commits read).  The two depthwise
convolutions are BVLC Convolution with ``group = channels`` (same blobs, same geometry), so they reuse
:class:`vggproto.layers.conv.Convolution`; only the way each fork reads ``convolution_param`` differs.  Backward
passes are autograd's derivative of the forward where that is the fork's own formula; Mish has a custom one
because the fork's is not the derivative of its forward (see :class:`Mish`).
"""
from __future__ import annotations

import dataclasses
import logging

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.base import TRACED
from vggproto.layers.common import count
from vggproto.layers.conv import Convolution
from vggproto.layers.neuron import Neuron
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

log = logging.getLogger("vggproto.layers.mobile")


@register("ShuffleChannel")
class ShuffleChannel(CaffeLayer):
    """ShuffleNet's channel shuffle: with C = g·k, input channel i·k + j becomes output channel j·g + i."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(spec.bottom_shapes[0])
        self.group = int(spec.param.shuffle_channel_param.group)
        if self.group <= 0:
            raise spec.error(f"shuffle_channel_param.group must be positive, got {self.group}")
        if len(shape) < 2 or shape[1] % self.group:
            # farmingyard/ShuffleNet: shuffle_channel_layer.cpp — CHECK_EQ(chs, group_column * group_row)
            raise spec.error(f"shuffle_channel_param.group {self.group} must divide the channels of the bottom "
                             f"of shape {shape}")
        self.top_shapes = [shape]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        n, c = x.shape[:2]
        # farmingyard/ShuffleNet: shuffle_channel_layer.cpp Resize_cpu — (g, C/g) grid transposed, planes whole
        grid = x.reshape(n, self.group, c // self.group, *x.shape[2:])
        return (grid.transpose(1, 2).reshape(x.shape),)


def _depthwise_spec(spec: LayerSpec) -> LayerSpec:
    """``spec`` with ``convolution_param`` made a BVLC grouped convolution: num_output = group = channels."""
    shape = spec.bottom_shapes[0] if spec.bottom_shapes else ()
    if len(shape) != 4:
        raise spec.error(f"needs one 4-D (N, C, H, W) bottom, got shape {tuple(shape)}")
    channels = int(shape[1])
    param = caffe_pb2.LayerParameter()
    param.CopyFrom(spec.param)
    p = param.convolution_param
    if p.HasField("num_output") and p.num_output != channels:
        log.warning("layer '%s' (%s): convolution_param.num_output %d is ignored; a depthwise convolution "
                    "outputs one channel per input channel (%d)", spec.name, spec.type, p.num_output, channels)
    p.num_output, p.group = channels, channels
    p.ClearField("axis")   # the fork reads bottom[0]->channels(): axis 1 always
    return dataclasses.replace(spec, param=param)


@register("ConvolutionDepthwise")
class ConvolutionDepthwise(Convolution):
    """farmingyard/caffe-mobilenet's depthwise convolution: one k×k filter per input channel, weight
    [C, 1, kh, kw], bias [C], output channels = input channels (``num_output`` and ``group`` are not read).

    The fork reads ``pad(0)``/``stride(0)`` even when the prototxt gives none (an out-of-range read of an empty
    repeated field: undefined behaviour).  Here a missing ``pad`` is 0 and a missing ``stride`` is 1, BVLC's
    defaults; the published ShuffleNet deploy nets give both, so they are unaffected.
    """

    n_bottoms = 1

    def __init__(self, spec: LayerSpec):
        # farmingyard/caffe-mobilenet: conv_dw_layer.cpp LayerSetUp — weight [channels, 1, kh, kw]; pad/stride
        # read at index 0 even when absent (Convolution's defaults make them 0 and 1 here)
        super().__init__(_depthwise_spec(spec))


@register("DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """yonghenglh6/DepthwiseConvolution: a BaseConvolutionLayer with its own GPU kernel, so exactly BVLC
    Convolution with the prototxt's ``group`` (published nets set ``group = num_output = C``)."""

    # yonghenglh6/DepthwiseConvolution: depthwise_conv_layer.cpp — a BaseConvolutionLayer: Convolution's blobs,
    # shapes and math, only the GPU kernel differs


@register("Axpy")
class Axpy(CaffeLayer):
    """SENet's scale-and-add: top = a[n, c]·X + Y with bottoms (a, X, Y), a of shape N×C or N×C×1×1."""

    n_bottoms = 3
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        a, x, y = (tuple(s) for s in spec.bottom_shapes)
        # hujie-frank/SENet: src/caffe/layers/axpy_layer.cpp Reshape — a matches X on N and C, H = W = 1; Y = X
        if len(x) < 2 or len(a) < 2 or a[:2] != x[:2] or count(a, 2) != 1:
            raise spec.error(f"bottom 0 (the scale a) must be N×C or N×C×1×1 for X of shape {x}, got {a}")
        if x != y:
            raise spec.error(f"bottoms 1 (X) and 2 (Y) must have the same shape, got {x} and {y}")
        self.top_shapes = [x]

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor]:
        scale = a.reshape(*x.shape[:2], *([1] * (x.dim() - 2)))
        return (torch.addcmul(y, scale, x),)


@register("ReLU6")
class ReLU6(Neuron):
    """Caffe-MobileNetV2-ReLU6: min(max(x, 0) + negative_slope·min(x, 0), 6); gradient
    ((x > 0) + negative_slope·(x <= 0))·(x < 6).  Without ``relu6_param`` (OpenCV, other ReLU6 ports) the slope
    is 0: min(max(x, 0), 6)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        slope = float(self.spec.param.relu6_param.negative_slope)
        if slope == 0:
            return F.relu6(x)   # hardtanh's gradient mask is 0 < x < 6: the fork's (x > 0)·(x < 6)
        # rog93/Caffe-MobileNetV2-ReLU6: relu6_layer.cpp — min(max(x,0) + slope·min(x,0), 6); backward masks x < 6
        below = torch.where(x > 0, x, x * slope)
        linear = torch.where(x < 6, below, torch.zeros_like(x))
        return linear + (below.clamp(max=6) - linear).detach()


#: ChenYingpeng/darknet2caffe: caffe_layers/mish_layer/mish_layer.cpp — MISH_THRESHOLD
MISH_THRESHOLD = 20.0


def fork_softplus(x: torch.Tensor) -> torch.Tensor:
    """The fork's thresholded softplus: x above 20, exp(x) below −20, log(exp(x) + 1) between."""
    # darknet2caffe: mish_layer.cpp softplus_activate — x > t: x; x < -t: expf(x); else logf(expf(x) + 1)
    middle = torch.log(torch.exp(x.clamp(-MISH_THRESHOLD, MISH_THRESHOLD)) + 1)
    return torch.where(x > MISH_THRESHOLD, x, torch.where(x < -MISH_THRESHOLD, torch.exp(x), middle))


def mish_forward(x: torch.Tensor) -> torch.Tensor:
    """x·tanh(softplus(x)) with the fork's softplus and its tanh, 2 / (1 + exp(−2v)) − 1."""
    # darknet2caffe: mish_layer.cpp tanh_activate — (2 / (1 + expf(-2 * x)) - 1)
    return x * (2 / (1 + torch.exp(-2 * fork_softplus(x))) - 1)


class _MishFn(torch.autograd.Function):
    """The fork's Mish backward, which evaluates the derivative formula at the layer's *output*."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        y = mish_forward(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (y,) = ctx.saved_tensors
        # darknet2caffe: mish_layer.cpp Backward_cpu (and .cu) — inp = top_data[i]; sp = softplus(inp);
        # grad = inp·(1 − tanh²(sp))·(1 − exp(−sp)) + tanh(sp)
        sp = fork_softplus(y)
        tsp = torch.tanh(sp)
        return grad * (y * (1 - tsp * tsp) * (1 - torch.exp(-sp)) + tsp)


@register("Mish")
class Mish(Neuron):
    """YOLOv3-in-Caffe's Mish (ChenYingpeng/darknet2caffe): y = x·tanh(softplus(x)), softplus thresholded at
    ±20 (x above 20, exp(x) below −20).  ``mish_param`` holds only an engine choice.

    The fork's backward (CPU and GPU alike) computes the Mish derivative at the top value y instead of the
    bottom x (``inp = top_data[i]``); that is what training with the fork does, so it is reproduced here.  It is
    the true derivative only where y ≈ x (large positive x)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return _MishFn.apply(x)
