"""``caffe.proto``: Caffe's schema module, ``caffe_pb2`` (vggproto's generated copy of BVLC caffe.proto).

Registered as the submodule ``vggproto.pycaffe.proto.caffe_pb2`` too, so that ``import caffe.proto.caffe_pb2``
and ``from caffe.proto import caffe_pb2`` both work through the shim.
"""
from __future__ import annotations

import sys

from vggproto.caffe.proto import caffe_pb2

sys.modules[__name__ + ".caffe_pb2"] = caffe_pb2

__all__ = ["caffe_pb2"]
