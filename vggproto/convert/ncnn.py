"""A Caffe net as ncnn's two files (``.param`` text and ``.bin`` weights), written from the built net.

Why ncnn: it runs VGG's 3×3 convolutions with Winograd kernels (F(6,3)/F(4,3) with AVX-512 on x86) at float32
precision, which onnxruntime's CPU provider does not have: on the 2-core VM VGG-16 runs 1.3× faster than OpenCV's
dnn in ncnn and 0.7× in onnxruntime, within 1e-5 of the interpreter (BENCHMARKS.md).  ncnn began as a port of
Caffe's layers, so most layers map one to one; the file format and every layer's parameter ids are ncnn's
(docs/developer-guide/param-and-model-file-structure.md and operation-param-weight-table.md in Tencent/ncnn).

ncnn runs one image at a time (its blobs have no batch axis: C×H×W, or W for a Caffe N×D blob), so a layer is
written only where it treats the images of a batch independently and its axes are the channel axis or later; a
layer ncnn cannot express gives a one-line reason (:func:`refusal`) and the engine runs it in the interpreter.
Blobs get one name per value (Caffe's in-place layers reuse a name, ncnn's may not), a blob read by several
layers gets ncnn's explicit ``Split``, and a Convolution or InnerProduct followed by a ReLU that alone reads it
carries the ReLU as its ``activation_type`` (ncnn's own fusion).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import pool_rounds_up

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

MAGIC = 7767517
#: The 4-byte tag before a weight ncnn reads in "auto" storage: 0 is plain float32.
FLOAT32_TAG = struct.pack("<I", 0)


class Unsupported(Exception):
    """A layer ncnn cannot run as Caffe does; the message says why."""


@dataclass
class NcnnLayer:
    """One line of the ``.param`` file and that layer's weight buffers, in the order ncnn reads them; a weight
    whose ``tagged`` flag is set is preceded by the float32 storage tag (ncnn loads it in "auto" storage)."""

    kind: str
    name: str
    bottoms: list[str]
    tops: list[str]
    params: dict[int, int | float | list[float]] = field(default_factory=dict)
    weights: list[tuple[np.ndarray, bool]] = field(default_factory=list)

    def line(self) -> str:
        cells = [f"{self.kind:<24}", f"{self.name:<24}", str(len(self.bottoms)), str(len(self.tops)),
                 *self.bottoms, *self.tops]
        for key, value in sorted(self.params.items()):
            if isinstance(value, list):   # array parameters live at -23300 - id
                cells.append(f"{-23300 - key}={len(value)}," + ",".join(_float(v) for v in value))
            else:
                cells.append(f"{key}={_float(value) if isinstance(value, float) else value}")
        return " ".join(cells)


@dataclass
class NcnnModel:
    """The two files' contents and, for every Caffe blob the segment gives back, its ncnn name."""

    param: str
    weights: bytes
    blob_names: dict[str, str]


def _float(value: float) -> str:
    """A float32 as text that ncnn reads back to the same float (always with a point or an exponent)."""
    return repr(float(np.float32(value)))


def _blob(weights: Sequence[np.ndarray], index: int) -> np.ndarray:
    return np.ascontiguousarray(weights[index], dtype=np.float32)


def _channel_axis(axis: int, ndim: int, what: str) -> None:
    if axis % ndim != 1:
        raise Unsupported(f"{what} {axis} is not the channel axis (ncnn runs one image at a time)")


def _convolution(param, layer, weights) -> list[NcnnLayer]:
    if len(param.bottom) != 1 or len(layer.kernel) != 2 or layer.axis != 1:
        raise Unsupported("only 2-D convolutions with one bottom run in ncnn")
    group = layer.group
    kind = "Convolution" if group == 1 else "ConvolutionDepthWise"
    w = _blob(weights, 0)
    params = {0: param.convolution_param.num_output, 1: layer.kernel[1], 11: layer.kernel[0],
              2: layer.dilation[1], 12: layer.dilation[0], 3: layer.stride[1], 13: layer.stride[0],
              4: layer.pad[1], 14: layer.pad[0], 5: int(layer.bias_term), 6: int(w.size)}
    if group != 1:
        params[7] = group
    out = NcnnLayer(kind, param.name, list(param.bottom), list(param.top), params, [(w, True)])
    if layer.bias_term:
        out.weights.append((_blob(weights, 1), False))
    return [out]


