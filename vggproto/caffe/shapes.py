"""Caffe's output-size arithmetic for convolution, deconvolution and pooling, and a tiny shape walker.

The three ``*_output_size`` functions are the only place these formulas are written: the interpreter's layers
(:mod:`vggproto.layers.conv`, :mod:`vggproto.layers.pool`), the generator (:mod:`vggproto.vgg.nets`) and the
walker below all call them, so a net's shapes cannot differ between the tools.  ``Shape`` is the one shape type.

The walker (blob shapes and parameter counts for the layer types the generated VGG nets use) exists so the
generator can check Table 1's parameter counts and the dense net's output sizes without allocating 138M-float
nets.  It follows Caffe's shape rules (cited per layer type) but knows only these types; the full interpreter
(:mod:`vggproto.net.interpreter`) is the general implementation.
"""
from __future__ import annotations

import math

from vggproto.caffe.netstate import filter_net, make_state
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError

Shape = tuple[int, ...]
_PASS_THROUGH = {"ReLU", "Dropout", "LRN", "Softmax"}
_NO_TOP = {"SoftmaxWithLoss": (), "Accuracy": ()}


def _pair(values, single: int, default: int) -> tuple[int, int]:
    if single:
        return single, single
    if len(values) == 0:
        return default, default
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def conv_output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """One spatial axis of a Convolution's top; the interpreter, the generator and this walker all use it so that
    a shape is computed the same way everywhere (a non-positive result means the input is too small)."""
    extent = dilation * (kernel - 1) + 1
    # Caffe: src/caffe/layers/conv_layer.cpp compute_output_shape — floor((in + 2 pad - extent) / stride) + 1
    return (size + 2 * pad - extent) // stride + 1


def deconv_output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """One spatial axis of a Deconvolution's top: the inverse of :func:`conv_output_size`."""
    extent = dilation * (kernel - 1) + 1
    # Caffe: src/caffe/layers/deconv_layer.cpp compute_output_shape — stride (in - 1) + extent - 2 pad
    return stride * (size - 1) + extent - 2 * pad


def pool_rounds_up(param: caffe_pb2.PoolingParameter) -> bool:
    """Whether a Pooling layer's output size rounds up: the forks' ``ceil_mode`` when the net sets it (their
    pooling_layer.cpp, PR #3057 and OpenCV), else BVLC's ``round_mode`` (CEIL by default)."""
    if param.HasField("ceil_mode"):
        return param.ceil_mode
    return param.round_mode != caffe_pb2.PoolingParameter.FLOOR


