"""Caffe's Net::Reshape check for inputs fed at another shape than the net was built for.

Caffe re-runs every layer's Reshape (and its CHECKs) when an input blob changes shape; here a shapes-only build of
the net with the Input layers' new shapes does it, and each layer's parameter shapes there are compared with the
real ones (Caffe: e.g. base_conv_layer.cpp Reshape checks the bottoms against the layer's existing weights).  The
interpreter runs it before the first layer when an input has another number of axes, and after a failed pass
whose inputs had another shape, so a shape the net cannot take is one located error, not PyTorch's message.
"""
from __future__ import annotations

from typing import Callable, Protocol

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.errors import InputShapeError, NetError
from vggproto.net.weights import LayeredNet


class ShapedNet(LayeredNet, Protocol):
    """A :class:`LayeredNet` that also knows the blob shapes it was built for and its phase."""

    blob_shapes: dict[str, Shape | None]
    phase: int


def reshaped_definition(net: ShapedNet, fed: dict[str, Shape]) -> caffe_pb2.NetParameter:
    """``net``'s (already filtered) definition with its Input layers declaring the shapes in ``fed``."""
    reshaped = caffe_pb2.NetParameter()
    reshaped.CopyFrom(net.net_param)
    for layer in reshaped.layer:   # already filtered for this net's state
        del layer.include[:], layer.exclude[:]
        if layer.type == "Input":
            del layer.input_param.shape[:]
            for top in layer.top:
                layer.input_param.shape.add().dim.extend(fed.get(top, net.blob_shapes[top]))
    return reshaped


def check_reshaped(net: ShapedNet, fed: dict[str, Shape],
                   build: Callable[[caffe_pb2.NetParameter], LayeredNet]) -> None:
    """Raise one located :class:`InputShapeError` when ``net`` cannot take its Input tops at the shapes ``fed``
    (``build`` makes a shapes-only net of a definition)."""
    shapes = ", ".join(f"{top} {shape}" for top, shape in fed.items())
    try:
        rebuilt = build(reshaped_definition(net, fed))
    except NetError as exc:   # located in this net's file, with the shapes that caused it
        raise InputShapeError(f"{exc.reason} (after reshaping {shapes})", path=net.path,
                              line=net.layer_lines.get(exc.layer or ""), layer=exc.layer,
                              layer_type=exc.layer_type) from None
    for name, layer in rebuilt.layer_dict.items():
        if layer.shapes_unknown:   # a Python layer checks in its own reshape
            continue
        need = [tuple(b.shape) for b in layer.blobs]
        have = [tuple(b.shape) for b in net.layer_dict[name].blobs]
        if need != have:
            param = layer.spec.param
            raise InputShapeError(f"parameters of shapes {have} do not fit the bottoms after reshaping {shapes} "
                                  f"(they would need {need})", path=net.path, line=net.layer_lines.get(name),
                                  layer=param.name, layer_type=param.type)