def _inner_product(param, layer, weights) -> list[NcnnLayer]:
    shape = layer.spec.bottom_shapes[0]
    _channel_axis(layer.axis, len(shape), "inner_product_param.axis")
    w = _blob(weights, 0)
    if layer.transpose:   # Caffe: inner_product_layer.cpp — transpose stores the weights K × N
        w = np.ascontiguousarray(w.T)
    out = NcnnLayer("InnerProduct", param.name, list(param.bottom), list(param.top),
                    {0: layer.n, 1: int(layer.bias_term), 2: int(w.size)}, [(w, True)])
    if layer.bias_term:
        out.weights.append((_blob(weights, 1), False))
    if len(shape) == 2:
        return [out]
    flat = NcnnLayer("Flatten", f"{param.name}_flatten", list(param.bottom), [f"{param.name}_flat"])
    out.bottoms = list(flat.tops)
    return [flat, out]


def _pooling(param, layer, weights) -> list[NcnnLayer]:
    p = param.pooling_param
    if len(param.top) != 1 or p.pool not in (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE):
        raise Unsupported("only MAX and AVE pooling without a mask top run in ncnn")
    kind = 0 if p.pool == caffe_pb2.PoolingParameter.MAX else 1
    if p.global_pooling:   # ncnn's global pooling gives a vector (C); Caffe's blob is C×1×1, and a convolution
        pooled = f"{param.name}_vector"   # after it needs the three axes: a Reshape restores them
        return [NcnnLayer("Pooling", param.name, list(param.bottom), [pooled], {0: kind, 4: 1}),
                NcnnLayer("Reshape", f"{param.name}_chw", [pooled], list(param.top), {0: 1, 1: 1, 2: -1})]
    params = {0: kind, 1: layer.kernel[1], 11: layer.kernel[0], 2: layer.stride[1], 12: layer.stride[0],
              3: layer.pad[1], 13: layer.pad[0], 5: 0 if pool_rounds_up(p) else 1}
    if kind == 1 and any(layer.pad):
        # Caffe: pooling_layer.cpp — AVE divides by the window clipped to the padded image: the padding counts,
        # a ceil-mode tail beyond it does not; ncnn counts both or neither, which agree only without a tail
        if max(layer.stride) != 1:
            raise Unsupported("AVE pooling with padding and a stride above 1 (ncnn's divisor counts the ceil "
                              "mode's tail, Caffe's does not)")
        params[6] = 1
    return [NcnnLayer("Pooling", param.name, list(param.bottom), list(param.top), params)]


def _relu(param, layer, weights) -> list[NcnnLayer]:
    slope = param.relu_param.negative_slope
    return [NcnnLayer("ReLU", param.name, list(param.bottom), list(param.top), {0: float(slope)} if slope else {})]


def _softmax(param, layer, weights) -> list[NcnnLayer]:
    _channel_axis(param.softmax_param.axis, len(layer.spec.bottom_shapes[0]), "softmax_param.axis")
    # ncnn's 1=1 selects the axis as given (its old files counted axes differently)
    return [NcnnLayer("Softmax", param.name, list(param.bottom), list(param.top), {0: 0, 1: 1})]


def _lrn(param, layer, weights) -> list[NcnnLayer]:
    region = 0 if layer.region == caffe_pb2.LRNParameter.ACROSS_CHANNELS else 1
    return [NcnnLayer("LRN", param.name, list(param.bottom), list(param.top),
                      {0: region, 1: layer.size, 2: float(layer.alpha), 3: float(layer.beta), 4: float(layer.k)})]


def _dropout(param, layer, weights) -> list[NcnnLayer]:
    if layer.sample:
        raise Unsupported("dropout that samples a mask at test time (sample_weights_test) draws random numbers")
    scale = 1.0 if layer.scale_train else 1.0 - layer.ratio
    return [NcnnLayer("Dropout", param.name, list(param.bottom), list(param.top), {0: float(scale)})]


def _concat(param, layer, weights) -> list[NcnnLayer]:
    p = param.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    _channel_axis(axis, len(layer.spec.bottom_shapes[0]), "concat_param.axis")
    return [NcnnLayer("Concat", param.name, list(param.bottom), list(param.top), {0: 0})]


def _eltwise(param, layer, weights) -> list[NcnnLayer]:
    op = {caffe_pb2.EltwiseParameter.PROD: 0, caffe_pb2.EltwiseParameter.SUM: 1,
          caffe_pb2.EltwiseParameter.MAX: 2}[layer.op]
    params: dict = {0: op}
    if op == 1 and any(c != 1 for c in layer.coeff):
        params[1] = [float(c) for c in layer.coeff]
    return [NcnnLayer("Eltwise", param.name, list(param.bottom), list(param.top), params)]


