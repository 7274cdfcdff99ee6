"""What ``vggproto info`` prints for a net: every layer's tops with shapes and counts, and parameter counts, in
the spirit of the ``Top shape: …`` lines of Caffe's net setup log (``src/caffe/net.cpp`` Init)."""
from __future__ import annotations

import os

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.layers.common import count
from vggproto.net.interpreter import Net


def describe_net(path: str | os.PathLike, phase: str = "TEST", shapes: bool = True, dialect: str | None = None) -> str:
    """The shape table of the net built on the meta device (``shapes``), else the layer list of the prototxt.

    No data is read and no Python layer's code is run (Caffe's draw_net does neither): a layer whose top shapes
    only those would tell has unknown tops, and the table says why."""
    if shapes:
        from vggproto.net.shapes import meta_net
        return shape_table(meta_net(path, phase, dialect=dialect))
    return layer_list(read_net(path, dialect=dialect))


def layer_list(net: caffe_pb2.NetParameter) -> str:
    """Each layer's name, type, bottoms and tops, as the prototxt gives them."""
    lines = [f"net '{net.name}': {len(net.layer)} layers"]
    lines += [f"  {layer.name:<20} {layer.type:<18} {','.join(layer.bottom) or '-':<20} -> {','.join(layer.top)}"
              for layer in net.layer]
    return "\n".join(lines)


def shape_table(net: Net) -> str:
    """Caffe-log-style table: each layer's tops with shapes and element counts, parameter counts, and totals.

    A top of unknown shape (a shapes-only build runs no Python layer and reads no data) says ``unknown [k]``;
    the reasons follow the table, once each, so the columns stay narrow."""
    rows = [("layer", "type", "top", "shape (count)", "params")]
    reasons: list[str] = []
    total = 0
    for param, layer in zip(net.net_param.layer, net.layer_list):
        n_params = sum(b.numel() for b in layer.blobs)
        total += n_params
        tops = list(param.top) or ["-"]
        for i, top in enumerate(tops):
            shape = net.blob_shapes.get(top)
            if shape is not None:
                shape_text = f"{' '.join(map(str, shape))} ({count(shape)})".lstrip()
            elif layer.shapes_unknown and top != "-":
                if layer.shapes_unknown not in reasons:
                    reasons.append(layer.shapes_unknown)
                shape_text = f"unknown [{reasons.index(layer.shapes_unknown) + 1}]"
            else:
                shape_text = "-"
            rows.append((param.name if i == 0 else "", param.type if i == 0 else "", top, shape_text,
                         f"{n_params:,}" if i == 0 and n_params else ""))
    widths = [max(len(row[c]) for row in rows) for c in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.append(f"Total params: {total:,}" + (" (layers of unknown shape not counted)" if reasons else ""))
    lines += [f"[{k}] {reason}" for k, reason in enumerate(reasons, 1)]
    return "\n".join(lines)
