"""Loss layers: EuclideanLoss, SigmoidCrossEntropyLoss, HingeLoss, MultinomialLogisticLoss, InfogainLoss,
ContrastiveLoss, plus the label/normalisation helpers SoftmaxWithLoss shares (see ``softmax.py``).

Every loss top is a 0-axis scalar holding the UNweighted loss; the Net multiplies by ``loss_weight``, so autograd
seeds each loss with its weight exactly as Caffe seeds the top diff. Forward-only clamps of Caffe (FLT_MIN,
kLOG_THRESHOLD) are applied "straight through" so the backward stays Caffe's formula, and ContrastiveLoss gets a
custom Function for Caffe's ``dist + 1e-4`` denominator.
"""
from __future__ import annotations

import math
import os
from typing import ClassVar

import torch
import torch.nn.functional as F

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import DataError, VGGProtoError
from vggproto.layers.axes import canonical_axis, count, softmax_along
from vggproto.layers.base import NO_ONNX_LOSS
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

_LOSS = caffe_pb2.LossParameter
#: Caffe: src/caffe/layers/multinomial_logistic_loss_layer.cpp — kLOG_THRESHOLD
LOG_THRESHOLD = 1e-20


def normalization_mode(spec: LayerSpec, default: int = _LOSS.VALID) -> int:
    """``loss_param.normalization``, else the deprecated ``normalize`` (true = VALID, false = BATCH_SIZE)."""
    p = spec.param.loss_param
    # Caffe: src/caffe/layers/softmax_loss_layer.cpp LayerSetUp — normalization wins over normalize
    if p.HasField("normalization"):
        return p.normalization
    if p.HasField("normalize"):
        return _LOSS.VALID if p.normalize else _LOSS.BATCH_SIZE
    return default


def normalize(total: torch.Tensor, mode: int, outer: int, inner: int, valid: torch.Tensor) -> torch.Tensor:
    """``total`` divided by Caffe's normaliser for ``mode`` (never below 1)."""
    # Caffe: src/caffe/layers/softmax_loss_layer.cpp get_normalizer — FULL/VALID/BATCH_SIZE/NONE, then max(1, n)
    if mode == _LOSS.VALID:
        return total / valid.to(total.dtype).clamp(min=1)
    n = {_LOSS.FULL: outer * inner, _LOSS.BATCH_SIZE: outer}.get(mode, 1)
    return total / max(1, n)


def ignore_label(spec: LayerSpec) -> int | None:
    p = spec.param.loss_param
    return p.ignore_label if p.HasField("ignore_label") else None


