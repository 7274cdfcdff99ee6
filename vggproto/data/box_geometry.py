"""Bounding-box geometry for localisation (Appendix A of the paper): IoU, the two box encodings and boxes under
the training transform (isotropic rescale, crop, mirror).  Here, below the layers, because the BoxData layer moves
boxes with its images; the greedy merge of predictions is :mod:`vggproto.localize.boxes`.

Conventions (every box in vggproto uses them):

* **corners** ``(x1, y1, x2, y2)``: continuous pixel coordinates, origin at the top-left corner of the top-left
  pixel, ``x2``/``y2`` exclusive; a box covering pixel columns 0..9 is ``x1 = 0, x2 = 10``.  (ILSVRC's XML
  ``xmin..xmax`` are 1-based inclusive pixel indices: corners are ``xmin - 1, ymin - 1, xmax, ymax``.)
* **target** ``(cx, cy, w, h)``: the paper's 4-D vector (centre, width, height), each divided by the side of the
  crop the net sees, so a box filling the crop is ``(0.5, 0.5, 1, 1)`` and every value of a box inside the crop
  lies in [0, 1].  This is what a localisation net's last layer regresses.

In continuous corner coordinates ``cv2.resize`` maps ``x -> x * new / old`` exactly (it aligns pixel centres at
``(x + 0.5) * scale``, i.e. edges at ``x * scale``), so a rescale, a crop and a mirror are exact affine maps.
"""
from __future__ import annotations

import numpy as np


def as_boxes(boxes: np.typing.ArrayLike) -> np.ndarray:
    """``boxes`` as an N×4 float64 array (a single box becomes 1×4)."""
    arr = np.asarray(boxes, dtype=np.float64)
    return arr.reshape(-1, 4)


def area(boxes: np.typing.ArrayLike) -> np.ndarray:
    """Areas of N corner boxes (0 for degenerate ones)."""
    b = as_boxes(boxes)
    return np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)


def iou_matrix(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """Intersection over union of every box of ``a`` (N×4 corners) with every box of ``b`` (M×4): N×M."""
    a, b = as_boxes(a), as_boxes(b)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def iou(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> float:
    """IoU of two single corner boxes."""
    return float(iou_matrix(a, b)[0, 0])


def corners_to_target(boxes: np.typing.ArrayLike, side: float) -> np.ndarray:
    """Corner boxes in a ``side``-pixel crop -> normalised ``(cx, cy, w, h)`` targets (N×4)."""
    b = as_boxes(boxes)
    out = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    return out / float(side)


def target_to_corners(targets: np.typing.ArrayLike, side: float) -> np.ndarray:
    """Normalised ``(cx, cy, w, h)`` predictions -> corner boxes in a ``side``-pixel crop (N×4).

    Negative predicted sizes (an untrained regressor can output them) are taken as their absolute value.
    """
    t = as_boxes(targets) * float(side)
    half_w, half_h = np.abs(t[:, 2]) / 2, np.abs(t[:, 3]) / 2
    return np.stack([t[:, 0] - half_w, t[:, 1] - half_h, t[:, 0] + half_w, t[:, 1] + half_h], axis=1)


def clip(boxes: np.typing.ArrayLike, width: float, height: float) -> np.ndarray:
    """Corner boxes clipped to the ``width`` × ``height`` frame."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def transform_boxes(boxes: np.typing.ArrayLike, image_hw: tuple[int, int], resized_hw: tuple[int, int],
                    offset: tuple[int, int], crop_hw: tuple[int, int], mirror: bool) -> np.ndarray:
    """Corner boxes of the decoded image -> corner boxes of the crop the net sees, as the image transform moves
    pixels: isotropic rescale to ``resized_hw``, crop at ``offset = (h0, w0)`` of size ``crop_hw`` (boxes shifted,
    then clipped to the crop), then a horizontal flip when ``mirror`` (``x -> crop_w - x``)."""
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] *= resized_hw[1] / image_hw[1]
    b[:, [1, 3]] *= resized_hw[0] / image_hw[0]
    b[:, [0, 2]] -= offset[1]
    b[:, [1, 3]] -= offset[0]
    b = clip(b, crop_hw[1], crop_hw[0])
    if mirror:
        b[:, [0, 2]] = crop_hw[1] - b[:, [2, 0]]
    return b


def window_to_image(boxes: np.typing.ArrayLike, window_xy: tuple[float, float],
                    factor: float | tuple[float, float]) -> np.ndarray:
    """Corner boxes of a window at ``window_xy = (x0, y0)`` of an image rescaled by ``factor`` (one number, or
    ``(fx, fy)``) -> corner boxes of the original image (the inverse of rescale + crop)."""
    fx, fy = (factor, factor) if np.isscalar(factor) else factor
    b = as_boxes(boxes).copy()
    b[:, [0, 2]] = (b[:, [0, 2]] + window_xy[0]) / float(fx)
    b[:, [1, 3]] = (b[:, [1, 3]] + window_xy[1]) / float(fy)
    return b
