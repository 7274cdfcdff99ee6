"""Faster R-CNN's layers: ROIPooling, SmoothL1Loss (Faster R-CNN and SSD forms) and OpenCV's native Proposal.

ROIPooling and SmoothL1Loss follow rbgirshick/caffe-fast-rcnn (branch faster-rcnn); SSD's SmoothL1Loss
(weiliu89/caffe, branch ssd) is the sigma-free variant with one optional weight bottom.  ``Proposal`` is OpenCV's
C++ replacement for py-faster-rcnn's Python proposal layer (modules/dnn/src/layers/proposal_layer.cpp), which is
how OpenCV's Faster R-CNN deploy nets run; OpenCV is the reference these nets are checked against, so its
arithmetic is reproduced step by step in float32 (anchors, decoding, clipping, sorting, NMS).

Where py-faster-rcnn's Python layer (lib/rpn/proposal_layer.py) differs from OpenCV's:
  * py-faster-rcnn drops boxes smaller than ``min_size``·im_info[2]; OpenCV ignores ``min_size`` (so does this).
  * OpenCV keeps only scores > 0 and pads its outputs to ``post_nms_topn`` rows with zeros; py-faster-rcnn keeps
    every score and outputs exactly the boxes NMS kept.
  * OpenCV clips to the integer part of im_info (x ≤ int(width) − 1), py-faster-rcnn to im_info[1] − 1.
  * Box overlap: py-faster-rcnn's intersection width is max(0, x2 − x1 + 1), OpenCV's is 0 once x2 < x1.
  * The anchors are the same boxes: OpenCV centres a w×h anchor at base_size/2 and spans [c − w/2, c + w/2 − 1],
    which is py-faster-rcnn's generate_anchors box centred at (base_size − 1)/2 (both round the ratio sizes
    half-up, except that numpy rounds exact halves to even).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from vggproto.errors import DataError
from vggproto.layers.common import count
from vggproto.layers.loss import LossLayer, check_same_num
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

#: How many gathered values one ROIPooling chunk may hold (bounds the memory of the forward pass).
_CHUNK_ELEMENTS = 1 << 23


def round_half_away(x: torch.Tensor) -> torch.Tensor:
    """C's ``round``: halves away from zero (torch.round rounds them to even)."""
    whole = torch.trunc(x)
    return whole + torch.where((x - whole).abs() >= 0.5, torch.sign(x), torch.zeros_like(x))


def roi_bins(rois: torch.Tensor, scale: float, pooled: tuple[int, int],
             size: tuple[int, int]) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The batch index of each ROI and, per axis (h, w), each bin's [start, end) cells, clipped to the map."""
    r = rois.detach().reshape(-1, 5).to(torch.float32)
    # Faster R-CNN: src/caffe/layers/roi_pooling_layer.cpp — int(rois[0]); round(coord * spatial_scale) in float
    batch = torch.trunc(r[:, 0]).long()
    corners = round_half_away(r[:, 1:] * torch.tensor(scale, dtype=torch.float32, device=r.device)).long()
    bins = []
    for axis, (start, end) in enumerate(((corners[:, 1], corners[:, 3]), (corners[:, 0], corners[:, 2]))):
        # roi_pooling_layer.cpp — extent max(end − start + 1, 1); bin = extent / pooled (float);
        # [floor(p·bin), ceil((p+1)·bin)) offset by the ROI start, clipped to [0, H]
        extent = (end - start + 1).clamp(min=1).to(torch.float32)
        step = extent / float(pooled[axis])
        p = torch.arange(pooled[axis], dtype=torch.float32, device=r.device)
        low = torch.floor(p[None] * step[:, None]).long() + start[:, None]
        high = torch.ceil((p[None] + 1) * step[:, None]).long() + start[:, None]
        bins.append((low.clamp(0, size[axis]), high.clamp(0, size[axis])))
    return batch, bins


