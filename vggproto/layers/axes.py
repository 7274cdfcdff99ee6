"""Blob-axis helpers shared by the shape and loss layers: Caffe's canonical axis rule and sub-shape counts.

Caffe lets most ``axis`` fields be negative (counted from the end); every layer validates them the same way
(``Blob::CanonicalAxisIndex``), so one helper gives every layer the same rule and the same error message.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vggproto.layers.common import count  # noqa: F401  (re-exported for the shape and loss layers)
from vggproto.layers.registry import LayerSpec


def canonical_axis(spec: LayerSpec, axis: int, shape: Sequence[int], field: str) -> int:
    """``axis`` made non-negative for a blob of ``shape``; a NetError naming ``field`` if it is out of range."""
    # Caffe: include/caffe/blob.hpp — CanonicalAxisIndex accepts -num_axes <= axis < num_axes
    n = len(shape)
    if not -n <= axis < n:
        raise spec.error(f"{field}: {axis} is out of range for the {n}-D bottom of shape {tuple(shape)} "
                         f"(allowed: {-n} to {n - 1})")
    return axis + n if axis < 0 else axis


def legacy_dim(shape: Sequence[int], index: int) -> int:
    """Caffe's ``LegacyShape(index)``: axes past the end of a blob of fewer than 4 axes count as 1."""
    return shape[index] if index < len(shape) else 1


def softmax_along(x: torch.Tensor, axis: int, log: bool = False) -> torch.Tensor:
    """(log-)softmax of ``x`` along ``axis``, taking PyTorch's fast last-axis kernel when no axis follows it.

    PyTorch's kernel for a middle axis is ~25x slower on CPU when the trailing axes are all size 1 (an fc8 score
    of shape (N, C) or (N, C, 1, 1)), which is the common classifier case.
    """
    fn = torch.log_softmax if log else torch.softmax
    if axis != x.dim() - 1 and count(x.shape, axis + 1) == 1:
        return fn(x.reshape(count(x.shape, 0, axis), x.shape[axis]), dim=1).reshape(x.shape)
    return fn(x, dim=axis)
