"""Blob-axis helpers shared by the shape, arithmetic and loss layers: Caffe's legacy dims and a fast softmax.

``canonical_axis`` and ``count`` live in :mod:`vggproto.layers.common` and are re-exported here for these layers.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vggproto.layers.common import canonical_axis, count  # noqa: F401  (re-exported)


def legacy_dim(shape: Sequence[int], index: int) -> int:
    """Caffe's ``LegacyShape(index)``: axes past the end of a blob of fewer than 4 axes count as 1."""
    return shape[index] if index < len(shape) else 1


def softmax_along(x: torch.Tensor, axis: int, log: bool = False) -> torch.Tensor:
    """(log-)softmax of ``x`` along ``axis``, taking PyTorch's fast last-axis kernel when no axis follows it.

    PyTorch's kernel for a middle axis is ~25x slower on CPU when the trailing axes are all size 1 (an fc8 score
    of shape (N, C) or (N, C, 1, 1)), which is the common classifier case.  An ONNX export takes the plain op:
    the shortcut's test (trailing axes of size 1) would be frozen into the graph, which at a larger H x W
    would then mix the cells of a plane (opset 13 Softmax takes any axis).
    """
    fn = torch.log_softmax if log else torch.softmax
    if axis != x.dim() - 1 and count(x.shape, axis + 1) == 1 and x.numel() and not torch.onnx.is_in_onnx_export():
        return fn(x.reshape(-1, x.shape[axis]), dim=1).reshape(x.shape)
    return fn(x, dim=axis)