def _pool_chunk(flat: torch.Tensor, batch: torch.Tensor, bins: list, width: int, plane: int) -> torch.Tensor:
    """Max over each bin of a chunk of ROIs: (R, C, ph, pw); empty bins 0.  ``flat`` is the map as (C, N·H·W).

    Every bin gathers a window as large as the chunk's largest; the cells past a bin's end repeat its last row
    or column, which leaves the maximum and its first occurrence (Caffe's argmax) where they were."""
    (hs, he), (ws, we) = bins
    kh, kw = max(int((he - hs).max()), 1), max(int((we - ws).max()), 1)
    height = plane // width
    rows = torch.minimum(hs[:, :, None] + torch.arange(kh, device=hs.device), he[:, :, None] - 1)
    cols = torch.minimum(ws[:, :, None] + torch.arange(kw, device=ws.device), we[:, :, None] - 1)
    index = (rows.clamp(0, height - 1)[:, :, None, :, None] * width + cols.clamp(0, width - 1)[:, None, :, None, :]
             + (batch * plane)[:, None, None, None, None])                  # (R, ph, pw, kh, kw)
    values = flat.index_select(1, index.reshape(-1)).reshape(flat.shape[0], *index.shape[:3], kh * kw)
    # roi_pooling_layer.cpp — strict '>' scan in h, then w order: the first maximum wins (torch.max returns the
    # first), and the backward routes each top diff to that argmax (index_select's backward adds them up)
    top = values.max(dim=-1).values
    empty = (he <= hs)[:, :, None] | (we <= ws)[:, None, :]                  # (R, ph, pw)
    top = torch.where(empty, torch.zeros_like(top), top)   # roi_pooling_layer.cpp — is_empty: 0, argmax −1
    return top.permute(1, 0, 2, 3)


@register("ROIPooling")
class ROIPooling(CaffeLayer):
    """Fast R-CNN's max pooling of each ROI [batch, x1, y1, x2, y2] (input pixels) into pooled_h × pooled_w bins;
    the gradient goes to each bin's argmax, none to the ROIs."""

    n_bottoms = 2
    n_tops = 1
    onnx = "its window sizes depend on the ROI values, which a traced graph would freeze"
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.roi_pooling_param
        # Faster R-CNN: roi_pooling_layer.cpp LayerSetUp — CHECK_GT(pooled_h, 0), CHECK_GT(pooled_w, 0)
        if p.pooled_h <= 0 or p.pooled_w <= 0:
            raise spec.error(f"roi_pooling_param.pooled_h and pooled_w must be positive, got {p.pooled_h} and "
                             f"{p.pooled_w}")
        features, rois = (tuple(s) for s in spec.bottom_shapes)
        if len(features) != 4:
            raise spec.error(f"bottom 0 (the feature map) must be N×C×H×W, got shape {features}")
        if not rois or count(rois, 1) != 5:
            raise spec.error(f"bottom 1 (the ROIs) must be R×5 [batch, x1, y1, x2, y2], got shape {rois}")
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        self.scale = float(p.spatial_scale)
        self.top_shapes = [(rois[0], features[1], *self.pooled)]

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> tuple[torch.Tensor]:
        n, c, h, w = features.shape
        batch, ((hs, he), (ws, we)) = roi_bins(rois, self.scale, self.pooled, (h, w))
        if batch.numel() and (int(batch.min()) < 0 or int(batch.max()) >= n):
            # roi_pooling_layer.cpp — CHECK_GE(roi_batch_ind, 0); CHECK_LT(roi_batch_ind, batch_size)
            raise DataError(f"layer '{self.spec.name}' (ROIPooling): ROI batch index {int(batch.max())} or "
                            f"{int(batch.min())} is outside the feature map's batch [0, {n - 1}]")
        if not batch.numel():
            return (features.new_zeros((0, c, *self.pooled)),)
        flat = features.permute(1, 0, 2, 3).reshape(c, n * h * w)
        # ROIs sorted by their largest bin, so that each chunk gathers windows of about its own size
        window = (he - hs).amax(dim=1).clamp(min=1) * (we - ws).amax(dim=1).clamp(min=1)
        order = torch.argsort(window)
        parts = []
        for start, stop in _chunks(window[order].tolist(), c * math.prod(self.pooled)):
            i = order[start:stop]
            parts.append(_pool_chunk(flat, batch[i], [(hs[i], he[i]), (ws[i], we[i])], w, h * w))
        return (torch.cat(parts, dim=0)[torch.argsort(order)],)


def _chunks(windows: list[int], per_window: int) -> list[tuple[int, int]]:
    """[start, stop) runs of ascending ``windows`` whose gathered values (run length × largest window ×
    ``per_window``) stay within the chunk budget (at least one ROI per run)."""
    runs, start = [], 0
    while start < len(windows):
        stop = start + 1
        while stop < len(windows) and (stop + 1 - start) * windows[stop] * per_window <= _CHUNK_ELEMENTS:
            stop += 1
        runs.append((start, stop))
        start = stop
    return runs


