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
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import WeightsError
from vggproto.vgg.configs import DENSE_LAYER_NAMES
from vggproto.weights.torch_files import (
    Weights,
    output_format,
    read_any,
    save_safetensors,
    save_torch_state,
    weights_to_state_dict,
    write_state,
)

log = logging.getLogger("vggproto.convert.convert")

Shape = tuple[int, ...]
_BIAS_TYPES = {"Convolution", "Deconvolution", "InnerProduct"}


@dataclass
class ConversionResult:
    """What :func:`convert` wrote: the output path and format, the weights (Caffe naming) and the bookkeeping."""

    path: str
    format: str
    weights: Weights
    source_format: str
    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------------
# Shapes
# ----------------------------------------------------------------------------------------------------------------

def _drop_leading_ones(array: np.ndarray, ndim: int) -> np.ndarray:
    """``array`` reshaped to its last ``ndim`` dims when all the dims before them are 1 (else unchanged)."""
    if array.ndim > ndim and all(d == 1 for d in array.shape[:array.ndim - ndim]):
        return array.reshape(array.shape[array.ndim - ndim:])
    return array


def normalize_by_type(weights: Mapping[str, list[np.ndarray]], layer_types: Mapping[str, str]) -> Weights:
    """Drop legacy 4-D dims the way Caffe's Net shapes the blobs of these layer types (see module doc)."""
    out: Weights = {}
    for layer, blobs in weights.items():
        kind = layer_types.get(layer)
        blobs = list(blobs)
        # Caffe: inner_product_layer.cpp / conv_layer.cpp LayerSetUp — weight (N, K), bias (N,); blob.cpp FromProto
        if kind == "InnerProduct" and blobs:
            blobs[0] = _drop_leading_ones(blobs[0], 2)
        if kind in _BIAS_TYPES and len(blobs) > 1:
            blobs[1] = _drop_leading_ones(blobs[1], 1)
        out[layer] = blobs
    return out


def layer_types(net: caffe_pb2.NetParameter | None) -> dict[str, str]:
    """Layer name -> type string for an (upgraded) NetParameter."""
    return {layer.name: layer.type for layer in net.layer} if net is not None else {}


def fit_blob(array: np.ndarray, shape: Shape) -> np.ndarray | None:
    """Caffe's ShapeEquals: the exact shape, or a legacy array whose dims right-align with ``shape`` (else None)."""
    from vggproto.weights import caffemodel as weights_module
    return weights_module.fit_blob(array, tuple(shape))


def fit_to_net(weights: Mapping[str, list[np.ndarray]], expected: Mapping[str, list[Shape]],
               allow_missing: bool = False, source: str = "weights") -> tuple[Weights, list[str], list[str]]:
    """Weights reshaped to the net's blob shapes, in net order: ``(fitted, ignored source layers, missing layers)``.

    Every mismatch is collected first, so the error lists each layer that does not fit with both shapes.
    """
    fitted: Weights = {}
    problems, missing = [], []
    for layer, shapes in expected.items():
        if layer not in weights:
            missing.append(layer)
            continue
        blobs = weights[layer]
        if len(blobs) != len(shapes):
            problems.append(f"{layer}: {len(blobs)} blobs in the file, the net has {len(shapes)}")
            continue
        arrays = [fit_blob(blob, shape) for blob, shape in zip(blobs, shapes)]
        for i, (blob, shape, array) in enumerate(zip(blobs, shapes, arrays)):
            if array is None:
                problems.append(f"{layer} blob {i}: file {_fmt(blob.shape)} vs net {_fmt(shape)}")
        fitted[layer] = arrays
    if problems:
        raise WeightsError(f"{source} do not fit the net ({len(problems)} mismatch(es)): " + "; ".join(problems)
                           + ". Rename a layer in the prototxt to learn it from scratch.")
    if missing and not allow_missing:
        raise WeightsError(f"{source} lack {len(missing)} layer(s) with parameters that the net needs: "
                           f"{', '.join(missing)} (use --allow-missing to leave them out)")
    for layer in missing:
        log.warning("Layer %s has no weights in %s; left out (--allow-missing)", layer, source)
    ignored = [layer for layer in weights if layer not in expected]
    for layer in ignored:
        log.info("Ignoring source layer %s", layer)
    return {layer: fitted[layer] for layer in expected if layer in fitted}, ignored, missing


