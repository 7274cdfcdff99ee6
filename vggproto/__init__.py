"""vggproto: a Caffe-compatible toolchain for the VGG very deep ConvNets.

The public API is re-exported here.  Names whose modules need torch (``Net``, ``Solver``...) are imported on
first use (PEP 562), so that ``import vggproto`` and the format-only commands stay fast.
"""
from __future__ import annotations

import importlib

from vggproto.caffe.prototxt import read_net, read_solver, write_net, write_solver  # noqa: F401
from vggproto.errors import DataError, NetError, PrototxtError, SolverError, VGGProtoError, WeightsError  # noqa: F401

__version__ = "0.2.0"

# public name -> module that defines it (imported lazily)
_LAZY = {
    "read_weights": "vggproto.weights.caffemodel",
    "write_weights": "vggproto.weights.caffemodel",
    "Net": "vggproto.net.interpreter",
    "Solver": "vggproto.train.solver",
    "generate": "vggproto.vgg.generate",
    "caffe_pb2": "vggproto.caffe.proto.caffe_pb2",
}

__all__ = ["read_net", "write_net", "read_solver", "write_solver", "VGGProtoError", "PrototxtError", "NetError",
           "WeightsError", "SolverError", "DataError", *_LAZY]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vggproto' has no attribute '{name}'")
    value = importlib.import_module(module)
    return value if name == "caffe_pb2" else getattr(value, name)
