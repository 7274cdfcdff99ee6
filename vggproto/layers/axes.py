"""Blob-axis helpers shared by the shape and loss layers: Caffe's canonical axis rule and sub-shape counts.

Caffe lets most ``axis`` fields be negative (counted from the end); every layer validates them the same way
(``Blob::CanonicalAxisIndex``), so one helper gives every layer the same rule and the same error message.
"""
from __future__ import annotations

import math
from typing import Sequence

from vggproto.layers.registry import LayerSpec


def canonical_axis(spec: LayerSpec, axis: int, shape: Sequence[int], field: str) -> int:
    """``axis`` made non-negative for a blob of ``shape``; a NetError naming ``field`` if it is out of range."""
    # Caffe: include/caffe/blob.hpp — CanonicalAxisIndex accepts -num_axes <= axis < num_axes
    n = len(shape)
    if not -n <= axis < n:
        raise spec.error(f"{field}: {axis} is out of range for the {n}-D bottom of shape {tuple(shape)} "
                         f"(allowed: {-n} to {n - 1})")
    return axis + n if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (1 for an empty range), like Caffe's ``Blob::count(start, end)``."""
    return math.prod(shape[start:end])


def legacy_dim(shape: Sequence[int], index: int) -> int:
    """Caffe's ``LegacyShape(index)``: axes past the end of a blob of fewer than 4 axes count as 1."""
    return shape[index] if index < len(shape) else 1
