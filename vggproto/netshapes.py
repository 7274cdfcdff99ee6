"""Blob shapes and parameter counts of a net, for drawing and summaries, computed by the interpreter's layers.

Each layer is built by the interpreter's own builder (:func:`vggproto.layers.registry.build_layer`), so the shapes
are exactly those the interpreter would run with.  The parameter blobs are allocated on PyTorch's ``meta`` device
(shapes without memory), so a full VGG-19 costs milliseconds instead of ~550 MB of filled weights; a layer that
cannot be built on ``meta`` is built normally.  Data layers get ``options["dry_run"]`` and do not open their
sources.  If the interpreter cannot build the net, the generator's VGG shape walker
(:mod:`vggproto.shapewalk`) is tried; if that fails too the caller gets ``None`` and draws without shapes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from vggproto._pb import caffe_pb2
from vggproto.errors import NetError, VGGProtoError
from vggproto.netstate import PHASES

log = logging.getLogger("vggproto.netshapes")

Shape = tuple[int, ...]


@dataclass
class NetShapes:
    """Shape of every blob (its last producer's top shape) and learnable parameter count of every layer."""

    blobs: dict[str, Shape] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.params.values())


def _build(spec):
    import torch

    from vggproto.layers.registry import build_layer
    try:
        with torch.device("meta"):
            return build_layer(spec)
    except VGGProtoError:
        raise
    except Exception as exc:  # some layer needs real values at construction: build it for real
        log.debug("layer '%s' cannot be built on the meta device (%s); building it on the CPU", spec.name, exc)
        return build_layer(spec)


def interpreter_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST", path: str | None = None) -> NetShapes:
    """Walk an already filtered ``net`` through the interpreter's layer builders; NetError on a problem."""
    from vggproto.layers.registry import LayerSpec

    result = NetShapes()
    for layer in net.layer:
        missing = [b for b in layer.bottom if b not in result.blobs]
        if missing:
            raise NetError(f"unknown bottom blob '{missing[0]}'", path=path, layer=layer.name,
                           layer_type=layer.type)
        spec = LayerSpec(param=layer, bottom_shapes=[result.blobs[b] for b in layer.bottom],
                         phase=PHASES[phase], path=path, options={"dry_run": True})
        module = _build(spec)
        for name, shape in zip(layer.top, module.top_shapes):
            result.blobs[name] = tuple(int(d) for d in shape)
        result.params[layer.name] = sum(int(blob.numel()) for blob in module.blobs)
    return result


def walker_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST") -> NetShapes:
    """The generator's VGG-only shape walker (no torch), as a fallback."""
    from vggproto.shapewalk import infer_shapes
    blobs, counts = infer_shapes(net, phase)
    params = {layer.name: counts.get(layer.name, 0) for layer in net.layer}
    return NetShapes(blobs=dict(blobs), params=params)


def phase_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST", path: str | None = None) -> NetShapes | None:
    """Shapes of an already filtered ``net``, or None (with a logged warning) if neither way can compute them."""
    try:
        return interpreter_shapes(net, phase, path)
    except Exception as first:  # drawing must never fail because of shapes; say why and try the walker
        reason = (str(first) or type(first).__name__).split(". Supported types:")[0]
    try:
        shapes = walker_shapes(net, phase)
    except Exception:  # the walker knows only the VGG layer types
        log.warning("no blob shapes for phase %s: %s", phase, reason)
        return None
    log.debug("blob shapes for phase %s from the VGG shape walker (interpreter: %s)", phase, reason)
    return shapes
