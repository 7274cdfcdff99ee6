"""The greedy merge of localisation predictions (Sermanet et al. 2014, Sect. 4.3), on the box geometry and
conventions of :mod:`vggproto.data.box_geometry`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from vggproto.data.box_geometry import as_boxes, iou_matrix

# --------------------------------------------------------------------------------------------------------------
# Greedy merging (Sermanet et al. 2014, Sect. 4.3)
# --------------------------------------------------------------------------------------------------------------

@dataclass
class MergedBox:
    """A box made of ``count`` predictions: the mean of their corners and the sum of their class scores."""

    box: np.ndarray
    score: float
    count: int = 1
    members: list[int] = field(default_factory=list)


def match_matrix(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> np.ndarray:
    """How far apart the boxes of ``a`` and ``b`` are (N×M; 0 for identical boxes; merge when small).

    Sermanet et al. combine the distance between the centres and the boxes' intersection; we use the centre
    distance divided by the mean side of the two boxes (scale-free) plus ``1 - IoU``.
    """
    a, b = as_boxes(a), as_boxes(b)
    ca, cb = (a[:, :2] + a[:, 2:]) / 2, (b[:, :2] + b[:, 2:]) / 2
    sa, sb = (a[:, 2] - a[:, 0] + a[:, 3] - a[:, 1]) / 2, (b[:, 2] - b[:, 0] + b[:, 3] - b[:, 1]) / 2
    size = np.maximum((sa[:, None] + sb[None, :]) / 2, 1e-12)
    distance = np.hypot(ca[:, None, 0] - cb[None, :, 0], ca[:, None, 1] - cb[None, :, 1]) / size
    return distance + 1.0 - iou_matrix(a, b)


def match_score(a: np.typing.ArrayLike, b: np.typing.ArrayLike) -> float:
    """:func:`match_matrix` of two single boxes."""
    return float(match_matrix(a, b)[0, 0])


def greedy_merge(boxes: np.typing.ArrayLike, scores: Sequence[float], threshold: float = 0.5) -> list[MergedBox]:
    """Sermanet et al.'s greedy merging: repeatedly merge the closest pair of boxes (smallest
    :func:`match_matrix`) while it is below ``threshold``; a merged box is the average of the coordinates of all
    the predictions it holds and is rated by the sum of their class scores.  Returned best-rated first."""
    b = as_boxes(boxes)
    scores = [float(s) for s in scores]
    if len(scores) != len(b):
        raise ValueError(f"{len(b)} boxes but {len(scores)} scores")
    merged = [MergedBox(b[i].copy(), scores[i], 1, [i]) for i in range(len(b))]
    sums = b.copy()
    dist = np.triu(match_matrix(b, b), 1) + np.tril(np.full((len(b), len(b)), np.inf))
    alive = np.ones(len(b), dtype=bool)
    while alive.sum() > 1:
        i, j = np.unravel_index(int(np.argmin(dist)), dist.shape)
        if not dist[i, j] < threshold:
            break
        keep, gone = merged[i], merged[j]
        sums[i] += sums[j]
        keep.count += gone.count
        keep.score += gone.score
        keep.members += gone.members
        keep.box = sums[i] / keep.count
        alive[j] = False
        dist[j, :] = dist[:, j] = np.inf
        others = np.flatnonzero(alive & (np.arange(len(b)) != i))
        if others.size:
            row = match_matrix(keep.box, np.stack([merged[k].box for k in others]))[0]
            for k, value in zip(others, row):
                dist[min(i, k), max(i, k)] = value
    out = [m for m, a in zip(merged, alive) if a]
    return sorted(out, key=lambda m: -m.score)
