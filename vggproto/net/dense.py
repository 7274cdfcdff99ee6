"""Turn a deploy net fully convolutional (Sect. 3.2 of the paper) and load classification weights into it.

"The fully-connected layers are first converted to convolutional layers (the first FC layer to a 7×7 conv. layer,
the last two FC layers to 1×1 conv. layers)."  Generalised here to any deploy net: every ``InnerProduct`` layer
whose bottom is an N×C×H×W blob becomes a ``Convolution`` with an H×W kernel (the first FC after the last pooling
gets pool5's spatial size; later FCs see 1×1 maps and get 1×1 kernels).  Layers are renamed as the generator's
``_dense`` nets name them (:data:`vggproto.vgg.configs.DENSE_LAYER_NAMES`, else ``<name>-conv``) so that dense weight
files are interchangeable; blob names are kept, so ``fc7`` still names the penultimate activations.

A net that already has no InnerProduct layer (a generated ``_dense`` net) is used as given; classification
weights (``fc6``...) are reshaped into it by :func:`fc_to_conv` in both cases.  The weight reshapes
(:func:`fc_to_conv`, :func:`conv_to_fc`) live here, beside the net rewrite they follow, and ``vggproto convert``
imports them from here (the net never imports conversion code).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.errors import NetError, WeightsError
from vggproto.net.shapes import meta_net, param_shapes
from vggproto.net.weights import load_arrays
from vggproto.vgg.configs import DENSE_LAYER_NAMES
from vggproto.weights.fit import Weights, drop_leading_ones, format_shape

if TYPE_CHECKING:
    from vggproto.net.interpreter import ModelSource, Net


@dataclass
class DenseNet:
    """A fully-convolutional NetParameter plus what is needed to run and feed it."""

    param: caffe_pb2.NetParameter
    path: str | None
    names: dict[str, str] = field(default_factory=dict)   # fc layer -> conv layer (weight renaming)
    score_blob: str = ""                                    # raw class scores (input of the final Softmax)
    input_blob: str = "data"
    input_shape: tuple[int, ...] = ()                       # the deploy net's declared N, C, H, W


def score_blob(net: Net) -> str:
    """The blob holding raw class scores: the bottom of a final Softmax, else the net's only output."""
    params = list(net.net_param.layer)
    outputs = net.output_names
    if len(outputs) != 1:
        raise NetError(f"the net has {len(outputs)} outputs ({', '.join(outputs)}); evaluation needs a single "
                       f"class-score output (a deploy net ending in InnerProduct [+ Softmax])", path=net.path)
    for layer in reversed(params):
        if outputs[0] in layer.top:
            if layer.type == "Softmax" and len(layer.bottom) == 1:
                return layer.bottom[0]
            return outputs[0]
    return outputs[0]


def _convert_layer(layer: caffe_pb2.LayerParameter, bottom_shape, spec_line, path) -> caffe_pb2.LayerParameter:
    ip = layer.inner_product_param

    def fail(why: str) -> NetError:
        return NetError(f"cannot make InnerProduct '{layer.name}' convolutional: {why}; supported: InnerProduct "
                        f"with axis 1, transpose false, on an N x C x H x W blob", path=path, line=spec_line,
                        layer=layer.name, layer_type=layer.type)

    if ip.axis != 1:
        raise fail(f"axis is {ip.axis}")
    if ip.transpose:
        raise fail("transpose: true stores the weights as K x N")
    if len(bottom_shape) != 4:
        raise fail(f"its bottom '{layer.bottom[0]}' has shape {tuple(bottom_shape)}, not a spatial N x C x H x W map")
    conv = caffe_pb2.LayerParameter()
    conv.CopyFrom(layer)
    conv.ClearField("inner_product_param")
    conv.type = "Convolution"
    conv.name = DENSE_LAYER_NAMES.get(layer.name, f"{layer.name}-conv")
    cp = conv.convolution_param
    cp.num_output = ip.num_output
    cp.bias_term = ip.bias_term
    # a square kernel is written as kernel_size (the generator's form), else kernel_h/kernel_w
    height, width = int(bottom_shape[2]), int(bottom_shape[3])
    if height == width:
        cp.kernel_size.append(height)
    else:
        cp.kernel_h, cp.kernel_w = height, width
    if ip.HasField("weight_filler"):
        cp.weight_filler.CopyFrom(ip.weight_filler)
    if ip.HasField("bias_filler"):
        cp.bias_filler.CopyFrom(ip.bias_filler)
    return conv


