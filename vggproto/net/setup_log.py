"""The net-setup lines Caffe's ``Net::Init`` logs (``src/caffe/net.cpp``), for the nets a solver builds.

Scripts written for Caffe logs grep for them (``Top shape:``, ``Memory required for data:``, ``Network
initialization done.``), so training logs carry them with Caffe's wording; ``vggproto info`` and friends, which
build nets only for shapes, stay quiet.
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from vggproto.caffe.prototxt import message_to_text

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.net.interpreter")   # net.cpp in the glog prefix (vggproto.caffe.glog)

_FLOAT_BYTES = 4   # Caffe's Dtype float


def _shape_text(shape: tuple[int, ...]) -> str:
    # Caffe: blob.hpp shape_string — dims, then the count; a 0-axis (scalar) blob prints "(1)"
    return (" ".join(str(d) for d in shape) + f" ({math.prod(shape)})").lstrip()


def setup_lines(net: "Net") -> list[str]:
    """Caffe's Net::Init log for ``net``: the filtered definition, then per layer its bottoms and tops, top
    shapes with loss weights and the running data memory, then the outputs."""
    lines = ["Initializing net from parameters: \n" + message_to_text(net.net_param).rstrip()]
    memory = 0
    weights = net.loss_weights
    for param, layer in zip(net.net_param.layer, net.layer_list):
        lines.append(f"Creating Layer {param.name}")
        lines += [f"{param.name} <- {bottom}" for bottom in param.bottom]
        lines += [f"{param.name} -> {top}" + (" (in-place)" if top in param.bottom else "") for top in param.top]
        lines.append(f"Setting up {param.name}")
        for top, shape in zip(param.top, layer.top_shapes):
            lines.append(f"Top shape: {_shape_text(tuple(shape))}")
            if weights.get(top):
                lines.append(f"    with loss weight {weights[top]:g}")
            memory += math.prod(shape) * _FLOAT_BYTES
        lines.append(f"Memory required for data: {memory}")
    lines += [f"This network produces output {name}" for name in net.output_names]
    lines.append("Network initialization done.")
    return lines


def log_setup(net: "Net") -> None:
    """Log :func:`setup_lines` at INFO (the solver calls it for its train and test nets)."""
    for line in setup_lines(net):
        log.info(line)