def _fmt(shape) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def net_param_shapes(model, phase: str = "TEST") -> tuple[caffe_pb2.NetParameter, dict[str, list[Shape]]]:
    """The net's NetParameter and, for each layer with parameters in net order, its blob shapes.

    Built with the interpreter on PyTorch's ``meta`` device, so no weight memory is allocated or filled.
    """
    import torch

    from vggproto.caffe.prototxt import read_net
    from vggproto.net.interpreter import Net
    net_param = model if isinstance(model, caffe_pb2.NetParameter) else read_net(os.fspath(model))
    with torch.device("meta"):  # data layers are not opened (dry_run): only shapes are needed
        net = Net(model if not isinstance(model, caffe_pb2.NetParameter) else net_param, phase=phase,
                  options={"dry_run": True})
    shapes = {layer: [tuple(p.shape) for p in params] for layer, params in net.params.items() if len(params)}
    return net_param, shapes


# ----------------------------------------------------------------------------------------------------------------
# fc <-> conv
# ----------------------------------------------------------------------------------------------------------------

def _infer_fc6_input(weights: Mapping[str, list[np.ndarray]], fc_name: str, inputs: int) -> Shape:
    """(C, H, W) of pool5 from the last conv before fc6 (its outputs) and fc6's input count (square map)."""
    channels = None
    for layer, blobs in weights.items():
        if layer == fc_name:
            break
        if blobs and blobs[0].ndim == 4:
            channels = blobs[0].shape[0]
    side = int(round((inputs / channels) ** 0.5)) if channels else 0
    if not channels or channels * side * side != inputs:
        raise WeightsError(f"cannot infer the C x H x W input of {fc_name} ({inputs} inputs) from the conv layers "
                           f"before it; pass --model with the fully-convolutional net")
    return channels, side, side


def fc_to_conv(weights: Mapping[str, list[np.ndarray]], names: Mapping[str, str] = DENSE_LAYER_NAMES,
               target: Mapping[str, list[Shape]] | None = None) -> Weights:
    """fc6/fc7/fc8 -> the dense net's convolutions (fc6 4096x25088 -> 4096x512x7x7: pool5 flattens in C order).

    ``target`` (the dense net's shapes) decides the kernel shape; without it fc6's kernel is inferred from the
    preceding conv and the later fc layers become 1x1 kernels.  Layers are renamed per ``names``.
    """
    out: Weights = {}
    present = [fc for fc in names if fc in weights]
    if not present:
        raise WeightsError(f"--fc-to-conv: none of {', '.join(names)} in the weights")
    for layer, blobs in weights.items():
        if layer not in names:
            out[layer] = list(blobs)
            continue
        weight = _drop_leading_ones(blobs[0], 2)
        if weight.ndim != 2:
            raise WeightsError(f"--fc-to-conv: {layer} weight is {_fmt(weight.shape)}, not an fc matrix")
        conv = names[layer]
        # Caffe: inner_product_layer.cpp — K = count(axis..) of the bottom, i.e. pool5 flattened C, H, W in C order
        if target is not None and conv in target:
            kernel = target[conv][0]
        elif layer == present[0]:
            kernel = (weight.shape[0], *_infer_fc6_input(weights, layer, weight.shape[1]))
        else:
            kernel = (weight.shape[0], weight.shape[1], 1, 1)
        if int(np.prod(kernel)) != weight.size:
            raise WeightsError(f"--fc-to-conv: {layer} weight {_fmt(weight.shape)} cannot become {conv} "
                               f"{_fmt(kernel)} ({weight.size} vs {int(np.prod(kernel))} values)")
        out[conv] = [weight.reshape(kernel)] + [_drop_leading_ones(b, 1) for b in blobs[1:]]
    return out


