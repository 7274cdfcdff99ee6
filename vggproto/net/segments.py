"""Which part of a net another runtime runs (onnxruntime, ncnn; ``vggproto convert`` to ncnn): the longest run of
layers after the net's feeding layers (Input, MemoryData, and the data layers ``test``/``evaluate`` read LMDBs
with, which stay in vggproto and feed the graph) up to the first layer the runtime cannot hold (for ONNX:
DetectionOutput, Python, a loss or data layer, see :meth:`CaffeLayer.onnx_refusal`; for ncnn
:func:`vggproto.convert.ncnn.refusal`).  The layers after it run in the interpreter, fed with the segment's
outputs: the split engine.

The segment is exported as a sub-net of its own: one Input layer for the blobs it reads from before it (at the
shapes the caller actually feeds), its layers unchanged, and a ``Split`` copy of every blob the rest of the net or
the caller reads, so that a blob that is also consumed inside the segment still leaves the graph (at its value
at the segment's end, as Caffe's in-place blobs hold it then).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from vggproto.caffe.proto import caffe_pb2

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

#: Why layer ``index`` of a net cannot run in an engine (None: it can).
Refusal = Callable[["Net", int], "str | None"]
#: The suffix of the copies that carry a segment's outputs out of the graph.
OUT_SUFFIX = "@engine"


@dataclass(frozen=True)
class Segment:
    """Layers ``start`` to ``end`` (exclusive) of the net; the blobs they read from before and give back."""

    start: int
    end: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def describe(self, net: Net) -> str:
        """One phrase for logs: which layers run where."""
        names = net.layer_names
        rest = f", '{names[self.end]}' onwards in torch" if self.end < len(names) else ""
        return f"layers '{names[self.start]}'..'{names[self.end - 1]}' in onnxruntime{rest}"


def onnx_refusal(net: Net, index: int) -> str | None:
    """Why layer ``index`` cannot be exported to ONNX (None if it can): the layer class says (layers/base.py)."""
    return type(net.layer_list[index]).onnx_refusal(net.net_param.layer[index], "TEST")


def stop_reason(net: Net, index: int, refusal: Refusal) -> str | None:
    """Why layer ``index`` cannot join the segment (None if it can)."""
    layer = net.layer_list[index]
    if layer.feeds or layer.is_data:
        return "a data or input layer"
    if layer.is_loss:
        return "a loss layer"
    return refusal(net, index)


def feeding_end(net: Net) -> int:
    """The index of the first layer after the net's feeding layers (Input, MemoryData, data layers): where every
    engine's segment starts, and where the interpreter resumes when no engine ran."""
    index = 0
    while index < len(net.layer_list) and (net.layer_list[index].feeds or net.layer_list[index].is_data):
        index += 1
    return index


def plan(net: Net, keep: Sequence[str] = (), refusal: Refusal = onnx_refusal,
         where: str = "onnxruntime") -> Segment | str:
    """The segment the engine ``where`` runs for ``net`` (whose caller reads the blobs ``keep`` besides its
    outputs), or a one-line reason why no layer can run there; ``refusal`` says why a layer cannot join."""
    if net.phase != caffe_pb2.TEST:
        return f"only TEST-phase nets run in {where} (TRAIN-phase layers draw random numbers)"
    layers = net.net_param.layer
    start = end = feeding_end(net)
    while end < len(layers) and stop_reason(net, end, refusal) is None:
        end += 1
    if end == start:
        if start == len(layers):
            return "the net has no layer after its inputs"
        return (f"layer '{layers[start].name}' ({layers[start].type}) cannot run in {where}: "
                f"{stop_reason(net, start, refusal)}")
    produced: list[str] = []
    inputs: list[str] = []
    for param in layers[start:end]:
        inputs += [b for b in param.bottom if b not in produced and b not in inputs]
        produced += [t for t in param.top if t not in produced]
    later = {b for param in layers[end:] for b in param.bottom}
    wanted = later | set(net.output_names) | set(keep)
    outputs = tuple(sorted(b for b in produced if b in wanted))
    if not outputs:
        return "nothing the net gives back is computed by the layers ONNX can hold"
    return Segment(start, end, tuple(inputs), outputs)


def sub_net(net: Net, segment: Segment, shapes: Mapping[str, Sequence[int]]) -> caffe_pb2.NetParameter:
    """The segment as a net of its own, fed at ``shapes`` (see the module doc)."""
    sub = caffe_pb2.NetParameter(name=net.net_param.name or "segment")
    feed = sub.layer.add(name="vggproto_engine_input", type="Input", top=list(segment.inputs))
    for name in segment.inputs:
        feed.input_param.shape.add(dim=list(shapes[name]))
    for param in net.net_param.layer[segment.start:segment.end]:
        layer = sub.layer.add()
        layer.CopyFrom(param)
        del layer.include[:], layer.exclude[:]   # the net was filtered already; no second filter may drop it
    for name in segment.outputs:
        sub.layer.add(name=f"vggproto_engine_out_{name}", type="Split", bottom=[name], top=[name + OUT_SUFFIX])
    return sub


def segment_weights(net: Net, segment: Segment) -> dict[str, list[np.ndarray]]:
    """``{layer: [blobs]}`` of the segment's layers as the net holds them now (fitted, converted, loaded)."""
    weights: dict[str, list[np.ndarray]] = {}
    for param, layer in zip(net.net_param.layer[segment.start:segment.end],
                            net.layer_list[segment.start:segment.end]):
        if len(layer.blobs) and param.name not in weights:
            weights[param.name] = [blob.detach().float().cpu().numpy() for blob in layer.blobs]
    return weights


def weights_bytes(weights: Mapping[str, list[np.ndarray]]) -> list[bytes]:
    """The weights as byte strings for the cache key: each layer's name, then each blob's shape and values."""
    parts: list[bytes] = []
    for name, blobs in weights.items():
        parts.append(name.encode())
        for blob in blobs:
            parts += [repr(blob.shape).encode(), np.ascontiguousarray(blob).tobytes()]
    return parts
