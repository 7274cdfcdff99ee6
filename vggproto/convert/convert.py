"""``vggproto convert``: weights between caffemodel, Caffe HDF5, PyTorch, safetensors, torchvision VGG and ONNX.

All conversions go through one in-memory form, ``{layer: [blob arrays]}`` in Caffe's naming and blob order
(float32, usually memory-mapped views of the input file), so a conversion costs one read and one streamed write.

Shapes (issue #8): blob values are never changed except by the torchvision fold and fc<->conv reshapes.  Shapes:

* with ``--model NET`` every blob takes the net's shape (Caffe's right-aligned legacy rule, as when Caffe loads
  weights into a net), the output holds exactly the net's layers in net order, source layers the net lacks are
  ignored (logged as Caffe does) and layers the net needs but the file lacks are an error (``--allow-missing``);
* without it, legacy 4-D dims are dropped where the layer type says what Caffe would make of them (a caffemodel
  carries its layer types): InnerProduct weights 1x1xNxK -> NxK, biases of Convolution/Deconvolution/InnerProduct
  1x1x1xN -> N — exactly the shapes Caffe's own re-save has;
* ``keep_shapes=True`` (``--keep-shapes``) keeps every stored shape untouched.

After the first normalisation every round trip (caffemodel <-> h5 <-> pt <-> safetensors) is bit-exact,
shapes included.

Progress: writing is where a conversion spends its time (reading only maps the file), so a large source (at
least :data:`PROGRESS_MIN_BYTES`) counts the layers as the writer puts them out — a tqdm bar on a terminal,
periodic ``convert: 8/16 layers, ...`` lines in a log or pipe, nothing under ``vggproto -q``
(:class:`vggproto.data.progress.Progress`).  Small conversions print nothing extra.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.data.progress import Progress
from vggproto.errors import WeightsError
from vggproto.weights.fit import Site, Weights, drop_leading_ones, fit_to_net, format_shape
from vggproto.weights.torch_files import (
    OnLayer,
    layer_ends,
    output_format,
    read_any,
    save_safetensors,
    save_torch_state,
    weights_to_state_dict,
    write_state,
)

if TYPE_CHECKING:
    from vggproto.net.interpreter import ModelSource

log = logging.getLogger("vggproto.convert.convert")

_BIAS_TYPES = {"Convolution", "Deconvolution", "InnerProduct"}

#: Sources of at least this size show per-layer progress while written: VGG-16's 528 MiB caffemodel takes
#: seconds to write, a file under 64 MiB well under one, where a progress line would only be noise.
PROGRESS_MIN_BYTES = 64 * 2**20
#: At most this many periodic progress lines per conversion (a line every ceil(layers / 10) layers: VGG-16's
#: 16 layers log 8 lines, VGG-19's 19 log 10), so that a log shows the pace without one line per layer.
PROGRESS_LINES = 10
PROGRESS_LINE = "convert: {n}/{total} layers, {rate:.1f} layers/s, ETA {eta}"


@dataclass
class ConversionResult:
    """What :func:`convert` wrote: the output path and format, the weights (Caffe naming) and the bookkeeping."""

    path: str
    format: str
    weights: Weights
    source_format: str
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # ONNX: which axes are dynamic, and why others are fixed


# ----------------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------------

def normalize_by_type(weights: Mapping[str, list[np.ndarray]], layer_types: Mapping[str, str]) -> Weights:
    """Drop legacy 4-D dims the way Caffe's Net shapes the blobs of these layer types (see module doc)."""
    out: Weights = {}
    for layer, blobs in weights.items():
        kind = layer_types.get(layer)
        blobs = list(blobs)
        # Caffe: inner_product_layer.cpp / conv_layer.cpp LayerSetUp — weight (N, K), bias (N,); blob.cpp FromProto
        if kind == "InnerProduct" and blobs:
            blobs[0] = drop_leading_ones(blobs[0], 2)
        if kind in _BIAS_TYPES and len(blobs) > 1:
            blobs[1] = drop_leading_ones(blobs[1], 1)
        out[layer] = blobs
    return out


def layer_types(net: caffe_pb2.NetParameter | None) -> dict[str, str]:
    """Layer name -> type string for an (upgraded) NetParameter."""
    return {layer.name: layer.type for layer in net.layer} if net is not None else {}


# ----------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------

def summary(weights: Mapping[str, list[np.ndarray]], title: str = "") -> str:
    """A table of layers, blob shapes and parameter counts, with the total (printed after every conversion)."""
    rows = [(layer, ", ".join(format_shape(b.shape) for b in blobs), sum(int(b.size) for b in blobs))
            for layer, blobs in weights.items()]
    width = max([len(r[0]) for r in rows] + [5])
    shape_width = max([len(r[1]) for r in rows] + [11])
    lines = [title] if title else []
    lines.append(f"{'layer':<{width}}  {'blob shapes':<{shape_width}}  {'parameters':>12}")
    lines += [f"{name:<{width}}  {shapes:<{shape_width}}  {count:>12,}" for name, shapes, count in rows]
    total = sum(r[2] for r in rows)
    lines.append(f"{len(rows)} layers with weights, {total:,} parameters")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# The conversion
