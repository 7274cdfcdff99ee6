"""Classification heads: Softmax, SoftmaxWithLoss, Accuracy and ArgMax.

Accuracy and ArgMax are forward-only in Caffe (NOT_IMPLEMENTED backward), so their tops carry no gradient.
SoftmaxWithLoss follows Caffe's label/ignore/normalisation rules and its FLT_MIN clamp (forward only, so the
backward stays prob - onehot, scaled by loss_weight / normaliser).
"""
from __future__ import annotations

import math

import torch

from vggproto.layers.axes import canonical_axis, count, softmax_along
from vggproto.layers.base import TRACED
from vggproto.layers.loss import (
    ClassificationLoss,
    clamp_forward_only,
    class_labels,
    class_positions,
    normalize,
)
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

#: -log(FLT_MIN): Caffe clamps the probability of the true class at FLT_MIN before the log.
MAX_NLL = -math.log(1.1754943508222875e-38)


@register("Softmax")
class Softmax(CaffeLayer):
    """exp(x - max) / sum over ``softmax_param.axis`` (default 1; every other axis independent)."""
    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(spec.bottom_shapes[0])
        self.axis = canonical_axis(spec, spec.param.softmax_param.axis, shape, "softmax_param.axis")
        self.top_shapes = [shape]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (softmax_along(bottoms[0], self.axis),)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(ClassificationLoss):
    """Multinomial logistic loss of softmax(score) over ``softmax_param.axis``; optional 2nd top = probabilities."""

    n_bottoms = 2
    axis_field = "softmax_param.axis"

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.class_weights = self._class_weights(spec, self.classes)

    @staticmethod
    def _class_weights(spec: LayerSpec, classes: int) -> tuple[float, ...] | None:
        """SegNet / ENet's weighted loss: each position's loss times ``class_weighting[label]``, the normaliser
        (the count of positions) unchanged; None without ``weight_by_label_freqs``."""
        p = spec.param.loss_param
        if not p.weight_by_label_freqs:
            return None
        # SegNet: src/caffe/layers/softmax_loss_layer.cpp LayerSetUp — one class_weighting value per class
        if len(p.class_weighting) != classes:
            raise spec.error(f"loss_param.weight_by_label_freqs needs one class_weighting value per class "
                             f"({classes}), got {len(p.class_weighting)}")
        return tuple(p.class_weighting)

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, label = bottoms
        logp = softmax_along(x.reshape(self.outer, self.classes, self.inner), 1, log=True)
        lab, valid = class_labels(self.spec, label, self.classes, self.ignore)
        picked = logp.gather(1, lab.reshape(self.outer, 1, self.inner)).reshape(self.outer, self.inner)
        # Caffe: src/caffe/layers/softmax_loss_layer.cpp — loss -= log(max(prob, FLT_MIN)); ignored positions add 0
        nll = clamp_forward_only(-picked, high=MAX_NLL)
        valid = valid.reshape(self.outer, self.inner)
        nll = torch.where(valid, nll, torch.zeros_like(nll))
        if self.class_weights is not None:
            # SegNet: src/caffe/layers/softmax_loss_layer.cpp — loss −= log(prob)·class_weighting[label]
            weights = torch.tensor(self.class_weights, dtype=nll.dtype, device=nll.device)
            nll = nll * weights[lab].reshape(self.outer, self.inner)
        loss = normalize(nll.sum(), self.mode, self.outer, self.inner, valid.sum())
        return self.with_probabilities(loss, x)