def make_dense(model: ModelSource) -> DenseNet:
    """The fully-convolutional version of ``model`` (deploy prototxt path/text/NetParameter), TEST phase."""
    meta = meta_net(model)
    dense = caffe_pb2.NetParameter()
    dense.CopyFrom(meta.net_param)
    names: dict[str, str] = {}
    spatial: set[str] = set()   # blobs that become N x C x 1 x 1 maps once the FCs before them are convolutions
    for i, layer in enumerate(meta.net_param.layer):
        if layer.type != "InnerProduct":
            if spatial.intersection(layer.bottom):
                spatial.update(layer.top)
            continue
        spec = meta.layer_dict[layer.name].spec
        shape = spec.bottom_shapes[0]
        if layer.bottom[0] in spatial and len(shape) == 2:
            shape = (*shape, 1, 1)
        converted = _convert_layer(layer, shape, spec.line, meta.path)
        spatial.update(layer.top)
        dense.layer[i].CopyFrom(converted)
        names[layer.name] = converted.name
    if not names:
        names = dict(DENSE_LAYER_NAMES)   # already dense: classification weights map by the generator's names
    inputs = meta.input_names
    if len(inputs) != 1:
        raise NetError(f"the net is fed through {len(inputs)} inputs ({', '.join(inputs) or 'none'}); evaluation "
                       f"needs one image input (an Input layer)", path=meta.path)
    return DenseNet(dense, meta.path, names, score_blob(meta), inputs[0], tuple(meta.blob_shapes[inputs[0]]))


def dense_weights(weights: Mapping[str, list[np.ndarray]], dense: DenseNet) -> Weights:
    """Classification weights (fc layers) reshaped into ``dense``'s convolutions; dense weights pass through."""
    if not any(fc in weights for fc in dense.names):
        return {name: list(blobs) for name, blobs in weights.items()}
    present = {fc: conv for fc, conv in dense.names.items() if fc in weights}
    return fc_to_conv(weights, names=present, target=param_shapes(meta_net(dense.param)))


# ----------------------------------------------------------------------------------------------------------------
# fc <-> conv weights
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
        weight = drop_leading_ones(blobs[0], 2)
        if weight.ndim != 2:
            raise WeightsError(f"--fc-to-conv: {layer} weight is {format_shape(weight.shape)}, not an fc matrix")
        conv = names[layer]
        # Caffe: inner_product_layer.cpp — K = count(axis..) of the bottom, i.e. pool5 flattened C, H, W in C order
        if target is not None and conv in target:
            kernel = target[conv][0]
        elif layer == present[0]:
            kernel = (weight.shape[0], *_infer_fc6_input(weights, layer, weight.shape[1]))
        else:
            kernel = (weight.shape[0], weight.shape[1], 1, 1)
        if int(np.prod(kernel)) != weight.size:
            raise WeightsError(f"--fc-to-conv: {layer} weight {format_shape(weight.shape)} cannot become {conv} "
                               f"{format_shape(kernel)} ({weight.size} vs {int(np.prod(kernel))} values)")
        out[conv] = [weight.reshape(kernel)] + [drop_leading_ones(b, 1) for b in blobs[1:]]
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
# Loading
# ----------------------------------------------------------------------------------------------------------------

def load_dense(model: ModelSource, weights: str | os.PathLike | Mapping[str, list[np.ndarray]],
               device: str = "cpu") -> tuple[Net, DenseNet]:
    """``(Net, DenseNet)``: the dense version of ``model`` with ``weights`` (file or arrays), in eval mode on
    ``device``.  Classification weights are reshaped (fc6 -> fc6-conv ...); a missing layer is an error."""
    from vggproto.net.interpreter import Net
    from vggproto.weights.torch_files import load_weights_file
    dense = make_dense(model)
    source = os.fspath(weights) if isinstance(weights, (str, os.PathLike)) else "weights"
    arrays = load_weights_file(weights) if isinstance(weights, (str, os.PathLike)) else weights
    try:
        converted = dense_weights(arrays, dense)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}") from None
    net = Net(dense.param, phase="TEST")
    net.path = dense.path
    load_arrays(net, converted, source, allow_missing=False)
    for p in net.parameters():
        p.requires_grad_(False)
    return net.to(device), dense
