"""Element-wise ("neuron") layers: one bottom, one top of the same shape, usually run in place.

Each forward follows the Caffe source named in its docstring; the backward is autograd's derivative of the same
expression, which is what Caffe's hand-written Backward_cpu computes (checked against golden Caffe diffs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


class Neuron(CaffeLayer):
    """One bottom, one top of the same shape."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.top_shapes = [tuple(spec.bottom_shapes[0])]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (self.apply(x),)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register("ReLU")
class ReLU(Neuron):
    """Caffe: relu_layer.cpp — max(0,x) + negative_slope·min(0,x); slope used for x <= 0 in backward."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        slope = self.spec.param.relu_param.negative_slope
        # in place like Caffe's in-place ReLU (and torchvision's inplace=True) when no gradient is recorded
        # in place only when no graph is recorded, and never while tracing (the trace must not depend on grad mode)
        overwrite = self.may_overwrite and not (torch.is_grad_enabled() and x.requires_grad) \
            and not torch.jit.is_tracing()
        if slope == 0:   # derivative 0 at x = 0, as Caffe's (x > 0)
            return torch.relu_(x) if overwrite else torch.relu(x)
        return F.leaky_relu(x, slope, inplace=overwrite)   # derivative `slope` at x = 0, as Caffe's slope·(x <= 0)


@register("PReLU")
class PReLU(Neuron):
    """Caffe: prelu_layer.cpp — per-channel (or one shared, 0-axis blob) slope, default filler constant 0.25."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.prelu_param
        shape = spec.bottom_shapes[0]
        if len(shape) < 2:
            raise spec.error(f"PReLU needs a bottom with at least 2 axes, got shape {shape}")
        filler = caffe_pb2.FillerParameter()
        if p.HasField("filler"):
            filler.CopyFrom(p.filler)
        else:
            filler.type, filler.value = "constant", 0.25
        self.shared = p.channel_shared
        self.add_blob(() if self.shared else (shape[1],), filler)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        slope = blob(self, 0)
        if not self.shared:
            slope = slope.view(1, -1, *([1] * (x.dim() - 2)))
        return torch.where(x > 0, x, x * slope)


@register("ELU")
class ELU(Neuron):
    """Caffe: elu_layer.cpp — x if x > 0 else alpha·(exp(x) − 1)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.spec.param.elu_param.alpha
        if torch.onnx.is_in_onnx_export():   # ONNX has no Expm1; exp − 1 differs by < 1 ulp of 1
            return torch.where(x > 0, x, alpha * (torch.exp(torch.clamp(x, max=0)) - 1))
        return torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0)))


@register("Sigmoid")
class Sigmoid(Neuron):
    """Caffe: sigmoid_layer.cpp — 1/(1+exp(−x))."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(x)


@register("TanH")
class TanH(Neuron):
    """Caffe: tanh_layer.cpp."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x)


@register("AbsVal")
class AbsVal(Neuron):
    """Caffe: absval_layer.cpp — |x|, derivative sign(x) (0 at 0)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return torch.abs(x)


@register("BNLL")
class BNLL(Neuron):
    """Caffe: bnll_layer.cpp — log(1 + exp(x)), computed stably."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return F.softplus(x, beta=1.0, threshold=50.0)


@register("Power")
class Power(Neuron):
    """Caffe: power_layer.cpp — (shift + scale·x)^power."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.spec.param.power_param
        base = x * p.scale + p.shift if p.scale != 1 or p.shift != 0 else x
        if p.power == 1:
            return base if base is not x else x.clone()
        return torch.pow(base, p.power)


@register("Exp")
class Exp(Neuron):
    """Caffe: exp_layer.cpp — base^(shift + scale·x); base −1 means e."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.exp_param
        if p.base != -1 and p.base <= 0:
            raise spec.error(f"exp_param.base must be -1 (e) or positive, got {p.base}")
        log_base = 1.0 if p.base == -1 else math.log(p.base)
        self.inner = log_base * p.scale
        self.outer = math.exp(log_base * p.shift)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.exp(x * self.inner)
        return y * self.outer if self.outer != 1 else y


@register("Log")
class Log(Neuron):
    """Caffe: log_layer.cpp — log_base(shift + scale·x); base −1 means natural log."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.log_param
        if p.base != -1 and p.base <= 0:
            raise spec.error(f"log_param.base must be -1 (e) or positive, got {p.base}")
        self.base_scale = 1.0 if p.base == -1 else 1.0 / math.log(p.base)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.spec.param.log_param
        y = torch.log(x * p.scale + p.shift)
        return y * self.base_scale if self.base_scale != 1 else y


@register("Threshold")
class Threshold(Neuron):
    """Caffe: threshold_layer.cpp — 1 where x > threshold else 0; no backward (NOT_IMPLEMENTED in Caffe)."""
    backward = False   # Caffe: threshold_layer.hpp, NOT_IMPLEMENTED

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x.detach() > self.spec.param.threshold_param.threshold).to(x.dtype)


@register("Clip")
class Clip(Neuron):
    """Caffe: clip_layer.cpp — clamp to [min, max]; gradient passes where min <= x <= max."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise spec.error("clip_param.min and clip_param.max are required")
        if p.min > p.max:
            raise spec.error(f"clip_param.min ({p.min}) must not exceed max ({p.max})")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        p = self.spec.param.clip_param
        return torch.clamp(x, p.min, p.max)


@register("Swish")
class Swish(Neuron):
    """Caffe: swish_layer.cpp — x·sigmoid(beta·x)."""

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x * self.spec.param.swish_param.beta)


@register("Dropout")
class Dropout(Neuron):
    """Caffe: dropout_layer.cpp — TRAIN: x·mask/(1 − ratio) with mask ~ Bernoulli(1 − ratio); TEST: identity.

    Two forks' fields change that: ``scale_train: false`` (Faster R-CNN, OpenCV; for MSRA-trained nets) keeps
    the mask unscaled in TRAIN and multiplies by (1 − ratio) in TEST, and ``sample_weights_test: true`` (SegNet,
    ENet; Monte-Carlo / Bayesian SegNet) samples the mask in TEST too.
    """

    @classmethod
    def onnx_refusal(cls, param: caffe_pb2.LayerParameter, phase: str) -> str | None:
        """TRAIN-phase dropout draws a random mask an ONNX graph cannot reproduce (Caffe: dropout_layer.cpp)."""
        return "TRAIN-phase dropout draws a random mask; export the TEST phase" if phase == "TRAIN" else None

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.dropout_param
        ratio = p.dropout_ratio
        if not 0.0 <= ratio < 1.0:
            raise spec.error(f"dropout_param.dropout_ratio must be in [0, 1), got {ratio}")
        self.ratio, self.scale_train = ratio, p.scale_train
        # SegNet: src/caffe/layers/dropout_layer.cpp — phase == TRAIN || sample_weights_test
        self.sample = spec.train or p.sample_weights_test

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sample or self.ratio == 0:
            # Faster R-CNN: src/caffe/layers/dropout_layer.cpp — scale_train false: TEST gives x·(1 − ratio)
            return x if self.scale_train else x * (1.0 - self.ratio)
        if self.scale_train:
            return F.dropout(x, self.ratio, training=True)
        # Faster R-CNN: src/caffe/layers/dropout_layer.cpp — scale_train false: TRAIN gives x·mask, unscaled
        return x * torch.empty_like(x).bernoulli_(1.0 - self.ratio)