class _SmoothL1Fn(torch.autograd.Function):
    """Smooth L1 of d = w_in·(pred − target) summed with w_out and divided by N, with the fork's backward."""

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, inside: torch.Tensor | None,
                outside: torch.Tensor | None, sigma2: float, chain_inside: bool) -> torch.Tensor:
        d = pred - target.reshape(pred.shape)
        if inside is not None:
            d = d * inside.reshape(pred.shape)
        quadratic = d.abs().double() < 1.0 / sigma2   # the forks compare in double (1.0 / sigma2)
        # Faster R-CNN: src/caffe/layers/smooth_L1_loss_layer.cu SmoothL1Forward — 0.5·σ²·d² if |d| < 1/σ²,
        # else |d| − 0.5/σ² (SSD: σ = 1); times w_out; sum / bottom[0]->num()
        error = torch.where(quadratic, 0.5 * sigma2 * d * d, d.abs() - 0.5 / sigma2)
        if outside is not None:
            error = error * outside.reshape(pred.shape)
        ctx.save_for_backward(d, quadratic, inside, outside)
        ctx.sigma2, ctx.chain_inside = sigma2, chain_inside
        return error.sum() / pred.shape[0]

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        d, quadratic, inside, outside = ctx.saved_tensors
        # smooth_L1_loss_layer.cu SmoothL1Backward — σ²·d if |d| < 1/σ², else sign(d); times ±top_diff / num;
        # Faster R-CNN then multiplies by w_in and w_out, SSD by neither (its weight bottom is not chained)
        g = torch.where(quadratic, ctx.sigma2 * d, torch.sign(d)) * (grad / d.shape[0])
        if ctx.chain_inside and inside is not None:
            g = g * inside.reshape(d.shape)
        if outside is not None:
            g = g * outside.reshape(d.shape)
        return g, -g.reshape(d.shape), None, None, None, None


def _smooth_l1_form(spec: LayerSpec) -> str:
    """The form of the loss: ``rcnn`` (sigma; 2 or 4 bottoms) or ``ssd`` (no parameter; 2 or 3 bottoms), from
    the bottom count and dialect: 4 bottoms or ``smooth_l1_loss_param`` is Faster R-CNN's, 3 bottoms or the ssd
    dialect SSD's (with 2 bottoms and sigma 1 they compute the same)."""
    n = len(spec.bottom_shapes)
    rcnn = spec.param.HasField("smooth_l1_loss_param") or spec.dialect == "fast-rcnn"
    if n == 3 and rcnn:
        # Faster R-CNN: smooth_L1_loss_layer.cpp LayerSetUp — CHECK_EQ(bottom.size(), 4) once weights are used
        raise spec.error("Faster R-CNN's SmoothL1Loss takes 2 bottoms or 4 (pred, target, inside weights, "
                         "outside weights), got 3")
    if n == 4 and spec.dialect == "ssd":
        raise spec.error("SSD's SmoothL1Loss takes 2 bottoms or 3 (pred, target, weights), got 4")
    return "ssd" if n == 3 or (spec.dialect == "ssd" and not rcnn) else "rcnn"


@register("SmoothL1Loss")
class SmoothL1Loss(LossLayer):
    """Smooth L1 loss.  Faster R-CNN form (rbgirshick): ``smooth_l1_loss_param.sigma`` (default 1), bottoms
    (pred, target) or (pred, target, inside w, outside w), loss Σ w_out·f(w_in·(pred − target)) / N.  SSD form
    (weiliu89): no parameter (σ = 1), optional third bottom w multiplying the difference, and a backward that
    does not multiply by w.  With 2 bottoms and σ = 1 the two are the same layer.  The form is Faster R-CNN's
    for 4 bottoms, ``smooth_l1_loss_param`` or the fast-rcnn dialect, SSD's for 3 bottoms or the ssd dialect."""

    n_bottoms = (2, 4)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        check_same_num(spec)
        self.form = _smooth_l1_form(spec)
        shapes = [tuple(s) + (1,) * (4 - len(s)) for s in spec.bottom_shapes]   # Caffe's legacy 4-D dims
        for i, shape in enumerate(shapes[1:], 1):
            # smooth_L1_loss_layer.cpp Reshape — channels, height and width of every bottom match bottom 0
            if shape[1:] != shapes[0][1:]:
                raise spec.error(f"bottom {i} has shape {tuple(spec.bottom_shapes[i])}; it must have the shape "
                                 f"of bottom 0, {tuple(spec.bottom_shapes[0])}")
        sigma = float(spec.param.smooth_l1_loss_param.sigma) if self.form == "rcnn" else 1.0
        self.sigma2 = sigma * sigma
        if self.sigma2 <= 0:
            raise spec.error(f"smooth_l1_loss_param.sigma must be non-zero, got {sigma}")
        self.top_shapes = [()]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor]:
        pred, target = bottoms[:2]
        weights = [b.detach() for b in bottoms[2:]]
        inside = weights[0] if weights else None
        outside = weights[1] if len(weights) > 1 else None
        return (_SmoothL1Fn.apply(pred, target, inside, outside, self.sigma2, self.form == "rcnn"),)