def pool_output_size(size: int, kernel: int, stride: int = 1, pad: int = 0, ceil: bool = True,
                     any_pad: bool | None = None) -> int:
    """One spatial axis of a Pooling's top (ceil, or floor for round_mode FLOOR).  ``any_pad``: whether the layer
    pads on any axis (default: this axis's ``pad``), since Caffe clips every axis as soon as one is padded."""
    span = (size + 2 * pad - kernel) / stride
    out = (math.ceil(span) if ceil else math.floor(span)) + 1
    # Caffe: src/caffe/layers/pooling_layer.cpp Reshape — when padded, the last window must start inside the image
    if (bool(pad) if any_pad is None else any_pad) and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _conv(param: caffe_pb2.ConvolutionParameter, shape: Shape) -> tuple[Shape, int]:
    n, c, h, w = shape
    kh, kw = (param.kernel_h, param.kernel_w) if param.kernel_h else _pair(param.kernel_size, 0, 0)
    ph, pw = (param.pad_h, param.pad_w) if param.HasField("pad_h") else _pair(param.pad, 0, 0)
    sh, sw = (param.stride_h, param.stride_w) if param.stride_h else _pair(param.stride, 0, 1)
    dh, dw = _pair(param.dilation, 0, 1)
    oh, ow = conv_output_size(h, kh, sh, ph, dh), conv_output_size(w, kw, sw, pw, dw)
    group = param.group or 1
    count = param.num_output * (c // group) * kh * kw + (param.num_output if param.bias_term else 0)
    return (n, param.num_output, oh, ow), count


def _pool(param: caffe_pb2.PoolingParameter, shape: Shape) -> Shape:
    n, c, h, w = shape
    if param.global_pooling:
        return n, c, 1, 1
    kh, kw = (param.kernel_h, param.kernel_w) if param.kernel_h else (param.kernel_size,) * 2
    sh, sw = (param.stride_h, param.stride_w) if param.stride_h else (param.stride,) * 2
    ph, pw = (param.pad_h, param.pad_w) if param.pad_h or param.pad_w else (param.pad,) * 2
    ceil = pool_rounds_up(param)
    padded = bool(ph or pw)
    return n, c, pool_output_size(h, kh, sh, ph, ceil, padded), pool_output_size(w, kw, sw, pw, ceil, padded)


def _inner_product(param: caffe_pb2.InnerProductParameter, shape: Shape) -> tuple[Shape, int]:
    axis = param.axis % len(shape)
    k = math.prod(shape[axis:])
    count = param.num_output * k + (param.num_output if param.bias_term else 0)
    return shape[:axis] + (param.num_output,), count


def _data_shapes(layer: caffe_pb2.LayerParameter) -> list[Shape]:
    batch = {"Data": layer.data_param.batch_size, "ImageData": layer.image_data_param.batch_size,
             "HDF5Data": layer.hdf5_data_param.batch_size}[layer.type]
    crop = layer.transform_param.crop_size
    if not crop:
        raise NetError("the shape walker needs transform_param.crop_size on data layers", layer=layer.name,
                       layer_type=layer.type)
    return [(batch, 3, crop, crop), (batch,)]


def infer_shapes(net: caffe_pb2.NetParameter, phase: str = "TEST",
                 input_shape: Shape | None = None) -> tuple[dict[str, Shape], dict[str, int]]:
    """Walk ``net`` for ``phase``; return (blob name -> shape, layer name -> learnable parameter count).

    ``input_shape`` replaces the shape of the (single) Input layer, e.g. to run the dense net at 384×384.
    """
    shapes: dict[str, Shape] = {}
    counts: dict[str, int] = {}
    for layer in filter_net(net, make_state(phase)).layer:
        bottoms = [shapes[b] for b in layer.bottom]
        if layer.type == "Input":
            tops = [input_shape or tuple(layer.input_param.shape[0].dim)]
        elif layer.type in ("Data", "ImageData", "HDF5Data"):
            tops = _data_shapes(layer)
        elif layer.type == "Convolution":
            top, counts[layer.name] = _conv(layer.convolution_param, bottoms[0])
            tops = [top]
        elif layer.type == "InnerProduct":
            top, counts[layer.name] = _inner_product(layer.inner_product_param, bottoms[0])
            tops = [top]
        elif layer.type == "Pooling":
            tops = [_pool(layer.pooling_param, bottoms[0])]
        elif layer.type in _PASS_THROUGH:
            tops = [bottoms[0]]
        elif layer.type in _NO_TOP:
            tops = [_NO_TOP[layer.type]]
        else:
            raise NetError(f"the shape walker does not know this type; it knows Input, Data, ImageData, HDF5Data, "
                           f"Convolution, InnerProduct, Pooling, {', '.join(sorted(_PASS_THROUGH | set(_NO_TOP)))}",
                           layer=layer.name, layer_type=layer.type)
        for name, shape in zip(layer.top, tops):
            if any(d < 1 for d in shape):
                raise NetError(f"output shape {tuple(shape)} is empty: the input is too small for this net",
                               layer=layer.name, layer_type=layer.type)
            shapes[name] = tuple(int(d) for d in shape)
    return shapes, counts


def count_params(net: caffe_pb2.NetParameter) -> int:
    """Number of learnable parameters (weights and biases) of ``net``, computed from its shapes."""
    return sum(infer_shapes(net)[1].values())
