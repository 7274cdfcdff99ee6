"""pycaffe's ``caffe.draw`` on :mod:`vggproto.viz.draw` (graphviz instead of pydot).

``phase`` is pycaffe's: None draws every layer, ``caffe.TRAIN``/``caffe.TEST`` only those of that phase.
"""
from __future__ import annotations

import os
import tempfile

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import message_to_text
from vggproto.viz import draw as viz_draw


def _options(rankdir: str, phase: int | None, display_lrm: bool) -> viz_draw.DrawOptions:
    name = "ALL" if phase is None else ("TRAIN" if phase == caffe_pb2.TRAIN else "TEST")
    return viz_draw.DrawOptions(rankdir=rankdir, phase=name, display_lrm=display_lrm)


def draw_net_to_file(caffe_net: caffe_pb2.NetParameter, filename: str, rankdir: str = "LR",
                     phase: int | None = None, display_lrm: bool = False) -> str:
    """Draw ``caffe_net`` into ``filename`` (the format follows the extension, any that graphviz writes, as in
    pycaffe); returns the path written."""
    source = message_to_text(caffe_net).encode("utf-8")
    return viz_draw.draw_net(source, filename, _options(rankdir, phase, display_lrm), any_format=True)


def draw_net(caffe_net: caffe_pb2.NetParameter, rankdir: str = "LR", ext: str = "png", phase: int | None = None,
             display_lrm: bool = False) -> bytes:
    """The drawing as bytes of format ``ext``."""
    with tempfile.TemporaryDirectory() as folder:
        path = draw_net_to_file(caffe_net, os.path.join(folder, "net." + ext), rankdir, phase, display_lrm)
        with open(path, "rb") as handle:
            return handle.read()
