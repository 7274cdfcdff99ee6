"""SSD's detection layers — Normalize, Permute, PriorBox, DetectionOutput — and OpenCV dnn's readings of them.

They come from weiliu89/caffe (branch ssd: ``src/caffe/layers/*_layer.cpp``, ``src/caffe/util/bbox_util.cpp``) and
end every published SSD deploy net (VGG-SSD, MobileNet-SSD, OpenCV's face detector).  OpenCV's dnn reads the same
text with its own schema and its own layer defaults; where that changes a result the layer follows ``spec.dialect``:
in ``opencv`` PriorBox clips by default, keeps fractional sizes, takes the image size from bottom 1 and needs a
variance, and DetectionOutput has ``normalized_bbox``, a confidence threshold of 0 by default and no ``eta``.
Facts and source paths: docs/notes/forks-schema.md, sections 1 (SSD) and 6 (OpenCV).

Normalize backpropagates through autograd (the derivative of SSD's expression, which its Backward computes); Permute
is a transpose; PriorBox depends only on shapes and DetectionOutput has no backward in SSD, so their tops carry no
gradient.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.base import TRACED
from vggproto.layers.common import blob, count
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

log = logging.getLogger("vggproto.layers.detection")

CodeType = caffe_pb2.PriorBoxParameter
FLT_MAX = 3.4028234663852886e38
OPENCV = "opencv"


@register("Normalize")
class Normalize(CaffeLayer):
    """L2-normalise each sample over (C, H, W) (``across_spatial``) or each position over C, times a learned scale."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.norm_param
        shape = tuple(spec.bottom_shapes[0])
        if len(shape) < 2:
            raise spec.error(f"Normalize needs a bottom with at least 2 axes (N, C, ...), got shape {shape}")
        filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
        if p.HasField("scale_filler"):   # SSD: src/caffe/layers/normalize_layer.cpp — no scale_filler: constant 1
            filler.CopyFrom(p.scale_filler)
        self.across, self.shared, self.eps = p.across_spatial, p.channel_shared, p.eps
        # SSD: src/caffe/layers/normalize_layer.cpp — blobs_[0] is a 0-axis scalar if channel_shared, else [C]
        self.add_blob(() if self.shared else (shape[1],), filler)
        self.top_shapes = [shape]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        dims = tuple(range(1, x.dim())) if self.across else (1,)
        # SSD: src/caffe/layers/normalize_layer.cpp — eps is added inside the square root in both modes
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = blob(self, 0)
        if not self.shared:
            scale = scale.view(1, -1, *([1] * (x.dim() - 2)))
        return (x / norm * scale,)


