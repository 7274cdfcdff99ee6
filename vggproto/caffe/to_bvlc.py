"""``vggproto upgrade --to-bvlc``: rewrite a fork net into BVLC Caffe's own fields where an exact equivalent
exists, and say which layers and fields have none.

Exact means the rewritten net computes the same function with the same weight blobs: the forks' ``ceil_mode``
is BVLC's ``round_mode``, ``ReLU6`` is ``Clip`` (0, 6), ``DepthwiseConvolution`` is a grouped ``Convolution``
with the same blobs, and a fork field left at the value that means BVLC's behaviour is dropped.  Everything else
(SSD's detection layers, SegNet's BN, PSPNet's Interp, ...) is reported and kept as it is.
"""
from __future__ import annotations

from collections.abc import Callable

from vggproto.caffe.dialect_table import DIALECTS
from vggproto.caffe.proto import caffe_pb2

P = caffe_pb2.PoolingParameter


def _pooling(layer: caffe_pb2.LayerParameter) -> str | None:
    p = layer.pooling_param
    if not p.HasField("ceil_mode"):
        return None
    # fork pooling_layer.cpp (PR #3057): ceil_mode true = BVLC round_mode CEIL, false = FLOOR
    p.round_mode = P.CEIL if p.ceil_mode else P.FLOOR
    p.ClearField("ceil_mode")
    return f"ceil_mode: {str(p.round_mode == P.CEIL).lower()} -> round_mode: {P.RoundMode.Name(p.round_mode)}"


def _relu6(layer: caffe_pb2.LayerParameter) -> str | None:
    if layer.relu6_param.negative_slope != 0:
        return None
    layer.type = "Clip"   # Caffe-MobileNetV2-ReLU6 relu6_layer.cpp: min(max(x, 0), 6) = BVLC clip_layer.cpp
    layer.ClearField("relu6_param")
    layer.clip_param.min, layer.clip_param.max = 0.0, 6.0
    return "ReLU6 -> Clip { min: 0 max: 6 }"


def _depthwise(layer: caffe_pb2.LayerParameter) -> str | None:
    layer.type = "Convolution"  # yonghenglh6 depthwise_conv_layer.cpp: a BaseConvolutionLayer, same blobs
    return "DepthwiseConvolution -> Convolution (the same group and blobs)"


def _dropout(layer: caffe_pb2.LayerParameter) -> str | None:
    p = layer.dropout_param
    if not p.HasField("scale_train") and not p.HasField("sample_weights_test"):
        return None                                   # a plain BVLC Dropout: nothing to rewrite
    if (p.HasField("scale_train") and not p.scale_train) or p.sample_weights_test:
        return None
    p.ClearField("scale_train")
    p.ClearField("sample_weights_test")
    return "dropout fork fields at BVLC's behaviour dropped"


#: layer type -> rewrite (returns what it did, or None when the layer's settings have no BVLC equivalent)
_REWRITES: dict[str, Callable[[caffe_pb2.LayerParameter], str | None]] = {
    "Pooling": _pooling, "ReLU6": _relu6, "DepthwiseConvolution": _depthwise, "Dropout": _dropout,
}
_FORK_TYPES = frozenset(t for d in DIALECTS.values() for t in d.every_layer_type)


def _fork_fields_left(layer: caffe_pb2.LayerParameter) -> list[str]:
    from vggproto.caffe.dialects import fork_fields_used
    return sorted({name for _, name in fork_fields_used(layer)})


def to_bvlc(net: caffe_pb2.NetParameter) -> tuple[list[str], list[str]]:
    """Rewrite ``net`` in place; return (what was rewritten, what has no exact BVLC equivalent), one line per
    layer, naming the layer and its type."""
    done, none = [], []
    for layer in net.layer:
        rewrite, original = _REWRITES.get(layer.type), layer.type
        what = rewrite(layer) if rewrite is not None else None
        if what is not None:
            done.append(f"layer '{layer.name}' ({original}): {what}")
        left = _fork_fields_left(layer)
        if layer.type in _FORK_TYPES:
            none.append(f"layer '{layer.name}' ({layer.type}): a fork layer type, no BVLC equivalent")
        elif left:
            none.append(f"layer '{layer.name}' ({layer.type}): fork field(s) {', '.join(left)} have no BVLC "
                        "equivalent at these values")
    return done, none
