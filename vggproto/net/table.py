"""What ``vggproto info`` prints for a net: every layer's tops with shapes and counts, and parameter counts, in
the spirit of the ``Top shape: …`` lines of Caffe's net setup log (``src/caffe/net.cpp`` Init)."""
from __future__ import annotations

import os

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.errors import DataShapeUnknown
from vggproto.layers.common import count
from vggproto.net.interpreter import Net


def describe_net(path: str | os.PathLike, phase: str = "TEST", shapes: bool = True, dialect: str | None = None) -> str:
    """The shape table of the net built on the meta device (``shapes``), else the layer list of the prototxt.

    No data is read (Caffe's draw_net reads none either): a data layer whose shape only its data would tell makes
    the shapes unknown, and the layer list is shown with the reason."""
    if shapes:
        from vggproto.net.shapes import meta_net
        try:
            return shape_table(meta_net(path, phase, dialect=dialect))
        except DataShapeUnknown as exc:
            return f"{layer_list(read_net(path, dialect=dialect))}\nblob shapes unknown: {exc}"
    return layer_list(read_net(path, dialect=dialect))


def layer_list(net: caffe_pb2.NetParameter) -> str:
    """Each layer's name, type, bottoms and tops, as the prototxt gives them."""
    lines = [f"net '{net.name}': {len(net.layer)} layers"]
    lines += [f"  {layer.name:<20} {layer.type:<18} {','.join(layer.bottom) or '-':<20} -> {','.join(layer.top)}"
              for layer in net.layer]
    return "\n".join(lines)


def shape_table(net: Net) -> str:
    """Caffe-log-style table: each layer's tops with shapes and element counts, parameter counts, and totals."""
    rows = [("layer", "type", "top", "shape (count)", "params")]
    total = 0
    for param, layer in zip(net.net_param.layer, net.layer_list):
        n_params = sum(b.numel() for b in layer.blobs)
        total += n_params
        tops = list(param.top) or ["-"]
        for i, top in enumerate(tops):
            shape = net.blob_shapes.get(top)
            if shape is not None:
                shape_text = f"{' '.join(map(str, shape))} ({count(shape)})".lstrip()
            else:   # a shapes-only build does not run a Python layer's code, nor build what it feeds
                shape_text = f"unknown: {layer.shapes_unknown}" if layer.shapes_unknown and top != "-" else "-"
            rows.append((param.name if i == 0 else "", param.type if i == 0 else "", top, shape_text,
                         f"{n_params:,}" if i == 0 and n_params else ""))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    unknown = any(layer.shapes_unknown for layer in net.layer_list)
    lines.append(f"Total params: {total:,}" + (" (layers of unknown shape not counted)" if unknown else ""))
    return "\n".join(lines)