# ----------------------------------------------------------------------------------------------------------------

def load_caffe_weights(path: str | os.PathLike, keep_shapes: bool = False) -> tuple[Weights, object, str]:
    """Any input file as Caffe-convention weights: ``(weights, caffemodel NetParameter or None, input format)``.

    torchvision state dicts are unfolded to Caffe's BGR, 0-255, mean-pixel input convention.
    """
    weights, net_param, fmt = read_any(path)
    if fmt == "torchvision":
        from vggproto.weights.torchvision import torchvision_to_caffe
        weights = torchvision_to_caffe(weights, source=path)
    elif not keep_shapes and net_param is not None:
        weights = normalize_by_type(weights, layer_types(net_param))
    return weights, net_param, fmt


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None,
            model: ModelSource | None = None, fc_to_conv_: bool = False, conv_to_fc_: bool = False,
            allow_missing: bool = False, keep_shapes: bool = False, phase: str = "TEST",
            zip_crc: bool = False, dialect: str | None = None, force: bool = False,
            outputs: Sequence[str] | None = None) -> ConversionResult:
    """Convert the weight file ``src`` into ``dst`` (see the module doc for shapes and the CLI for the options)."""
    fmt = output_format(dst, to)
    from vggproto.caffe.files import check_output
    kinds = {"torchvision": "zip", "pt": "zip", "safetensors": "safetensors", "h5": "hdf5", "ncnn": None}
    check_output(dst, inputs=(src, model if isinstance(model, (str, os.PathLike)) else None),
                 kind=kinds.get(fmt, "binary"), force=force)
    if fc_to_conv_ and conv_to_fc_:
        raise WeightsError("--fc-to-conv and --conv-to-fc exclude each other")
    if fmt in ("onnx", "ncnn") and model is None:
        raise WeightsError(f"--to {fmt} needs --model NET: {fmt} holds the network, not just its weights")
    if fmt == "ncnn":   # the weights go beside the .param, as ncnn's tools write them
        check_output(Path(dst).with_suffix(".bin"), inputs=(src,), kind="binary", force=force)
    if outputs and fmt != "onnx":
        raise WeightsError(f"--outputs names the blobs an ONNX export computes; {fmt} holds only weights")
    weights, source_net, source_fmt = load_caffe_weights(src, keep_shapes)
    net_param, target, sites = _net_target(model, phase, dialect) if model is not None else (None, None, None)
    if target is not None:
        target = _known_shapes(target, weights)
    if fc_to_conv_ or conv_to_fc_:
        weights = _reshape_fc(weights, fc_to_conv_, target)
    ignored, missing, notes = [], [], []
    if target is not None:
        weights, ignored, missing = fit_to_net(weights, target, allow_missing, os.fspath(src), sites=sites, log=log)
    for layer in missing:
        log.warning("Layer %s has no weights in %s; left out (--allow-missing)", layer, os.fspath(src))
    large = os.path.getsize(src) >= PROGRESS_MIN_BYTES
    if fmt == "onnx":
        from vggproto.convert.onnx import export_onnx
        if large:   # one step, not per layer: the export and the onnxruntime check take the time
            log.info("convert: exporting to ONNX and checking it in onnxruntime")
        from vggproto.convert.onnx import describe_axes
        check = export_onnx(model, weights, dst, phase=phase, outputs=outputs)
        notes = [f"ONNX outputs {', '.join(check.outputs)}: {describe_axes(check)}", *check.fixed]
    elif fmt == "ncnn":
        notes = [f"ncnn weights: {_write_ncnn(model, weights, dst, dialect)}"]
    else:
        structure = net_param if net_param is not None else _matching_structure(source_net, weights)
        _write(fmt, dst, weights, structure, zip_crc, progress=large, source=src)
    return ConversionResult(os.fspath(dst), fmt, weights, source_fmt, ignored, missing, notes)


def _write_ncnn(model: ModelSource, weights: Weights, dst: str | os.PathLike, dialect: str | None) -> str:
    """The TEST net of ``model`` with ``weights`` as ncnn's .param (``dst``) and .bin; the .bin's path."""
    from vggproto.convert.ncnn import export_ncnn
    from vggproto.net.interpreter import Net
    from vggproto.net.weights import load_arrays
    net = Net(model, phase="TEST", dialect=dialect)
    load_arrays(net, weights, "weights")
    return os.fspath(export_ncnn(net, dst)[1])