def class_labels(spec: LayerSpec, label: torch.Tensor, num_classes: int,
                 ignore: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer labels (ignored ones set to 0) and the mask of counted positions; a DataError for a bad label."""
    flat = label.detach().reshape(-1)
    if flat.is_floating_point() and not bool(torch.isfinite(flat).all()):
        # Caffe's static_cast<int>(NaN) is undefined (x86: INT_MIN); name the real cause instead
        bad_value = flat[~torch.isfinite(flat)][0].item()
        raise DataError(f"layer '{spec.name}' ({spec.type}): label {bad_value} (at position "
                        f"{int((~torch.isfinite(flat)).nonzero()[0])}) is not a finite number; labels must be "
                        f"class indices in [0, {num_classes - 1}]")
    lab = flat.long()  # Caffe: static_cast<int>(label)
    valid = lab != ignore if ignore is not None else torch.ones_like(lab, dtype=torch.bool)
    bad = valid & ((lab < 0) | (lab >= num_classes))
    if bool(bad.any()):
        raise DataError(f"layer '{spec.name}' ({spec.type}): label {lab[bad][0].item()} is outside the "
                        f"{num_classes} classes [0, {num_classes - 1}]"
                        + (f" and is not the ignore_label {ignore}" if ignore is not None else ""))
    return torch.where(valid, lab, torch.zeros_like(lab)), valid


def check_label_count(spec: LayerSpec, outer: int, inner: int, axis: int, which: int = 1) -> None:
    """Caffe's "number of labels must match number of predictions" check, naming both shapes."""
    pred, label = spec.bottom_shapes[0], spec.bottom_shapes[which]
    if count(label) != outer * inner:
        raise spec.error(f"the label bottom has shape {tuple(label)} ({count(label)} labels) but the prediction "
                         f"{tuple(pred)} with axis {axis} needs {outer * inner} (one per position outside the "
                         f"class axis, integer values in [0, {pred[axis] - 1}])")


def class_positions(spec: LayerSpec, field: str) -> tuple[int, int, int, int]:
    """Caffe's Reshape of a per-position classifier (softmax_loss_layer.cpp, infogain_loss_layer.cpp,
    accuracy_layer.cpp): the class axis of bottom 0 from ``field`` ("softmax_param.axis"), made non-negative; the
    positions before it (outer) and after it (inner); the number of classes -- with one label per position in
    bottom 1 checked.  Returns ``(axis, outer, inner, classes)``."""
    message, name = field.split(".")
    shape = tuple(spec.bottom_shapes[0])
    axis = canonical_axis(spec, getattr(getattr(spec.param, message), name), shape, field)
    outer, inner = count(shape, 0, axis), count(shape, axis + 1)
    check_label_count(spec, outer, inner, axis)
    return axis, outer, inner, shape[axis]


def check_same_num(spec: LayerSpec) -> None:
    a, b = (tuple(s) for s in spec.bottom_shapes[:2])
    # Caffe: src/caffe/layers/loss_layer.cpp Reshape — first dimensions must agree
    if not a or not b or a[0] != b[0]:
        raise spec.error(f"bottom 0 has shape {a} and bottom 1 has shape {b}: their first dimensions must agree")


def clamp_forward_only(value: torch.Tensor, low: float | None = None, high: float | None = None) -> torch.Tensor:
    """``value`` clamped in the forward pass only; the gradient is that of the unclamped ``value``."""
    return value + (value.clamp(min=low, max=high) - value).detach()


class LossLayer(CaffeLayer):
    """Base of the loss layers: scalar top 0, loss_weight 1 by default (Caffe's LossLayer)."""

    is_loss = True
    onnx = NO_ONNX_LOSS
    backward = True


class ClassificationLoss(LossLayer):
    """Base of the losses of a prediction with a class axis and one integer label per position (SoftmaxWithLoss,
    InfogainLoss): Caffe's shared Reshape (same first dimension, the class axis, one label per position),
    ``loss_param``'s normalisation and ignore_label, and the optional second top of softmax probabilities."""

    #: The field holding the class axis, "message.axis" (no default: each loss names its own).
    axis_field: ClassVar[str]

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        check_same_num(spec)
        self.axis, self.outer, self.inner, self.classes = class_positions(spec, self.axis_field)
        self.mode, self.ignore = normalization_mode(spec), ignore_label(spec)
        shape = tuple(spec.bottom_shapes[0])
        self.top_shapes = [()] + ([shape] if len(spec.param.top) > 1 else [])

    def with_probabilities(self, loss: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The tops: ``loss``, then softmax(``x``) over the class axis when a second top is named."""
        return (loss, softmax_along(x, self.axis)) if len(self.top_shapes) == 2 else (loss,)


@register("EuclideanLoss")
class EuclideanLoss(LossLayer):
    """sum((a - b)^2) / (2 N); gradients to both bottoms."""

    n_bottoms = 2

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        check_same_num(spec)
        a, b = spec.bottom_shapes
        if count(a, 1) != count(b, 1):
            raise spec.error(f"bottoms of shapes {tuple(a)} and {tuple(b)} must have the same dimension per sample")
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b = bottoms
        diff = a.reshape(a.shape[0], -1) - b.reshape(b.shape[0], -1)
        return ((diff * diff).sum() / a.shape[0] / 2,)  # Caffe: euclidean_loss_layer.cpp — dot / num / 2


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossLayer):
    """Cross-entropy of sigmoid(score) against targets in [0, 1]; default normalisation BATCH_SIZE."""

    n_bottoms = 2

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        a, b = spec.bottom_shapes
        if count(a) != count(b):
            raise spec.error(f"score {tuple(a)} and target {tuple(b)} must have the same number of elements")
        # Caffe: src/caffe/layers/sigmoid_cross_entropy_loss_layer.cpp — BATCH_SIZE unless set
        self.mode = normalization_mode(spec, default=_LOSS.BATCH_SIZE)
        self.ignore = ignore_label(spec)
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, t = bottoms
        t = t.detach().reshape(x.shape).to(x.dtype)
        elem = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if self.ignore is not None:
            valid = t.long() != self.ignore
            elem = torch.where(valid, elem, torch.zeros_like(elem))
            n_valid = valid.sum()
        else:
            n_valid = torch.tensor(x.numel(), device=x.device)
        outer = x.shape[0] if x.dim() else 1
        return (normalize(elem.sum(), self.mode, outer, x.numel() // max(1, outer), n_valid),)


def _one_label_per_sample(spec: LayerSpec) -> int:
    """Setup shared by the losses with one label per sample (scores, label): returns C·H·W of the scores."""
    check_same_num(spec)
    shape = tuple(spec.bottom_shapes[0])
    check_label_count(spec, shape[0], 1, 1)
    return count(shape, 1)


@register("HingeLoss")
class HingeLoss(LossLayer):
    """One-vs-all hinge loss: sum max(0, 1 - s·y_k)^p / N with y_k = +1 for the label, -1 otherwise."""

    n_bottoms = 2

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.dim = _one_label_per_sample(spec)
        self.squared = spec.param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        score, label = bottoms
        num = score.shape[0]
        flat = score.reshape(num, -1)
        lab, _ = class_labels(self.spec, label, self.dim, None)
        sign = torch.ones_like(flat).scatter(1, lab.unsqueeze(1), -1.0)
        # Caffe: src/caffe/layers/hinge_loss_layer.cpp — max(0, 1 + (label ? -s : s)); L1 asum, L2 sumsq; / num
        margin = torch.relu(1 + flat * sign)
        total = (margin * margin).sum() if self.squared else margin.sum()
        return (total / num,)


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossLayer):
    """-sum log(max(p_label, 1e-20)) / N over probabilities p (Caffe's clamp keeps the -1/1e-20 gradient)."""

    n_bottoms = 2

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.dim = _one_label_per_sample(spec)
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        prob, label = bottoms
        num = prob.shape[0]
        lab, _ = class_labels(self.spec, label, self.dim, None)
        p = prob.reshape(num, -1).gather(1, lab.unsqueeze(1))
        return (-torch.log(clamp_forward_only(p, low=LOG_THRESHOLD)).sum() / num,)


def _read_infogain(spec: LayerSpec, source: str) -> torch.Tensor:
    """The infogain matrix H from a BlobProto file (text or binary), resolved like the net's other paths."""
    from vggproto.caffe.prototxt import read_message
    candidates = [source]
    if not os.path.isabs(source) and spec.path:
        candidates.insert(0, os.path.join(os.path.dirname(os.path.abspath(spec.path)), source))
    path = next((c for c in candidates if os.path.isfile(c)), None)
    if path is None:
        raise spec.error(f"infogain_loss_param.source '{source}' not found (looked in {', '.join(candidates)})")
    try:
        blob = read_message(path, caffe_pb2.BlobProto())
    except VGGProtoError as exc:
        raise spec.error(f"infogain_loss_param.source '{path}' is not a BlobProto: {exc}") from exc
    values = list(blob.data) or list(blob.double_data)
    return torch.tensor(values, dtype=torch.float64)


@register("InfogainLoss")
class InfogainLoss(ClassificationLoss):
    """-sum_l H[label, l] log(max(softmax(x)_l, 1e-20)) / normaliser (softmax inside, as in Caffe master)."""

    n_bottoms = (2, 3)
    axis_field = "infogain_loss_param.axis"

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(spec.bottom_shapes[0])
        if len(spec.bottom_shapes) == 3:
            h_count, where = count(spec.bottom_shapes[2]), f"bottom 2 of shape {tuple(spec.bottom_shapes[2])}"
            self.register_buffer("infogain", None, persistent=False)
        else:
            source = spec.param.infogain_loss_param.source
            if not source:
                raise spec.error("give the infogain matrix H as a third bottom or in infogain_loss_param.source")
            matrix = _read_infogain(spec, source)
            h_count, where = matrix.numel(), f"infogain_loss_param.source '{source}'"
            self.register_buffer("infogain", matrix.float(), persistent=False)
        # Caffe: src/caffe/layers/infogain_loss_layer.cpp — H must be num_labels x num_labels
        if h_count != self.classes ** 2:
            raise spec.error(f"the infogain matrix from {where} has {h_count} values; the prediction "
                             f"{shape} has {self.classes} classes on axis {self.axis}, so H must be "
                             f"{self.classes}x{self.classes}")

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x, label = bottoms[:2]
        h = (bottoms[2] if len(bottoms) == 3 else self.infogain).detach().to(x.dtype)
        h = h.reshape(self.classes, self.classes)
        scores = x.reshape(self.outer, self.classes, self.inner)
        logp = clamp_forward_only(softmax_along(scores, 1, log=True), low=math.log(LOG_THRESHOLD))
        lab, valid = class_labels(self.spec, label, self.classes, self.ignore)
        weights = h[lab].reshape(self.outer, self.inner, self.classes).transpose(1, 2)  # H[label, l] per position
        weights = weights * valid.reshape(self.outer, 1, self.inner).to(x.dtype)
        loss = normalize(-(weights * logp).sum(), self.mode, self.outer, self.inner, valid.sum())
        return self.with_probabilities(loss, x)


class _ContrastiveFn(torch.autograd.Function):
    """Caffe's contrastive loss with its backward (``dist + 1e-4`` denominator for dissimilar pairs)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, similar: torch.Tensor, margin: float,
                legacy: bool) -> torch.Tensor:
        num = a.shape[0]
        diff = (a - b).reshape(num, -1)
        dist_sq = (diff * diff).sum(dim=1)
        if legacy:
            dissimilar = (margin - dist_sq).clamp(min=0)
        else:
            dissimilar = (margin - dist_sq.sqrt()).clamp(min=0) ** 2
        loss = torch.where(similar, dist_sq, dissimilar).sum() / num / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shape = margin, legacy, a.shape
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        diff, dist_sq, similar = ctx.saved_tensors
        alpha = grad / diff.shape[0]
        # Caffe: src/caffe/layers/contrastive_loss_layer.cpp Backward_cpu
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(dist_sq)
        else:
            dist = dist_sq.sqrt()
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        beta = torch.where(mdist > 0, beta, torch.zeros_like(beta))
        coef = torch.where(similar, alpha * torch.ones_like(beta), beta)
        grad_a = (coef.unsqueeze(1) * diff).reshape(ctx.shape)
        return grad_a, -grad_a, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(LossLayer):
    """Siamese loss: d^2 for similar pairs, max(margin - d, 0)^2 (legacy: max(margin - d^2, 0)) otherwise; / 2N."""

    n_bottoms = 3

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        a, b, y = (tuple(s) for s in spec.bottom_shapes)
        if a != b:
            raise spec.error(f"the two feature bottoms must have the same shape, got {a} and {b}")
        if not a or count(y) != a[0]:
            raise spec.error(f"the similarity bottom 2 of shape {y} needs one value per pair ({a[0] if a else 0})")
        p = spec.param.contrastive_loss_param
        self.margin, self.legacy = float(p.margin), bool(p.legacy_version)
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        a, b, y = bottoms
        similar = y.detach().reshape(-1).long() != 0  # Caffe: static_cast<int>(y) — non-zero means similar
        return (_ContrastiveFn.apply(a, b, similar, self.margin, self.legacy),)