@register("Permute")
class Permute(CaffeLayer):
    """Top axis i is bottom axis ``order[i]``; the axes ``order`` leaves out follow in increasing order."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(spec.bottom_shapes[0])
        order: list[int] = []
        for axis in spec.param.permute_param.order:
            # SSD: src/caffe/layers/permute_layer.cpp — every order < num_axes, no duplicates, missing axes appended
            if axis >= len(shape):
                raise spec.error(f"permute_param.order {axis} is out of range for the {len(shape)}-D bottom of "
                                 f"shape {shape} (allowed: 0 to {len(shape) - 1})")
            if axis in order:
                raise spec.error(f"permute_param.order lists axis {axis} twice; each axis may appear once")
            order.append(axis)
        self.order = order + [a for a in range(len(shape)) if a not in order]
        self.identity = self.order == sorted(self.order)
        self.top_shapes = [tuple(shape[a] for a in self.order)]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        if self.identity:   # SSD: src/caffe/layers/permute_layer.cpp — the identity order shares the data
            return (x,)
        return (x.permute(self.order).contiguous(),)


def _pair(spec: LayerSpec, p: caffe_pb2.PriorBoxParameter, one: str, h: str, w: str) -> tuple[float, float]:
    """``(h, w)`` from the field ``one`` or from the pair ``h``/``w``; ``(0, 0)`` when none is set."""
    # SSD: src/caffe/layers/prior_box_layer.cpp — img_h/img_w (step_h/step_w) exclude img_size (step); all > 0
    if p.HasField(h) or p.HasField(w):
        if p.HasField(one):
            raise spec.error(f"prior_box_param: give either {one} or {h} and {w}, not both")
        values, name = (getattr(p, h), getattr(p, w)), f"{h} and {w}"
    elif p.HasField(one):
        values, name = (getattr(p, one),) * 2, one
    else:
        return 0.0, 0.0
    if min(values) <= 0:
        raise spec.error(f"prior_box_param.{name} must both be set and positive, got {values}")
    return float(values[0]), float(values[1])


def _aspect_ratios(spec: LayerSpec, p: caffe_pb2.PriorBoxParameter) -> list[float]:
    """1 first, then each new ratio (equal within 1e-6 counts as seen) and, with ``flip``, its inverse."""
    ratios = [1.0]
    for ar in p.aspect_ratio:
        if ar <= 0:
            raise spec.error(f"prior_box_param.aspect_ratio must be positive, got {ar}")
        # SSD: src/caffe/layers/prior_box_layer.cpp — duplicates within 1e-6 dropped, 1/ar pushed after ar if flip
        if all(abs(ar - seen) >= 1e-6 for seen in ratios):
            ratios += [ar, 1.0 / ar] if p.flip else [ar]
    return ratios


def _box_sizes(spec: LayerSpec, p: caffe_pb2.PriorBoxParameter, opencv: bool) -> list[tuple[float, float]]:
    """Box (width, height) in pixels, in the order the boxes of one cell are written."""
    if opencv and (p.width or p.height):
        # OpenCV: modules/dnn/src/layers/prior_box_layer.cpp — explicit width/height pairs replace the sizes
        if len(p.width) != len(p.height) or p.min_size or p.max_size or p.aspect_ratio:
            raise spec.error("prior_box_param: width and height must come in pairs and exclude min_size, max_size "
                             "and aspect_ratio")
        return [(float(w), float(h)) for w, h in zip(p.width, p.height)]
    if not p.min_size:
        raise spec.error("prior_box_param.min_size is required (one or more positive sizes in pixels)")
    if p.max_size and len(p.max_size) != len(p.min_size):
        raise spec.error(f"prior_box_param: {len(p.max_size)} max_size for {len(p.min_size)} min_size; give one "
                         "max_size per min_size or none")
    ratios, sizes = _aspect_ratios(spec, p), []
    for i, low in enumerate(p.min_size):
        high = p.max_size[i] if p.max_size else None
        if low <= 0 or (high is not None and high <= low):
            raise spec.error(f"prior_box_param: min_size {low} must be positive and below its max_size {high}")
        if not opencv:   # SSD: src/caffe/layers/prior_box_layer.cpp — min_size/max_size truncated to int
            low, high = float(int(low)), None if high is None else float(int(high))
        sizes.append((low, low))
        if high is not None:
            side = math.sqrt(low * high)
            sizes.append((side, side))
        sizes += [(low * math.sqrt(ar), low / math.sqrt(ar)) for ar in ratios[1:]]
    return sizes


def _offsets(spec: LayerSpec, p: caffe_pb2.PriorBoxParameter, opencv: bool) -> list[tuple[float, float]]:
    """Box centre offsets (x, y) within a cell: ``offset`` for both, or OpenCV's offset_w/offset_h pairs."""
    if opencv and (p.offset_h or p.offset_w):
        # OpenCV: modules/dnn/src/layers/prior_box_layer.cpp — pairs replace offset; each box once per pair
        if p.HasField("offset") or len(p.offset_h) != len(p.offset_w):
            raise spec.error("prior_box_param: offset_h and offset_w must come in pairs and exclude offset")
        return [(float(x), float(y)) for x, y in zip(p.offset_w, p.offset_h)]
    return [(p.offset, p.offset)]


def _variance(spec: LayerSpec, p: caffe_pb2.PriorBoxParameter, opencv: bool) -> list[float]:
    values = list(p.variance)
    if opencv and not values:   # OpenCV: modules/dnn/src/layers/prior_box_layer.cpp — getVariance asserts one
        raise spec.error("prior_box_param.variance is required by OpenCV's PriorBox (1 or 4 positive values)")
    if len(values) not in (0, 1, 4) or any(v <= 0 for v in values):
        raise spec.error(f"prior_box_param.variance takes 1 or 4 positive values, got {values}")
    return values or [0.1]   # SSD: src/caffe/layers/prior_box_layer.cpp — default variance 0.1


