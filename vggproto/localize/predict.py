"""Object localisation as in Appendix A of the paper: box prediction, merging and the ILSVRC localisation error.

For each of the top-k classes of the classification net, boxes come from one or several localisation nets (the
last FC regresses ``(cx, cy, w, h)`` relative to the window, :mod:`vggproto.localize.boxes`), applied

* ``center``: to the centre crop of the image rescaled to each test scale Q (the paper's first protocol), or
* ``dense``: to the whole rescaled image, made fully convolutional (:mod:`vggproto.net.dense`): each position of the
  output map is the box prediction of one crop-sized window, ``stride`` pixels from the next (32 for VGG).

The union of all predictions (every net, scale and window) is merged per class with Sermanet et al.'s greedy
procedure (:func:`vggproto.localize.boxes.greedy_merge`), each prediction weighted by the class score of its window from
the classification net (its dense soft-max map, resampled to the localisation map); the best-rated merged box is
the answer for that class.  SCR nets (4 outputs) share the box over classes, PCR nets (4 × classes) have one per
class.  The ILSVRC criterion (:class:`LocErrorCount`): right if the true class is among the k predicted classes
and its box has IoU > 0.5 with a ground-truth box of that class.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.augment import rescaled_size
from vggproto.data.box_geometry import as_boxes, iou_matrix, target_to_corners, window_to_image
from vggproto.errors import DataError, VGGProtoError
from vggproto.localize.boxes import greedy_merge
from vggproto.vgg.configs import MEAN_BGR

log = logging.getLogger("vggproto.localize.predict")

MODES: tuple[str, ...] = ("center", "dense")
MAX_MERGE_BOXES = 1000   # greedy merging is O(n^2) memory: keep the best-scored predictions beyond this
IOU_THRESHOLD = 0.5   # ILSVRC: "intersection over union ratio with the ground-truth bounding box above 0.5"


# ------------------------------------------------------------------------------------------------ models

@dataclass
class LocModel:
    """One localisation net (dense form) with weights: where its box outputs are and how windows are laid out."""

    net: torch.nn.Module
    input_blob: str
    output_blob: str
    crop_size: int
    stride: int
    outputs: int            # 4 (SCR) or 4 x classes (PCR)
    label: str


def net_stride(param: caffe_pb2.NetParameter) -> int:
    """Product of the convolution and pooling strides of a net: the step between two dense windows."""
    stride = 1
    for layer in param.layer:
        if layer.type == "Convolution":
            p = layer.convolution_param
            stride *= p.stride_h or (p.stride[0] if len(p.stride) else 1)
        elif layer.type == "Pooling":
            p = layer.pooling_param
            stride *= p.stride_h or p.stride or 1
    return stride


def load_loc_model(model: str | os.PathLike, weights: str | os.PathLike | Mapping[str, list[np.ndarray]],
                   device: str = "cpu", engine: Callable | None = None) -> LocModel:
    """A localisation deploy net (ending in the box FC) or its dense net, with deploy or dense weights;
    ``engine`` puts it on another inference engine (``vggproto.commands.engine_option.engine_hook``)."""
    from vggproto.net.dense import load_dense
    net, dense = load_dense(model, weights, device)
    out = dense.score_blob
    if engine is not None:
        net = engine(net, (out,))
    outputs = int(net.blob_shapes[out][1])
    if outputs % 4:
        raise VGGProtoError(f"{model}: the output '{out}' has {outputs} channels; a localisation net predicts 4 "
                            f"(SCR) or 4 per class (PCR)")
    crop = int(dense.input_shape[-1]) if len(dense.input_shape) == 4 else 0
    return LocModel(net, dense.input_blob, out, crop, net_stride(dense.param), outputs,
                    f"{os.fspath(model)}:{weights if isinstance(weights, (str, os.PathLike)) else 'weights'}")


# ------------------------------------------------------------------------------------------------ options/results

@dataclass
class LocalizeOptions:
    """Mode, test scales Q, how many classes get a box, merging threshold and preprocessing."""

    mode: str = "center"
    scales: tuple[int, ...] = (256,)
    top: int = 5
    merge_threshold: float = 0.5
    mean: tuple[float, ...] = MEAN_BGR
    input_scale: float = 1.0            # multiplies the mean-subtracted image (transform_param.scale)


@dataclass
class Detection:
    """One class and its box (corners in the original image's pixels)."""

    label: int
    name: str
    score: float             # the classification posterior of the class
    box: list[float]
    box_score: float = 0.0   # the merged box's rating (sum of its windows' class scores)
    windows: int = 0         # predictions merged into it

    def as_dict(self) -> dict:
        return {"label": self.label, "name": self.name, "score": round(self.score, 6),
                "box": [round(float(v), 2) for v in self.box], "box_score": round(self.box_score, 6),
                "windows": self.windows}


# ------------------------------------------------------------------------------------------------ per image

def _prepare(img: np.ndarray, q: int, options: LocalizeOptions) -> tuple[torch.Tensor, tuple[float, float]]:
    """CHW tensor of the image rescaled to Q, mean removed, and the (fx, fy) rescale factors."""
    from vggproto.evaluation.views import preprocess
    chw = preprocess(img, q, options.mean)
    if options.input_scale != 1.0:
        chw *= np.float32(options.input_scale)
    h, w = img.shape[:2]
    rh, rw = rescaled_size(h, w, q) if q else (h, w)
    return torch.from_numpy(chw), (rw / w, rh / h)


def _window_input(image: torch.Tensor, crop: int, mode: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """The net input for ``mode`` and the (x0, y0) of its first window in the rescaled image."""
    if mode == "dense":
        return image[None], (0, 0)
    if image.shape[1] < crop or image.shape[2] < crop:
        raise DataError(f"the rescaled image {image.shape[1]}x{image.shape[2]} is smaller than the crop {crop}; "
                        f"use larger --scales")
    # Caffe: src/caffe/data_transformer.cpp — TEST phase centre crop at ((H - crop) / 2, (W - crop) / 2)
    y, x = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
    return image[None, :, y:y + crop, x:x + crop], (x, y)


def _forward(net, input_blob: str, output_blob: str, views: torch.Tensor) -> torch.Tensor:
    device = next(iter(net.parameters()), torch.zeros(0)).device
    net.forward(**{input_blob: views.to(device)})
    out = net.blobs[output_blob]
    return (out if out.dim() == 4 else out.reshape(*out.shape[:2], 1, 1))[0].float().cpu()


def _class_maps(cls_models, image: torch.Tensor, crop: int, mode: str) -> list[tuple[torch.Tensor, np.ndarray]]:
    """Per classification net: soft-max class posteriors per position (K × h × w) of ``mode``'s input, and the
    image posterior: the soft-max of the spatially averaged scores, as :mod:`vggproto.evaluation.evaluate` computes
    it."""
    maps = []
    for model in cls_models:
        views, _ = _window_input(image, crop, mode)
        scores = _forward(model.net, model.input_blob, model.score_blob, views).double()
        if scores.shape[1] * scores.shape[2] == 0:
            raise DataError(f"{model.label}: input {tuple(views.shape[2:])} is too small for the classification net")
        maps.append((torch.softmax(scores, dim=0), torch.softmax(scores.mean(dim=(1, 2)), dim=0).numpy()))
    return maps


def _resampled(score_map: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """A K × h' × w' map resampled to h × w (nearest), so every localisation window has a class score."""
    if tuple(score_map.shape[1:]) == (h, w):
        return score_map
    return torch.nn.functional.interpolate(score_map[None], size=(h, w), mode="nearest")[0]


@dataclass
class _Votes:
    """Every box prediction of one image, per class: corners and window scores."""

    boxes: dict[int, list[np.ndarray]] = field(default_factory=dict)
    scores: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def add(self, label: int, boxes: np.ndarray, scores: np.ndarray) -> None:
        self.boxes.setdefault(label, []).append(boxes)
        self.scores.setdefault(label, []).append(scores)


def _predict_windows(loc: LocModel, image: torch.Tensor, factor, mode: str, classes: Sequence[int],
                     class_maps: list[torch.Tensor], votes: _Votes) -> None:
    views, (x0, y0) = _window_input(image, loc.crop_size, mode)
    out = _forward(loc.net, loc.input_blob, loc.output_blob, views)        # C × h × w
    if out.shape[1] * out.shape[2] == 0:
        raise DataError(f"{loc.label}: input {tuple(views.shape[2:])} is too small for the localisation net")
    h, w = out.shape[1:]
    rated = torch.stack([_resampled(m, h, w) for m in class_maps]).mean(dim=0)   # fused classifiers
    ys, xs = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    offsets = np.stack([x0 + xs.ravel() * loc.stride, y0 + ys.ravel() * loc.stride], axis=1)
    flat = out.reshape(out.shape[0], -1).numpy().T                        # windows × C
    for c in classes:
        if loc.outputs != 4 and loc.outputs < 4 * (c + 1):
            raise VGGProtoError(f"{loc.label}: per-class regression with {loc.outputs // 4} classes has no box "
                                f"for class {c}")
        t = flat[:, :4] if loc.outputs == 4 else flat[:, 4 * c:4 * c + 4]
        corners = target_to_corners(t, loc.crop_size)
        boxes = np.concatenate([window_to_image(b, off, factor) for b, off in zip(corners, offsets)])
        votes.add(c, boxes, rated[c].reshape(-1).numpy())


def localize_image(img: np.ndarray, loc_models: Sequence[LocModel], cls_models: Sequence,
                   options: LocalizeOptions, names: Sequence[str] | None = None,
                   classes: Sequence[int] | None = None) -> list[Detection]:
    """Boxes for the top-``options.top`` classes of one HWC BGR image (or for ``classes`` when given: the
    paper's "GT class" protocol, where ``cls_models`` may be empty: every window then weighs 1), best class
    first."""
    if options.mode not in MODES:
        raise VGGProtoError(f"unknown --mode '{options.mode}'; supported: {', '.join(MODES)}")
    if not cls_models and classes is None:
        raise VGGProtoError("choosing the top classes needs a classification net (or pass the classes)")
    prepared = [(q, *_prepare(img, q, options)) for q in options.scales]
    crop = loc_models[0].crop_size
    maps = {q: _class_maps(cls_models, image, crop, options.mode) for q, image, _ in prepared}
    if not cls_models:   # GT-class protocol without a classifier: one "map" of ones over the needed classes
        k = max(classes) + 1
        maps = {q: [(torch.ones(k, 1, 1, dtype=torch.float64), np.ones(k))] for q, _, _ in prepared}
    # image posterior: averaged over nets and scales (Sect. 3.2)
    posterior = np.mean([post for q, _, _ in prepared for _, post in maps[q]], axis=0)
    chosen = list(classes) if classes is not None else [int(c) for c in np.argsort(-posterior, kind="stable")
                                                        [:options.top]]
    votes = _Votes()
    for q, image, factor in prepared:
        for loc in loc_models:
            _predict_windows(loc, image, factor, options.mode, chosen, [m for m, _ in maps[q]], votes)
    out = []
    for c in chosen:
        boxes, scores = np.concatenate(votes.boxes[c]), np.concatenate(votes.scores[c])
        if len(scores) > MAX_MERGE_BOXES:   # VGG at Q=512 has ~100 windows per scale; tiny-stride nets many more
            log.debug("class %d: merging the %d best of %d box predictions", c, MAX_MERGE_BOXES, len(scores))
            keep = np.argsort(-scores, kind="stable")[:MAX_MERGE_BOXES]
            boxes, scores = boxes[keep], scores[keep]
        merged = greedy_merge(boxes, scores, options.merge_threshold)
        best = merged[0]
        name = names[c] if names is not None and c < len(names) else str(c)
        out.append(Detection(c, name, float(posterior[c]), [float(v) for v in best.box], best.score, best.count))
    return out


# ------------------------------------------------------------------------------------------------ metric

def detection_correct(detections: Sequence[Detection], label: int, gt_boxes: np.typing.ArrayLike, top: int = 5,
                      threshold: float = IOU_THRESHOLD) -> bool:
    """ILSVRC localisation criterion: one of the first ``top`` detections has the true class and a box with
    IoU > ``threshold`` with one of the ground-truth boxes."""
    gt = as_boxes(gt_boxes)
    for det in list(detections)[:top]:
        if det.label == label and gt.size and float(iou_matrix(det.box, gt).max()) > threshold:
            return True
    return False


@dataclass
class LocErrorCount:
    """Running top-k localisation and GT-class localisation misses (percent errors, as Tables 8-9 print)."""

    images: int = 0
    top_misses: int = 0
    gt_class_misses: int = 0

    def add(self, detections: Sequence[Detection], gt_class_detection: Detection | None, label: int,
            gt_boxes: np.typing.ArrayLike, top: int = 5) -> None:
        self.images += 1
        self.top_misses += not detection_correct(detections, label, gt_boxes, top)
        if gt_class_detection is not None:
            self.gt_class_misses += not detection_correct([gt_class_detection], label, gt_boxes, 1)

    def errors(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"localization_error": 100.0 * self.top_misses / n,
                "gt_class_localization_error": 100.0 * self.gt_class_misses / n}
