"""A drop-in ``caffe`` Python module (pycaffe's public surface) on vggproto's PyTorch net and solver.

``import vggproto.pycaffe as caffe`` gives ``caffe.Net``, the solvers, ``caffe.io``, ``caffe.Classifier``,
``caffe.Detector``, ``caffe.NetSpec``/``layers``/``params``, ``caffe.draw`` and ``caffe.proto.caffe_pb2`` with
Caffe's semantics; Python layers (``type: "Python"``) run inside vggproto nets, trainable.  What differs from
pycaffe is listed in docs/notes/pycaffe.md.
"""
from __future__ import annotations

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.python import Blob, Layer
from vggproto.layers.registry import supported_types
from vggproto.pycaffe import io, proto
from vggproto.pycaffe.classifier import Classifier, Detector
from vggproto.pycaffe.mode import (
    Timer,
    has_nccl,
    init_log,
    log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from vggproto.pycaffe.net import TEST, TRAIN, Net
from vggproto.pycaffe.net_spec import NetSpec, layers, params, to_proto
from vggproto.pycaffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    Solver,
    get_solver,
)

__version__ = "1.0.0"


def layer_type_list() -> list[str]:
    """Every layer type this ``caffe`` can build (Caffe's LayerRegistry::LayerTypeList), sorted."""
    return supported_types()


def __getattr__(name: str) -> object:
    """``caffe.draw`` loads graphviz support only when used."""
    if name == "draw":
        import importlib
        return importlib.import_module("vggproto.pycaffe.draw")
    raise AttributeError(f"module 'caffe' has no attribute '{name}'")


__all__ = ["AdaDeltaSolver", "AdaGradSolver", "AdamSolver", "Blob", "Classifier", "Detector", "Layer",
           "NesterovSolver", "Net", "NetSpec", "RMSPropSolver", "SGDSolver", "Solver", "TEST", "TRAIN", "caffe_pb2",
           "get_solver", "io", "layer_type_list", "layers", "params", "proto", "set_device", "set_mode_cpu",
           "set_mode_gpu", "set_random_seed", "to_proto", "Timer", "has_nccl", "init_log", "log", "set_multiprocess",
           "set_solver_count", "set_solver_rank", "solver_count", "solver_rank"]