@register("PriorBox")
class PriorBox(CaffeLayer):
    """The default boxes of one feature map: ``[1, 2, H·W·num_priors·4]``, the boxes then their variances."""

    n_bottoms = 2
    n_tops = 1
    onnx = TRACED
    backward = False   # Caffe (SSD): prior_box_layer.hpp, Backward_cpu returns

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p, opencv = spec.param.prior_box_param, spec.dialect == OPENCV
        feature, image = (tuple(s) for s in spec.bottom_shapes)
        if len(feature) != 4 or len(image) != 4:
            raise spec.error(f"PriorBox needs 4-D bottoms (feature map, image), got shapes {feature} and {image}")
        self.sizes, self.offsets = _box_sizes(spec, p, opencv), _offsets(spec, p, opencv)
        self.variance = _variance(spec, p, opencv)
        # SSD: src/caffe/layers/prior_box_layer.cpp — clip defaults to false; OpenCV's layer defaults it to true
        self.clip = p.clip if p.HasField("clip") else opencv
        self.step = _pair(spec, p, "step", "step_h", "step_w")
        self.image = _pair(spec, p, "img_size", "img_h", "img_w")
        if opencv and self.image[0]:
            # OpenCV: modules/dnn/src/layers/prior_box_layer.cpp — the image size always comes from bottom 1
            log.warning("%s: PriorBox '%s': img_size/img_h/img_w are ignored in the opencv dialect, as OpenCV does",
                        spec.path or "<net>", spec.name)
            self.image = (0.0, 0.0)
        self.num_priors = len(self.sizes) * len(self.offsets)
        self.top_shapes = [(1, 2, feature[2] * feature[3] * self.num_priors * 4)]

    def forward(self, feature: torch.Tensor, image: torch.Tensor) -> tuple[torch.Tensor]:
        h, w = feature.shape[2], feature.shape[3]
        img_h, img_w = self.image if self.image[0] else (image.shape[2], image.shape[3])
        f32 = {"dtype": torch.float32, "device": feature.device}
        # SSD: src/caffe/layers/prior_box_layer.cpp — no step: image size / feature size, in float
        if self.step[0]:
            step_h, step_w = self.step
        elif torch.onnx.is_in_onnx_export():   # traced sizes: float32 quotients that follow the input's size
            step_h, step_w = img_h / h, img_w / w
        else:
            step_h, step_w = float(np.float32(img_h) / h), float(np.float32(img_w) / w)
        offsets = torch.tensor(self.offsets, **f32)
        # centres per (h, w, box, offset), in float as SSD computes them; the corners in double, then float
        cx = ((torch.arange(w, **f32)[:, None] + offsets[:, 0]) * step_w).double()[None, :, None, :]
        cy = ((torch.arange(h, **f32)[:, None] + offsets[:, 1]) * step_h).double()[:, None, None, :]
        half = torch.tensor(self.sizes, **f32).double()[:, None, :] / 2
        cx, cy, bw, bh = torch.broadcast_tensors(cx, cy, half[None, None, :, :, 0], half[None, None, :, :, 1])
        boxes = torch.stack(((cx - bw) / img_w, (cy - bh) / img_h, (cx + bw) / img_w, (cy + bh) / img_h), dim=-1)
        boxes = boxes.reshape(-1).float()
        if self.clip:   # SSD: src/caffe/layers/prior_box_layer.cpp — every coordinate clipped to [0, 1]
            boxes = boxes.clamp(0.0, 1.0)
        variance = torch.tensor(self.variance, **f32).repeat(boxes.numel() // len(self.variance))
        return (torch.stack((boxes, variance)).unsqueeze(0).to(feature.dtype),)


def box_sizes(boxes: np.ndarray, normalized: bool = True) -> np.ndarray:
    """Sizes of ``[xmin, ymin, xmax, ymax]`` rows, as SSD's NMS computes them."""
    one = 0.0 if normalized else 1.0   # OpenCV: detection_output_layer.cpp — pixel boxes: sizes (w + 1)·(h + 1)
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    # SSD: src/caffe/util/bbox_util.cpp BBoxSize — an invalid box (xmax < xmin or ymax < ymin) has size 0
    return np.where((w >= 0) & (h >= 0), (w + one) * (h + one), np.float32(0))


def overlaps(box: np.ndarray, size: float | np.ndarray, others: np.ndarray, sizes: np.ndarray,
             normalized: bool = True) -> np.ndarray:
    """Jaccard overlap of ``box`` (of ``size``) with each row of ``others`` (of ``sizes``), in float32 as SSD;
    ``box`` may be a column of boxes (K×1×4, sizes K×1): then a K×len(others) table."""
    one = 0.0 if normalized else 1.0
    iw = np.minimum(box[..., 2], others[:, 2]) - np.maximum(box[..., 0], others[:, 0])
    ih = np.minimum(box[..., 3], others[:, 3]) - np.maximum(box[..., 1], others[:, 1])
    # SSD: src/caffe/util/bbox_util.cpp JaccardOverlap — 0 unless the intersection has positive size
    meets = (iw > 0) & (ih > 0) if normalized else (iw >= 0) & (ih >= 0)
    inter = np.where(meets, (iw + one) * (ih + one), np.float32(0))
    return np.divide(inter, sizes + size - inter, out=np.zeros_like(inter), where=inter > 0)


@register("DetectionOutput")
class DetectionOutput(CaffeLayer):
    """Decode the boxes, NMS per class, keep_top_k: ``[1, 1, num_kept, 7]`` rows ``[image, label, score, xmin,
    ymin, xmax, ymax]`` by image, label ascending, score descending; one −1 row per image if nothing is kept."""

    n_bottoms = (3, 4)
    n_tops = 1
    onnx = ("per-class NMS and top-k keep a data-dependent number of boxes; export up to its bottoms "
            "(mbox_loc, mbox_conf_flatten, mbox_priorbox) and decode outside ONNX")
    backward = False   # Caffe (SSD): detection_output_layer.hpp, NOT_IMPLEMENTED

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p, self.opencv = spec.param.detection_output_param, spec.dialect == OPENCV
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise spec.error("detection_output_param.num_classes is required (a positive number of classes)")
        self.classes, self.share, self.background = p.num_classes, p.share_location, p.background_label_id
        nms = p.nms_param
        if nms.nms_threshold < 0 or not 0 < nms.eta <= 1:
            raise spec.error(f"nms_param: nms_threshold must be >= 0 (got {nms.nms_threshold}) and eta in (0, 1] "
                             f"(got {nms.eta})")
        self.nms_threshold, self.top_k = nms.nms_threshold, nms.top_k if nms.HasField("top_k") else -1
        self.eta = 1.0 if self.opencv else nms.eta   # OpenCV: detection_output_layer.cpp — NMS runs with eta 1
        self.keep_top_k, self.code, self.in_target = p.keep_top_k, p.code_type, p.variance_encoded_in_target
        # SSD: src/caffe/layers/detection_output_layer.cpp — no confidence_threshold: -FLT_MAX; OpenCV's layer: 0
        default = 0.0 if self.opencv else -FLT_MAX
        self.threshold = p.confidence_threshold if p.HasField("confidence_threshold") else default
        if self.opencv and self.code == CodeType.CORNER_SIZE:
            raise spec.error("detection_output_param.code_type CORNER_SIZE is SSD only; OpenCV's schema allows "
                             "CORNER and CENTER_SIZE")
        # OpenCV: modules/dnn/src/layers/detection_output_layer.cpp — normalized_bbox false: pixel boxes (+1)
        self.normalized = p.normalized_bbox if self.opencv else True
        self._check_shapes(spec)
        if p.visualize or p.save_output_param.output_directory:
            log.warning("%s: DetectionOutput '%s': visualize and save_output_param are not supported and are "
                        "ignored (the detections are the top blob)", spec.path or "<net>", spec.name)
        self.top_shapes = [(1, 1, 1, 7)]   # SSD: Reshape gives [1, 1, 1, 7]; forward sets the row count

    def _check_shapes(self, spec: LayerSpec) -> None:
        loc, conf, prior = (tuple(s) for s in spec.bottom_shapes[:3])
        channels = (1, 2) if self.in_target else (2,)   # boxes and variances (only boxes: variance in target)
        if len(prior) < 3 or prior[2] % 4 or prior[1] not in channels:
            raise spec.error(f"bottom 2 must be a PriorBox output [1, 2, num_priors·4], got shape {prior}")
        self.num_priors, self.loc_classes = prior[2] // 4, 1 if self.share else self.classes
        # SSD: src/caffe/layers/detection_output_layer.cpp Reshape — the counts must match the priors
        if loc[0] != conf[0]:
            raise spec.error(f"loc bottom {loc} and conf bottom {conf} must have the same number of images")
        if count(loc, 1) != self.num_priors * self.loc_classes * 4:
            raise spec.error(f"loc bottom {loc} needs {self.num_priors} priors x {self.loc_classes} location "
                             f"classes x 4 = {self.num_priors * self.loc_classes * 4} values per image")
        if count(conf, 1) != self.num_priors * self.classes:
            raise spec.error(f"conf bottom {conf} needs {self.num_priors} priors x num_classes {self.classes} = "
                             f"{self.num_priors * self.classes} values per image")

    @torch.no_grad()
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                *image: torch.Tensor) -> tuple[torch.Tensor]:
        n, priors = loc.shape[0], prior.shape[2] // 4
        prior = prior[0].float().reshape(prior.shape[1], priors, 4)   # SSD: one set of priors for the batch
        boxes = self._decode(loc.float().reshape(n, priors, self.loc_classes, 4), prior[0], prior[-1])
        # the selection runs in numpy: per class a handful of tiny steps, where each torch call costs more than
        # its work (MobileNet-SSD: 2.3 -> 0.5 ms a picture), with the same float32 arithmetic
        boxes_np = boxes.cpu().numpy()
        conf_np = conf.float().reshape(n, priors, self.classes).cpu().numpy()
        rows = []
        for i in range(n):
            for label, kept in self._detect(boxes_np[i], conf_np[i]).items():
                box = boxes_np[i, kept, 0 if self.share else label]
                head = np.broadcast_to(np.array([i, label], np.float32), (len(kept), 2))
                rows.append(np.concatenate((head, conf_np[i, kept, label][:, None], box), axis=1))
        out = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 7), np.float32)
        if out.shape[0] == 0:   # SSD: detection_output_layer.cpp — no detection: one −1 row per image, column 0 = i
            out = np.full((n, 7), -1.0, np.float32)
            out[:, 0] = np.arange(n)
        return (torch.from_numpy(out).reshape(1, 1, -1, 7).to(device=loc.device, dtype=loc.dtype),)

    def _decode(self, loc: torch.Tensor, prior: torch.Tensor, variance: torch.Tensor) -> torch.Tensor:
        """SSD: src/caffe/util/bbox_util.cpp DecodeBBox — boxes [N, P, L, 4] from offsets to the priors (no clip)."""
        d = loc if self.in_target else loc * variance[None, :, None, :]
        pr = prior[None, :, None, :]
        if self.code == CodeType.CORNER:
            return pr + d
        pw, ph = pr[..., 2] - pr[..., 0], pr[..., 3] - pr[..., 1]
        if self.code == CodeType.CORNER_SIZE:
            return pr + d * torch.stack((pw, ph, pw, ph), dim=-1)
        if self.normalized:
            pcx, pcy = (pr[..., 0] + pr[..., 2]) / 2, (pr[..., 1] + pr[..., 3]) / 2
        else:   # OpenCV: detection_output_layer.cpp — pixel priors are one wider and higher, centred from xmin
            pw, ph = pw + 1, ph + 1
            pcx, pcy = pr[..., 0] + pw / 2, pr[..., 1] + ph / 2
        cx, cy = d[..., 0] * pw + pcx, d[..., 1] * ph + pcy
        bw, bh = torch.exp(d[..., 2]) * pw, torch.exp(d[..., 3]) * ph
        return torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), dim=-1)

    def _detect(self, boxes: np.ndarray, conf: np.ndarray) -> dict[int, np.ndarray]:
        """``{label: kept prior indices}`` of one image, labels ascending, each by descending score."""
        kept = {c: self._nms(boxes[:, 0 if self.share else c], conf[:, c])
                for c in range(self.classes) if c != self.background}
        total = sum(len(v) for v in kept.values())
        if self.keep_top_k <= -1 or total <= self.keep_top_k:
            return kept
        # SSD: detection_output_layer.cpp — all kept (label, index) sorted by score (std::sort; stable here), cut
        labels = np.concatenate([np.full(len(v), c) for c, v in kept.items()])
        index = np.concatenate(list(kept.values()))
        order = np.argsort(-conf[index, labels], kind="stable")[:self.keep_top_k]
        labels, index = labels[order], index[order]
        return {int(c): index[labels == c] for c in sorted(set(labels.tolist()))}

    def _nms(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """SSD: src/caffe/util/bbox_util.cpp ApplyNMSFast — greedy NMS of one class with an adaptive threshold."""
        # GetMaxScoreIndex: scores > confidence_threshold, stable sort by descending score, the first top_k
        candidates = np.flatnonzero(scores > self.threshold)
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        if self.top_k > -1:
            candidates = candidates[:self.top_k]
        if len(candidates) == 0:
            return candidates
        b = boxes[candidates]
        sizes = box_sizes(b, self.normalized)
        # every pair's overlap at once where that is small (the same float32 arithmetic as one row at a time)
        table = overlaps(b[:, None, :], sizes[:, None], b, sizes, self.normalized) if len(b) <= 512 else None
        worst = np.zeros(len(b), np.float32)   # each candidate's largest overlap with a kept box so far
        keep: list[int] = []
        threshold, eta = np.float32(self.nms_threshold), np.float32(self.eta)
        for j in range(len(b)):
            if worst[j] > threshold:   # kept only when no kept box overlaps it more than the threshold
                continue
            keep.append(j)
            row = table[j, j + 1:] if table is not None else overlaps(b[j], sizes[j], b[j + 1:], sizes[j + 1:],
                                                                     self.normalized)
            worst[j + 1:] = np.maximum(worst[j + 1:], row)
            if eta < 1 and threshold > 0.5:
                threshold = np.float32(threshold * eta)
        return candidates[np.array(keep, dtype=np.int64)]
