"""pycaffe's ``caffe.coord_map``: the affine map between two NetSpec tops' spatial coordinates, and ``crop``, the
Crop layer that aligns one top to another (how FCN nets line a deconvolution's output up with the input).

Each spatial layer maps its bottom's coordinates to its top's as ``top = a * bottom + b`` along an axis
(convolution and pooling: ``a = 1/stride``, ``b = (pad - (k - 1)/2)/stride`` with ``k`` the dilated kernel;
deconvolution the inverse; element-wise layers the identity; Crop a shift).  Two tops are related through a
common ancestor by composing these maps.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vggproto.pycaffe.net_spec import Function, Top, layers

PASS_THROUGH_LAYERS = ["AbsVal", "BatchNorm", "Bias", "BNLL", "Dropout", "Eltwise", "ELU", "Log", "LRN", "Exp",
                       "MVN", "Power", "ReLU", "PReLU", "Scale", "Sigmoid", "Split", "TanH", "Threshold"]

Map = tuple[Any, Any, Any]


class UndefinedMapException(Exception):
    """The layer has no spatial coordinate map (e.g. InnerProduct)."""


class AxisMismatchException(Exception):
    """Two maps act on different axes."""


def conv_params(fn: Function) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """(axis, stride, dilated kernel extent, pad) of a Convolution/Pooling/Deconvolution function."""
    params = fn.params.get("convolution_param", fn.params)
    legacy = {"pad_h", "pad_w", "kernel_h", "kernel_w", "stride_h", "stride_w"} & set(fn.params)
    if legacy:
        raise ValueError("cropping does not support legacy _h/_w params")
    kernel = np.array(params["kernel_size"], ndmin=1)
    dilation = np.array(params.get("dilation", 1), ndmin=1)
    return (params.get("axis", 1), np.array(params.get("stride", 1), ndmin=1), (kernel - 1) * dilation + 1,
            np.array(params.get("pad", 0), ndmin=1))


def crop_params(fn: Function) -> tuple[int, np.ndarray]:
    """(axis, offset) of a Crop function (spatial axes by default)."""
    params = fn.params.get("crop_param", fn.params)
    return params.get("axis", 2), np.array(params.get("offset", 0), ndmin=1)


def coord_map(fn: Function) -> Map:
    """The map from ``fn``'s bottom coordinates to its top's: (axis, a, b)."""
    if fn.type_name in ("Convolution", "Pooling", "Im2col"):
        axis, stride, kernel, pad = conv_params(fn)
        return axis, 1 / stride, (pad - (kernel - 1) / 2) / stride
    if fn.type_name == "Deconvolution":
        axis, stride, kernel, pad = conv_params(fn)
        return axis, stride, (kernel - 1) / 2 - pad
    if fn.type_name in PASS_THROUGH_LAYERS:
        return None, 1, 0
    if fn.type_name == "Crop":
        axis, offset = crop_params(fn)
        return axis - 1, 1, -offset   # -1: the last non-coordinate axis
    raise UndefinedMapException


def compose(base_map: Map, next_map: Map) -> Map:
    """``base_map`` after ``next_map``."""
    ax1, a1, b1 = base_map
    ax2, a2, b2 = next_map
    if ax1 is None:
        axis = ax2
    elif ax2 is None or ax1 == ax2:
        axis = ax1
    else:
        raise AxisMismatchException
    return axis, a1 * a2, a1 * b2 + b1


def inverse(coord: Map) -> Map:
    axis, a, b = coord
    return axis, 1 / a, -b / a


def _bottoms(top: Top) -> tuple:
    bottoms = top.fn.inputs
    return bottoms[:1] if top.fn.type_name == "Crop" else bottoms


def _walk(start: Top, stop: dict | None) -> tuple[dict, Map | None]:
    """Maps from ``start`` back to each ancestor; with ``stop``, the composed map at the first ancestor in it."""
    maps: dict = {start: (None, 1, 0)}
    frontier = {start}
    while frontier:
        top = frontier.pop()
        if stop is not None and top in stop:
            return maps, compose(maps[top], inverse(stop[top]))
        try:
            for bottom in _bottoms(top):
                maps[bottom] = compose(maps[top], coord_map(top.fn))
                frontier.add(bottom)
        except UndefinedMapException:
            continue
    return maps, None


def coord_map_from_to(top_from: Top, top_to: Top) -> Map:
    """The map from ``top_from``'s coordinates to ``top_to``'s, through their common ancestor."""
    from_maps, _ = _walk(top_from, None)
    _, found = _walk(top_to, from_maps)
    if found is None:
        raise RuntimeError("Could not compute map between tops; are they connected by spatial layers?")
    return found


def crop(top_from: Top, top_to: Top) -> Top:
    """A Crop layer cutting ``top_from`` to ``top_to``'s extent, aligned by the coordinate map."""
    axis, a, b = coord_map_from_to(top_from, top_to)
    if not np.all(a == 1):
        raise AssertionError(f"scale mismatch on crop (a = {a})")
    if not np.all(b <= 0):
        raise AssertionError(f"cannot crop negative offset (b = {b})")
    if not np.all(np.round(b) == b):
        raise AssertionError(f"cannot crop noninteger offset (b = {b})")
    return layers.Crop(top_from, top_to, crop_param=dict(axis=axis + 1,   # +1: the first cropped axis
                                                         offset=list(-np.round(b).astype(int))))
