"""Blob and parameter shapes of a net, computed by the interpreter on the meta device: the one such build.

:func:`meta_net` is used for drawing and summaries (:func:`phase_shapes`), for making dense nets
(:mod:`vggproto.net.dense`) and for fitting weights to a net in ``vggproto convert`` (:func:`net_param_shapes`).
The net is built by the interpreter itself (:class:`vggproto.net.interpreter.Net`, same phase/level/stage
filtering, shared parameters, validation), so the shapes are exactly those it would run with.  It is built under
PyTorch's ``meta`` device (shapes without memory), so a full VGG train_val net needs no filled weights
(tools/bench_draw_shapes.py: 0.6 s and +2 MB against 31 s and +1.75 GB on the CPU, after a one-off import of
torch's meta decompositions that costs several seconds); a net that cannot be built on ``meta`` is built
normally.  Data layers get ``DataOptions(dry_run=True)`` and do not open their sources.  For drawing, if the
interpreter cannot build the net, the generator's VGG shape walker (:mod:`vggproto.caffe.shapes`) is tried; if
that fails too the caller gets ``None`` and draws without shapes.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vggproto.caffe.netstate import filter_net, merged_state
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net
    from vggproto.net.source import ModelSource

log = logging.getLogger("vggproto.net.shapes")


@dataclass
class NetShapes:
    """Shape of every blob (its last producer's top shape; None when unknown), parameter count of every layer
    (``params``, shared blobs included) and of the blobs each layer owns (``owned``: shared blobs counted at their
    first owner)."""

    blobs: dict[str, Shape | None] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    owned: dict[str, int] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)   # layers whose shapes are unknown (a Python layer's code
                                                       # is not run for shapes, nor what it feeds built)

    @property
    def total(self) -> int:
        return sum(self.owned.values())


def meta_net(model: ModelSource, phase: str | int = "TEST", level: int = 0, stages: tuple[str, ...] = (),
             dialect: str | None = None) -> Net:
    """The interpreter's Net for ``model`` built on the meta device (:meth:`Net.shapes_only`): every blob shape,
    layer line and parameter shape, no weight memory, no data read, no Python layer run."""
    from vggproto.net.interpreter import Net
    return Net.shapes_only(model, phase, level, tuple(stages), dialect)


def param_shapes(net: Net) -> dict[str, list[Shape]]:
    """``{layer: [blob shapes]}`` of a built Net's layers with parameters, in net order."""
    return {layer: [tuple(p.shape) for p in params] for layer, params in net.params.items()}


def net_param_shapes(model: ModelSource, phase: str = "TEST",
                     dialect: str | None = None) -> tuple[caffe_pb2.NetParameter, dict[str, list[Shape]]]:
    """The (unfiltered) NetParameter of ``model`` and the blob shapes of its layers with parameters for ``phase``."""
    from vggproto.caffe.prototxt import read_net
    net_param = model if isinstance(model, caffe_pb2.NetParameter) else read_net(os.fspath(model), dialect=dialect)
    # a path is built from the file, so errors carry line numbers
    return net_param, param_shapes(meta_net(model, phase, dialect=dialect))


def interpreter_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST", level: int = 0,
                       stages: tuple[str, ...] = (), path: str | None = None,
                       dialect: str | None = None) -> NetShapes:
    """Build the unfiltered ``net`` (read from ``path`` when that file exists) for phase/level/stages with the
    interpreter; NetError on a problem."""
    model = path if path and os.path.isfile(path) else net  # from the file, errors carry line numbers
    built = meta_net(model, phase, level, tuple(stages), dialect)
    result = NetShapes(blobs=dict(built.blob_shapes))
    for name, layer in built.layer_dict.items():
        if layer.shapes_unknown:
            result.unknown.append(name)
            continue
        result.params[name] = sum(int(blob.numel()) for blob in layer.blobs)
        result.owned.setdefault(name, 0)
    for learnable in built.learnable_params:
        result.owned[learnable.layer] += int(learnable.param.numel())
    return result


def walker_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST") -> NetShapes:
    """The generator's VGG-only shape walker (no torch), as a fallback for an already filtered ``net``."""
    from vggproto.caffe.shapes import infer_shapes
    blobs, counts = infer_shapes(net, phase)
    params = {layer.name: counts.get(layer.name, 0) for layer in net.layer}
    return NetShapes(blobs=dict(blobs), params=params, owned=dict(params))


def phase_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST", level: int = 0, stages: tuple[str, ...] = (),
                 path: str | None = None, warn: bool = True, dialect: str | None = None) -> NetShapes | None:
    """Shapes of the unfiltered ``net`` for one phase, or None if they cannot be had (logged as a warning, or as
    info with ``warn=False`` when another phase may still provide them)."""
    try:
        return interpreter_shapes(net, phase, level, stages, path, dialect)
    except Exception as first:  # drawing must never fail because of shapes; say why and try the walker
        reason = (str(first) or type(first).__name__).split(". Supported types:")[0]
    try:
        shapes = walker_shapes(filter_net(net, merged_state(net, phase, level, stages), path), phase)
    except Exception:  # the walker knows only the VGG layer types
        (log.warning if warn else log.info)("no blob shapes for phase %s: %s", phase, reason)
        return None
    log.debug("blob shapes for phase %s from the VGG shape walker (interpreter: %s)", phase, reason)
    return shapes