@register("Accuracy")
class Accuracy(CaffeLayer):
    """Top-k accuracy with Caffe's tie rule; optional 2nd top = per-class accuracy (0 for absent classes)."""
    n_bottoms = 2
    onnx = TRACED
    backward = False   # Caffe: accuracy_layer.cpp, NOT_IMPLEMENTED

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.accuracy_param
        shape = tuple(spec.bottom_shapes[0])
        self.axis, self.outer, self.inner, self.classes = class_positions(spec, "accuracy_param.axis")
        if not 1 <= p.top_k <= self.classes:
            raise spec.error(f"accuracy_param.top_k {p.top_k} must be between 1 and the number of classes "
                             f"{self.classes} (axis {self.axis} of {shape})")
        self.top_k = p.top_k
        self.ignore = p.ignore_label if p.HasField("ignore_label") else None
        self.top_shapes = [()] + ([(self.classes,)] if len(spec.param.top) > 1 else [])

    @torch.no_grad()
    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, label = bottoms
        scores = x.detach().reshape(self.outer, self.classes, self.inner)
        lab, valid = class_labels(self.spec, label, self.classes, self.ignore)
        true = scores.gather(1, lab.reshape(self.outer, 1, self.inner))
        # Caffe: src/caffe/layers/accuracy_layer.cpp — count classes scoring >= the true class, the true class
        # itself excluded (the count starts at -1); correct iff that count < top_k, so ties count against.
        better = (scores >= true).sum(dim=1).reshape(-1) - 1
        correct = valid & (better < self.top_k)
        # no valid label: 0 correct / max(1, 0) = 0, Caffe's value for an empty count
        acc = correct.sum().to(x.dtype) / valid.sum().clamp(min=1)
        if len(self.top_shapes) == 1:
            return (acc,)
        seen = torch.bincount(lab[valid], minlength=self.classes).to(x.dtype)
        hits = torch.bincount(lab[correct], minlength=self.classes).to(x.dtype)
        per_class = torch.where(seen > 0, hits / seen.clamp(min=1), torch.zeros_like(seen))
        return acc, per_class


def _sorted_desc(x: torch.Tensor, dim: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values along ``dim`` and their indices; ties put the larger index first."""
    # Caffe: src/caffe/layers/argmax_layer.cpp — partial_sort of (value, index) pairs with std::greater
    n = x.shape[dim]
    if torch.onnx.is_in_onnx_export():   # ONNX TopK (the exporter has no stable Sort): ties keep the lower
        values, index = torch.topk(x.flip(dim), k, dim=dim)   # index of the flipped axis, as the sort does
        return values, n - 1 - index
    values, index = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    return values.narrow(dim, 0, k), (n - 1 - index).narrow(dim, 0, k)


@register("ArgMax")
class ArgMax(CaffeLayer):
    """Indices (and optionally values) of the top_k maxima, per sample or along ``axis`` (stored as floats)."""
    n_bottoms = 1
    onnx = TRACED
    backward = False   # Caffe: argmax_layer.hpp, NOT_IMPLEMENTED

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.argmax_param
        shape = tuple(spec.bottom_shapes[0])
        self.top_k, self.out_max_val = p.top_k, p.out_max_val
        self.axis = canonical_axis(spec, p.axis, shape, "argmax_param.axis") if p.HasField("axis") else None
        limit = shape[self.axis] if self.axis is not None else count(shape, 1)
        if not 1 <= self.top_k <= limit:
            where = f"axis {self.axis}" if self.axis is not None else "the per-sample count C*H*W"
            raise spec.error(f"argmax_param.top_k {self.top_k} must be between 1 and {limit} ({where} of {shape})")
        if self.axis is not None:
            top = list(shape)
            top[self.axis] = self.top_k
        else:
            # Caffe: src/caffe/layers/argmax_layer.cpp — at least 3 axes: N x (1 or 2) x top_k (x 1 ...)
            top = [1] * max(3, len(shape))
            top[0], top[1], top[2] = shape[0], 2 if self.out_max_val else 1, self.top_k
        self.top_shapes = [tuple(top)]

    @torch.no_grad()
    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = bottoms[0].detach()
        if self.axis is not None:
            values, index = _sorted_desc(x, self.axis, self.top_k)
            return (values if self.out_max_val else index.to(x.dtype),)
        values, index = _sorted_desc(x.reshape(x.shape[0], -1), 1, self.top_k)
        parts = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
        top = torch.stack(parts, dim=1)  # N x (1|2) x top_k: indices first, then values
        shape = (x.shape[0],) + self.top_shapes[0][1:]
        return (top.reshape(shape),)