def proposal_anchors(ratios: list[float], scales: list[float], base: int) -> list[tuple[float, float]]:
    """(width, height) of each anchor, ratios outer and scales inner, rounded as OpenCV does."""
    sizes = []
    for ratio in ratios:
        for scale in scales:
            # OpenCV: modules/dnn/src/layers/proposal_layer.cpp — w = floor(base/sqrt(r) + 0.5), h = floor(w·r + 0.5)
            w = math.floor(np.float32(base) / np.sqrt(np.float32(ratio)) + np.float32(0.5))
            h = math.floor(np.float32(w) * np.float32(ratio) + np.float32(0.5))
            sizes.append((float(np.float32(scale) * np.float32(w)), float(np.float32(scale) * np.float32(h))))
    return sizes


def _anchor_boxes(sizes: list[tuple[float, float]], height: int, width: int, stride: int,
                  base: int) -> np.ndarray:
    """(H·W·A, 4) anchor corners in OpenCV's order (row, column, anchor), float32 as OpenCV computes them."""
    f32 = np.float32
    # OpenCV: proposal_layer.cpp builds a PriorBox with step = feat_stride, offset = 0.5·base/feat_stride;
    # prior_box_layer.cpp — centre (w + offset)·step; corners c − size/2 and c + size/2 − 1 (normalized_bbox false)
    offset, step = f32(0.5 * base / stride), f32(stride)
    cy = (np.arange(height, dtype=f32) + offset) * step
    cx = (np.arange(width, dtype=f32) + offset) * step
    bw = np.array([s[0] for s in sizes], dtype=f32) * f32(0.5)
    bh = np.array([s[1] for s in sizes], dtype=f32) * f32(0.5)
    cxg, bwg = cx[None, :, None], bw[None, None, :]
    cyg, bhg = cy[:, None, None], bh[None, None, :]
    shape = (height, width, len(sizes))
    corners = [np.broadcast_to(v, shape) for v in (cxg - bwg, cyg - bhg, cxg + bwg - f32(1), cyg + bhg - f32(1))]
    return np.stack(corners, axis=-1).reshape(-1, 4)


def _decode(anchors: np.ndarray, deltas: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes from anchors and (dx, dy, dw, dh), clipped to the image, and their +1 areas (float32)."""
    f32 = np.float32
    # OpenCV: detection_output_layer.cpp DecodeBBox, CENTER_SIZE, variance_encoded_in_target, not normalized
    pw = anchors[:, 2] - anchors[:, 0] + f32(1)
    ph = anchors[:, 3] - anchors[:, 1] + f32(1)
    cx, cy = anchors[:, 0] + pw * f32(0.5), anchors[:, 1] + ph * f32(0.5)
    cx, cy = deltas[:, 0] * pw + cx, deltas[:, 1] * ph + cy
    half_w, half_h = np.exp(deltas[:, 2]) * pw * f32(0.5), np.exp(deltas[:, 3]) * ph * f32(0.5)
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    # detection_output_layer.cpp — clip to [0, cols − 1] × [0, rows − 1] of the integer image size
    high = np.array([cols - 1, rows - 1, cols - 1, rows - 1], dtype=f32)
    boxes = np.maximum(np.minimum(boxes, high), f32(0))
    return boxes, _areas(boxes)


def _areas(boxes: np.ndarray) -> np.ndarray:
    """OpenCV's BBoxSize for pixel boxes: (w + 1)(h + 1), 0 for an inverted box."""
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), np.float32(0), (w + np.float32(1)) * (h + np.float32(1)))


def greedy_nms(boxes: np.ndarray, areas: np.ndarray, threshold: float, limit: int) -> list[int]:
    """Indices kept by OpenCV's NMSFast_ over boxes already in score order: a box survives if its overlap with
    every kept one is ≤ threshold; stops once ``limit`` are kept."""
    keep: list[int] = []
    suppressed = np.zeros(len(boxes), dtype=bool)
    threshold32 = np.float32(threshold)
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) >= limit:
            break
        rest = boxes[i + 1:]
        inter_box = np.concatenate([np.maximum(rest[:, :2], boxes[i, :2]), np.minimum(rest[:, 2:], boxes[i, 2:])],
                                   axis=1)
        inter = _areas(inter_box)
        # OpenCV: detection_output_layer.cpp JaccardOverlap — inter / (size1 + size2 − inter) when inter > 0
        union = np.where(inter > 0, areas[i] + areas[i + 1:] - inter, np.float32(1))
        suppressed[i + 1:] |= np.where(inter > 0, inter / union, np.float32(0)) > threshold32
    return keep


