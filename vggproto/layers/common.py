"""Small helpers shared by the core layer modules: axis canonicalisation, per-axis geometry parameters, counts.

They mirror Caffe's Blob::CanonicalAxisIndex and the kernel/stride/pad parsing of BaseConvolutionLayer so that
every layer validates its fields the same way and reports errors through ``spec.error``.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from google.protobuf.message import Message

from vggproto.layers.base import CaffeLayer, LayerSpec, check_count


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Product of ``shape[start:end]`` (1 for an empty range), like Caffe's Blob::count(start, end)."""
    return int(math.prod(shape[start:end]))


def canonical_axis(spec: LayerSpec, axis: int, shape: Sequence[int], field: str) -> int:
    """``axis`` made non-negative for a blob of ``shape``; a NetError naming ``field`` if it is out of range."""
    # Caffe: include/caffe/blob.hpp — CanonicalAxisIndex accepts -num_axes <= axis < num_axes
    n = len(shape)
    if not -n <= axis < n:
        raise spec.error(f"{field}: {axis} is out of range for the {n}-D bottom of shape {tuple(shape)} "
                         f"(allowed: {-n} to {n - 1})")
    return axis + n if axis < 0 else axis


def expect_bottoms(spec: LayerSpec, low: int, high: float | None = None) -> None:
    """Check the number of bottoms is in [low, high] (``high`` None: exactly ``low``; ANY: at least ``low``), for a
    layer whose count depends on its parameters (the others declare ``CaffeLayer.n_bottoms``)."""
    check_count(spec, "bottom", len(spec.bottom_shapes), (low, low if high is None else high))


def expect_tops(spec: LayerSpec, low: int, high: int | None = None) -> None:
    """Check the number of tops is in [low, high] (the others declare ``CaffeLayer.n_tops``)."""
    check_count(spec, "top", len(spec.param.top), (low, low if high is None else high))


def axis_values(spec: LayerSpec, repeated: Sequence[int], h: int | None, w: int | None, n_axes: int,
                default: int | None, field: str) -> list[int]:
    """Caffe: src/caffe/layers/base_conv_layer.cpp — a per-axis value from ``field_h/_w`` (2-D only) or the
    repeated ``field`` (one value for all axes or one per axis), else ``default``."""
    if h is not None or w is not None:
        if n_axes != 2:
            raise spec.error(f"{field}_h/{field}_w can only be used for 2 spatial axes, got {n_axes}")
        if h is None or w is None:
            raise spec.error(f"{field}_h and {field}_w must be given together")
        return [int(h), int(w)]
    values = [int(v) for v in repeated]
    if not values:
        if default is None:
            raise spec.error(f"{field} (or {field}_h and {field}_w) is required")
        return [default] * n_axes
    if len(values) == 1:
        return values * n_axes
    if len(values) != n_axes:
        raise spec.error(f"{field} must be specified once or once per spatial axis ({n_axes}), got {len(values)}")
    return values


def conv_geometry(spec: LayerSpec, p: Message, n_sp: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, stride, pad, dilation) per spatial axis from a ConvolutionParameter, for every layer that reads
    one (Convolution, Deconvolution, Im2col, the forks' depthwise convolutions)."""
    for name, repeated in (("kernel", p.kernel_size), ("stride", p.stride), ("pad", p.pad)):
        # Caffe: base_conv_layer.cpp / im2col_layer.cpp — "Either kernel_size or kernel_h/w should be specified"
        if (p.HasField(f"{name}_h") or p.HasField(f"{name}_w")) and len(repeated):
            field = "kernel_size" if name == "kernel" else name
            raise spec.error(f"either {field} or {name}_h/{name}_w may be given, not both")
    kernel = axis_values(spec, p.kernel_size, opt(p, "kernel_h"), opt(p, "kernel_w"), n_sp, None, "kernel_size")
    stride = axis_values(spec, p.stride, opt(p, "stride_h"), opt(p, "stride_w"), n_sp, 1, "stride")
    pad = axis_values(spec, p.pad, opt(p, "pad_h"), opt(p, "pad_w"), n_sp, 0, "pad")
    dilation = axis_values(spec, p.dilation, None, None, n_sp, 1, "dilation")
    return kernel, stride, pad, dilation


def opt(message: Message, name: str) -> Any:
    """The field's value if it is set, else None (to tell 'unset' from the proto2 default)."""
    return getattr(message, name) if message.HasField(name) else None


def blob(layer: CaffeLayer, index: int) -> torch.Tensor:
    """Parameter blob ``index`` in the shape this layer declared (a PERMISSIVE shared blob may differ)."""
    param = layer.blobs[index]
    shapes = getattr(layer, "blob_shapes", None)
    if shapes is not None and tuple(param.shape) != shapes[index]:
        return param.reshape(shapes[index])
    return param