def _batch_norm(param, layer, weights) -> list[NcnnLayer]:
    if not layer.use_global:
        raise Unsupported("BatchNorm with batch statistics (use_global_stats false) mixes the images of a batch")
    factor = float(weights[2].reshape(-1)[0])
    # Caffe: batch_norm_layer.cpp — the stored sums are divided by the factor blob (0 stays 0)
    scale = 0.0 if factor == 0 else 1.0 / factor
    mean, var = _blob(weights, 0) * scale, _blob(weights, 1) * scale
    ones, zeros = np.ones_like(mean), np.zeros_like(mean)
    return [NcnnLayer("BatchNorm", param.name, list(param.bottom), list(param.top),
                      {0: int(mean.size), 1: float(layer.eps)},
                      [(ones, False), (mean.astype(np.float32), False), (var.astype(np.float32), False),
                       (zeros, False)])]


def _scale(param, layer, weights) -> list[NcnnLayer]:
    shape = layer.spec.bottom_shapes[0]
    if len(param.bottom) != 1 or layer.axis != 1 or len(layer.operand_shape) != 1:
        raise Unsupported("only a learned per-channel Scale (one bottom, axis 1, num_axes 1) runs in ncnn")
    if len(shape) not in (2, 4):
        raise Unsupported(f"a Scale over a {len(shape)}-axis blob")
    out = NcnnLayer("Scale", param.name, list(param.bottom), list(param.top),
                    {0: int(layer.operand_shape[0]), 1: int(layer.bias_term)}, [(_blob(weights, 0), False)])
    if layer.bias_term:
        out.weights.append((_blob(weights, layer.bias_index), False))
    return [out]


def _prelu(param, layer, weights) -> list[NcnnLayer]:
    slope = _blob(weights, 0).reshape(-1)
    return [NcnnLayer("PReLU", param.name, list(param.bottom), list(param.top), {0: int(slope.size)},
                      [(slope, False)])]


def _flatten(param, layer, weights) -> list[NcnnLayer]:
    p, ndim = param.flatten_param, len(layer.spec.bottom_shapes[0])
    if p.axis % ndim != 1 or p.end_axis % ndim != ndim - 1:
        raise Unsupported("only Flatten from the channel axis to the last runs in ncnn")
    return [NcnnLayer("Flatten", param.name, list(param.bottom), list(param.top))]


def _simple(kind: str, params: Callable[[caffe_pb2.LayerParameter], dict] = lambda p: {}):
    def write(param, layer, weights) -> list[NcnnLayer]:
        return [NcnnLayer(kind, param.name, list(param.bottom), list(param.top), params(param))]
    return write


#: Caffe type → the function that writes it (the registry's names; nothing else is written).
WRITERS: dict[str, Callable] = {
    "Convolution": _convolution, "InnerProduct": _inner_product, "Pooling": _pooling, "ReLU": _relu,
    "Softmax": _softmax, "LRN": _lrn, "Dropout": _dropout, "Concat": _concat, "Eltwise": _eltwise,
    "BatchNorm": _batch_norm, "Scale": _scale, "PReLU": _prelu, "Flatten": _flatten,
    "Sigmoid": _simple("Sigmoid"), "TanH": _simple("TanH"), "AbsVal": _simple("AbsVal"), "BNLL": _simple("BNLL"),
    "Split": _simple("Split"),
    "ELU": _simple("ELU", lambda p: {0: float(p.elu_param.alpha)}),
    "Power": _simple("Power", lambda p: {0: float(p.power_param.power), 1: float(p.power_param.scale),
                                          2: float(p.power_param.shift)}),
}


def refusal(net: Net, index: int) -> str | None:
    """Why layer ``index`` of ``net`` cannot run in ncnn (None if it can)."""
    param, layer = net.net_param.layer[index], net.layer_list[index]
    writer = WRITERS.get(param.type)
    if writer is None:
        return f"ncnn has no {param.type} layer written by vggproto"
    shapes = list(layer.spec.bottom_shapes) + list(getattr(layer, "top_shapes", []))
    if any(len(shape) not in (2, 4) for shape in shapes):
        return "ncnn blobs are C×H×W or W per image; this layer has a blob of another rank"
    try:
        writer(param, layer, [b.detach().cpu().numpy() for b in layer.blobs])   # views of the net's own blobs
    except Unsupported as exc:
        return str(exc)
    return None


def to_ncnn(net: Net, start: int, end: int, inputs: Sequence[str], outputs: Sequence[str],
            weights: dict[str, list[np.ndarray]]) -> NcnnModel:
    """Layers ``start``..``end`` of ``net`` as an ncnn model fed through ``inputs`` and giving back ``outputs``
    (Caffe blob names); ``weights`` are the layers' blobs as the net holds them."""
    written: list[NcnnLayer] = [NcnnLayer("Input", f"input_{i}", [], [name]) for i, name in enumerate(inputs)]
    for param, layer in zip(net.net_param.layer[start:end], net.layer_list[start:end]):
        written += WRITERS[param.type](param, layer, weights.get(param.name, []))
    current = _rename(written)
    _fuse_activations(written, {current[name] for name in outputs})
    written = _split_shared(written)
    return NcnnModel(_param_text(written), b"".join(_weight_bytes(layer) for layer in written),
                     {name: current[name] for name in outputs})