def _net_target(model: ModelSource, phase: str, dialect: str | None
                ) -> tuple[caffe_pb2.NetParameter, dict[str, list[Shape] | None], dict[str, Site]]:
    """What ``--model`` says about the output: its unfiltered NetParameter (the caffemodel's structure), the blob
    shapes of its layers with parameters for ``phase`` (built once on the meta device) and where each layer is
    defined, so that a mismatch names ``path:line``."""
    from vggproto.caffe.prototxt import read_net
    from vggproto.net.shapes import meta_net, param_shapes
    net = meta_net(model, phase, dialect=dialect)  # a path is built from the file: layers carry their lines
    net_param = model if isinstance(model, caffe_pb2.NetParameter) else read_net(os.fspath(model), dialect=dialect)
    # a layer of unknown shape (a Python layer's code is not run here, nor what it feeds) keeps the blob shapes
    # the file has: None marks it for _fit_unknown
    known = param_shapes(net)
    target = {name: (known.get(name) if not layer.shapes_unknown else None)
              for name, layer in net.layer_dict.items() if len(layer.blobs) or layer.shapes_unknown}
    return net_param, target, {name: Site(net.path, line) for name, line in net.layer_lines.items()}


def _known_shapes(target: Mapping[str, list[Shape] | None], weights: Weights) -> dict[str, list[Shape]]:
    """``target`` with each layer of unknown shape taking the file's own blob shapes (left out if the file
    lacks it: a net layer after a Python layer may have no parameters at all)."""
    return {name: (shapes if shapes is not None else [tuple(a.shape) for a in weights[name]])
            for name, shapes in target.items() if shapes is not None or name in weights}


def _reshape_fc(weights: Weights, to_conv: bool, target: Mapping[str, list[Shape]] | None) -> Weights:
    """``--fc-to-conv`` / ``--conv-to-fc``: the reshapes live beside the dense net rewrite they follow; imported
    here only when asked for, since ``vggproto.net`` brings in torch."""
    from vggproto.net.dense import conv_to_fc, fc_to_conv
    return fc_to_conv(weights, target=target) if to_conv else conv_to_fc(weights)


def _write(fmt: str, dst: str | os.PathLike, weights: Weights, structure: caffe_pb2.NetParameter | None,
           zip_crc: bool, progress: bool = False, source: str | os.PathLike | None = None) -> None:
    """Write ``weights`` (read from ``source``) as ``fmt`` (every format but ONNX, which needs the net), with
    ``progress`` counting the layers as the writer calls back (see the module doc); the bytes written are the
    same either way."""
    layers, write = _writer(fmt, dst, weights, structure, zip_crc, source)
    if not progress:
        write(None)
        return
    if fmt in ("pt", "torchvision"):
        import torch  # noqa: F401  (torch.save's; imported before the clock starts, so the rate is the writing's)
    with Progress(layers, "convert", every=max(1, -(-layers // PROGRESS_LINES)), line=PROGRESS_LINE,
                  unit="layer") as bar:
        write(lambda layer: bar.update(1))


def _writer(fmt: str, dst: str | os.PathLike, weights: Weights, structure: caffe_pb2.NetParameter | None,
            zip_crc: bool, source: str | os.PathLike | None) -> tuple[int, Callable[[OnLayer | None], None]]:
    """``(layers the writer will report, write(on_layer))`` for ``fmt``; state dicts are built up front (views,
    no copies) so that their layer count is known before the first byte; a layout refused names ``source``."""
    if fmt == "torchvision":
        from vggproto.weights.torchvision import caffe_to_torchvision
        state = caffe_to_torchvision(weights, source=source)
        return len(layer_ends(state)), lambda on_layer: write_state(dst, state, zip_crc, on_layer=on_layer)
    if fmt == "pt":
        state = weights_to_state_dict(weights)
        return len(layer_ends(state)), lambda on_layer: save_torch_state(dst, state, zip_crc, on_layer=on_layer)
    if fmt == "safetensors":
        state = weights_to_state_dict(weights)
        return len(layer_ends(state)), lambda on_layer: save_safetensors(dst, state, on_layer=on_layer)
    if fmt == "h5":
        from vggproto.weights.hdf5 import write_hdf5_weights
        return len(weights), lambda on_layer: write_hdf5_weights(dst, weights, list(weights), on_layer=on_layer)
    from vggproto.weights.caffemodel import write_weights
    return len(weights), lambda on_layer: write_weights(os.fspath(dst), weights, structure, on_layer=on_layer)


def _matching_structure(net: caffe_pb2.NetParameter | None, weights: Mapping) -> caffe_pb2.NetParameter | None:
    """The source caffemodel's layer structure, if it still names exactly the layers being written."""
    if net is None:
        return None
    with_blobs = [layer.name for layer in net.layer if layer.name in weights]
    return net if set(with_blobs) == set(weights) else None