@register("Proposal")
class Proposal(CaffeLayer):
    """OpenCV's native Faster R-CNN proposal layer: bottoms rpn_cls_prob_reshape (1×2A×H×W, the last A channels
    are objectness), rpn_bbox_pred (1×4A×H×W) and im_info ([height, width, …]); tops rois (post_nms_topn × 5,
    rows [0, x1, y1, x2, y2]) and optionally their scores (post_nms_topn × 1).  Rows past the boxes NMS kept are
    0, as in OpenCV.  ``ratio``/``scale`` default to py-faster-rcnn's (0.5, 1, 2) and (8, 16, 32)."""

    n_bottoms = 3
    n_tops = (1, 2)
    onnx = "anchor decoding and NMS keep a data-dependent number of boxes, which a traced graph freezes"
    backward = False   # Caffe (py-faster-rcnn): proposal_layer.py, backward does nothing

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.proposal_param
        if p.feat_stride <= 0 or p.post_nms_topn <= 0:
            raise spec.error(f"proposal_param.feat_stride and post_nms_topn must be positive, got "
                             f"{p.feat_stride} and {p.post_nms_topn}")
        self.sizes = proposal_anchors(list(p.ratio) or [0.5, 1.0, 2.0], list(p.scale) or [8.0, 16.0, 32.0],
                                      p.base_size)
        a = len(self.sizes)
        scores, deltas, info = (tuple(s) for s in spec.bottom_shapes)
        # OpenCV: proposal_layer.cpp — a batch of 1, 2A score channels, 4A delta channels on the same grid
        if len(scores) != 4 or scores[0] != 1 or scores[1] != 2 * a:
            raise spec.error(f"bottom 0 (scores) must be 1×{2 * a}×H×W for {a} anchors "
                             f"(len(ratio)·len(scale)), got shape {scores}")
        if deltas != (1, 4 * a, *scores[2:]):
            raise spec.error(f"bottom 1 (box deltas) must be 1×{4 * a}×{scores[2]}×{scores[3]}, got {deltas}")
        if count(info) < 2:
            raise spec.error(f"bottom 2 (im_info) needs at least [height, width], got shape {info}")
        self.param = p
        self.top_shapes = [(int(p.post_nms_topn), 5), (int(p.post_nms_topn), 1)][:len(spec.param.top)]

    def forward(self, scores: torch.Tensor, deltas: torch.Tensor, info: torch.Tensor) -> tuple[torch.Tensor, ...]:
        p, a = self.param, len(self.sizes)
        _, _, height, width = scores.shape
        info_values = info.detach().reshape(-1)[:2].to(torch.float32).cpu().numpy()
        rows, cols = int(info_values[0]), int(info_values[1])   # OpenCV: shape(1, 1, rows, cols) truncates
        # OpenCV: proposal_layer.cpp — objectness = channels A..2A−1; both permuted to (H, W, channels)
        objectness = scores.detach()[0, a:].permute(1, 2, 0).reshape(-1).float().cpu().numpy()
        moves = deltas.detach()[0].permute(1, 2, 0).reshape(-1, 4).float().cpu().numpy()
        anchors = _anchor_boxes(self.sizes, height, width, p.feat_stride, p.base_size)
        boxes, areas = _decode(anchors, moves, rows, cols)
        # OpenCV: nms.inl.hpp GetMaxScoreIndex — scores > 0 (confidence_threshold 0), stable sort descending,
        # the first pre_nms_topn; NMSFast_ then keeps at most post_nms_topn (keep_top_k)
        candidates = np.flatnonzero(objectness > 0)
        candidates = candidates[np.argsort(-objectness[candidates], kind="stable")]
        if 0 < p.pre_nms_topn < len(candidates):
            candidates = candidates[:p.pre_nms_topn]
        kept = candidates[greedy_nms(boxes[candidates], areas[candidates], p.nms_thresh, p.post_nms_topn)]
        rois = np.zeros((p.post_nms_topn, 5), dtype=np.float32)
        rois[:len(kept), 1:] = boxes[kept]
        best = np.zeros((p.post_nms_topn, 1), dtype=np.float32)
        best[:len(kept), 0] = objectness[kept]
        outputs = (torch.from_numpy(rois), torch.from_numpy(best))[:len(self.top_shapes)]
        return tuple(t.to(device=scores.device, dtype=scores.dtype) for t in outputs)
