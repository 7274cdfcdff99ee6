"""A model as the interpreter is given it (prototxt path, text, bytes or NetParameter): parsed in its dialect,
upgraded as Caffe upgrades every net, and each layer's line in the text, so errors can point at it."""
from __future__ import annotations

import os

from vggproto.caffe.dialects import detect
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import ParsedNet, layer_lines, parse_net

ModelSource = str | os.PathLike | bytes | caffe_pb2.NetParameter


def load_model(model: ModelSource, dialect: str | None) -> ParsedNet:
    """The net of ``model`` parsed in its dialect and upgraded; a NetParameter is copied, never changed."""
    if isinstance(model, caffe_pb2.NetParameter):
        from vggproto.caffe.upgrade import upgrade_net
        net = caffe_pb2.NetParameter()
        net.CopyFrom(model)
        upgrade_net(net)   # Caffe upgrades every net it is given (V0/V1 layers, input fields)
        return ParsedNet(net, None, None, detect(net, dialect, warn=False))
    return parse_net(model, dialect=dialect)


def layer_line_numbers(net: caffe_pb2.NetParameter, text: str | None) -> list[int | None]:
    """Line of each layer of ``net`` (k-th layer named X ↔ k-th ``layer`` block named X in the text)."""
    if text is None:
        return [None] * len(net.layer)
    by_name: dict[str | None, list[int]] = {}
    for line, name in layer_lines(text):
        by_name.setdefault(name, []).append(line)
    seen: dict[str, int] = {}
    lines = []
    for layer in net.layer:
        k = seen.get(layer.name, 0)
        seen[layer.name] = k + 1
        candidates = by_name.get(layer.name, [])
        lines.append(candidates[k] if k < len(candidates) else None)
    return lines


def model_name(model: ModelSource) -> str:
    """A short name of ``model`` for log lines: the net's name, or the path (or text) cut to 80 characters."""
    return model.name if isinstance(model, caffe_pb2.NetParameter) else str(model)[:80]