def conv_to_fc(weights: Mapping[str, list[np.ndarray]], names: Mapping[str, str] = DENSE_LAYER_NAMES) -> Weights:
    """Inverse of :func:`fc_to_conv`: each dense conv kernel O x C x H x W flattens (C order) to an O x CHW matrix."""
    back = {conv: fc for fc, conv in names.items()}
    if not any(conv in weights for conv in back):
        raise WeightsError(f"--conv-to-fc: none of {', '.join(back)} in the weights")
    out: Weights = {}
    for layer, blobs in weights.items():
        if layer in back:
            weight = blobs[0]
            out[back[layer]] = [weight.reshape(weight.shape[0], -1)] + list(blobs[1:])
        else:
            out[layer] = list(blobs)
    return out


# ----------------------------------------------------------------------------------------------------------------
# Summary
# ----------------------------------------------------------------------------------------------------------------

def summary(weights: Mapping[str, list[np.ndarray]], title: str = "") -> str:
    """A table of layers, blob shapes and parameter counts, with the total (printed after every conversion)."""
    rows = [(layer, ", ".join(_fmt(b.shape) for b in blobs), sum(int(b.size) for b in blobs))
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
        weights = torchvision_to_caffe(weights)
    elif not keep_shapes and net_param is not None:
        weights = normalize_by_type(weights, layer_types(net_param))
    return weights, net_param, fmt


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, to: str | None = None, model=None,
            fc_to_conv_: bool = False, conv_to_fc_: bool = False, allow_missing: bool = False,
            keep_shapes: bool = False, phase: str = "TEST", zip_crc: bool = False) -> ConversionResult:
    """Convert the weight file ``src`` into ``dst`` (see the module doc for shapes and the CLI for the options)."""
    fmt = output_format(dst, to)
    parent = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(parent):
        raise WeightsError(f"{dst}: the output directory {parent} does not exist")
    if fc_to_conv_ and conv_to_fc_:
        raise WeightsError("--fc-to-conv and --conv-to-fc exclude each other")
    if fmt == "onnx" and model is None:
        raise WeightsError("--to onnx needs --model NET: ONNX holds the network, not just its weights")
    weights, source_net, source_fmt = load_caffe_weights(src, keep_shapes)
    net_param, target = net_param_shapes(model, phase) if model is not None else (None, None)
    if fc_to_conv_:
        weights = fc_to_conv(weights, target=target)
    if conv_to_fc_:
        weights = conv_to_fc(weights)
    ignored, missing = [], []
    if target is not None:
        weights, ignored, missing = fit_to_net(weights, target, allow_missing, source=os.fspath(src))
    if fmt == "onnx":
        from vggproto.convert.onnx import export_onnx
        export_onnx(model, weights, dst, phase=phase)
    elif fmt == "torchvision":
        from vggproto.weights.torchvision import caffe_to_torchvision
        write_state(dst, caffe_to_torchvision(weights), zip_crc)
    elif fmt == "pt":
        save_torch_state(dst, weights_to_state_dict(weights), zip_crc)
    elif fmt == "safetensors":
        save_safetensors(dst, weights_to_state_dict(weights))
    elif fmt == "h5":
        from vggproto.weights.hdf5 import write_hdf5_weights
        write_hdf5_weights(dst, weights, list(weights))
    else:
        from vggproto.weights.caffemodel import write_weights
        structure = net_param if net_param is not None else _matching_structure(source_net, weights)
        write_weights(os.fspath(dst), weights, structure)
    return ConversionResult(os.fspath(dst), fmt, weights, source_fmt, ignored, missing)


def _matching_structure(net: caffe_pb2.NetParameter | None, weights: Mapping) -> caffe_pb2.NetParameter | None:
    """The source caffemodel's layer structure, if it still names exactly the layers being written."""
    if net is None:
        return None
    with_blobs = [layer.name for layer in net.layer if layer.name in weights]
    return net if set(with_blobs) == set(weights) else None