def _rename(layers: list[NcnnLayer]) -> dict[str, str]:
    """Give every value its own blob name (a Caffe in-place top becomes ``name#k``); the Caffe name → the name of
    its last value."""
    current: dict[str, str] = {}
    versions: dict[str, int] = {}
    for layer in layers:
        layer.bottoms = [current.get(b, b) for b in layer.bottoms]
        tops = []
        for top in layer.tops:
            count = versions.get(top, 0)
            versions[top] = count + 1
            current[top] = top if count == 0 else f"{top}#{count}"
            tops.append(current[top])
        layer.tops = tops
    return current


def _readers(layers: list[NcnnLayer]) -> dict[str, list[NcnnLayer]]:
    readers: dict[str, list[NcnnLayer]] = {}
    for layer in layers:
        for bottom in layer.bottoms:
            readers.setdefault(bottom, []).append(layer)
    return readers


def _fuse_activations(layers: list[NcnnLayer], wanted: set[str]) -> None:
    """A ReLU that alone reads a Convolution's or InnerProduct's top becomes that layer's activation (ncnn's
    ``activation_type`` 1, or 2 with the slope); the pre-ReLU value is then never a blob of its own."""
    readers = _readers(layers)
    for producer in list(layers):
        if producer.kind not in ("Convolution", "ConvolutionDepthWise", "InnerProduct") or 9 in producer.params:
            continue
        top = producer.tops[0]
        consumers = readers.get(top, [])
        if len(consumers) != 1 or consumers[0].kind != "ReLU" or top in wanted:
            continue
        relu = consumers[0]
        slope = relu.params.get(0, 0.0)
        producer.params[9] = 2 if slope else 1
        if slope:
            producer.params[10] = [float(slope)]
        producer.tops = list(relu.tops)
        layers.remove(relu)


def _split_shared(layers: list[NcnnLayer]) -> list[NcnnLayer]:
    """ncnn lets each blob be read once: a blob with several readers goes through a ``Split`` into copies."""
    readers = _readers(layers)
    out: list[NcnnLayer] = []
    for layer in layers:
        out.append(layer)
        for top in layer.tops:
            consumers = readers.get(top, [])
            if len(consumers) < 2:
                continue
            copies = [f"{top}_splitncnn_{i}" for i in range(len(consumers))]
            out.append(NcnnLayer("Split", f"splitncnn_{top}", [top], copies))
            for consumer, copy in zip(consumers, copies):
                consumer.bottoms[consumer.bottoms.index(top)] = copy
    return out


def _param_text(layers: list[NcnnLayer]) -> str:
    blobs = {top for layer in layers for top in layer.tops}
    return "\n".join([str(MAGIC), f"{len(layers)} {len(blobs)}", *(layer.line() for layer in layers)]) + "\n"


def _weight_bytes(layer: NcnnLayer) -> bytes:
    return b"".join((FLOAT32_TAG if tagged else b"") + np.ascontiguousarray(w, "<f4").tobytes()
                    for w, tagged in layer.weights)


def export_ncnn(net: Net, path: str | Path) -> tuple[Path, Path]:
    """Write the whole TEST-phase ``net`` (after its Input layers) as ``path`` (.param) and the .bin beside it;
    a layer ncnn cannot run is a :class:`vggproto.errors.NetError` naming it."""
    from vggproto.caffe.files import atomic_write_bytes
    from vggproto.errors import NetError
    from vggproto.net.segments import plan, segment_weights, stop_reason
    found = plan(net, (), refusal, "ncnn")
    if isinstance(found, str):
        raise NetError(f"cannot be written for ncnn: {found}", path=net.path)
    if found.end < len(net.layer_list):
        param = net.net_param.layer[found.end]
        raise NetError(f"cannot be written for ncnn: {stop_reason(net, found.end, refusal)}", path=net.path,
                       layer=param.name, layer_type=param.type)
    model = to_ncnn(net, found.start, found.end, found.inputs, net.output_names, segment_weights(net, found))
    param_path = Path(path)
    bin_path = param_path.with_suffix(".bin")
    atomic_write_bytes(param_path, model.param.encode())
    atomic_write_bytes(bin_path, model.weights)
    return param_path, bin_path
