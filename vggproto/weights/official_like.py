"""Write a caffemodel with exactly the layout of the released VGG-16/19 weights, filled with seeded random values.

The tests and benchmarks need files that look byte for byte like the official release (which is too big to ship
and not ours to redistribute), so every reader path the real files take is exercised on a file made here.

Layout (caffe-format.md section D): NetParameter ``name: "VGG_ILSVRC_<depth>_layers"``, V1 ``layers`` with enum
types in deploy order (conv/relu per block, MAX pool 2/2, fc6/relu6/drop6, fc7/relu7/drop7, fc8, prob), field
order bottom, top, name, type, *_param, blobs with legacy num/channels/height/width only (fc weights 1x1xNxK,
biases 1x1x1xN), and a bare ``input: "data"`` without dims.  At full width the files are 553,432,081 (16) and
574,671,192 (19) bytes, the sizes of the official files.  ``v2`` (``--v2``) writes what Caffe's
upgrade_net_proto_binary makes of it instead (V2 ``layer`` entries, string types, legacy blob dims kept, input
stripped).  ``width_divisor`` (``--width-divisor D``) divides every width (conv channels, fc6/fc7 outputs) for
small test files.  Blobs are generated while they are written, so a full-size file never sits in memory.

Command line: ``vggproto make-official-like --depth 16|19 OUT [--seed N] [--v2] [--width-divisor D] [--force]``.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from vggproto.caffe.files import check_output
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.upgrade import upgrade_net
from vggproto.caffe.wire import Field, LazyArray, split_message
from vggproto.errors import WeightsError
from vggproto.weights.caffemodel import write_parts

V1 = caffe_pb2.V1LayerParameter
CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
CLASSES = 1000


def _layer(bottom: str, top: str, name: str, kind: int) -> caffe_pb2.V1LayerParameter:
    return V1(bottom=[bottom], top=[top], name=name, type=kind)


def _check(depth: int, divisor: int) -> None:
    """Refuse a depth the release does not have, or a divisor that would leave a fractional width."""
    if depth not in CONVS_PER_BLOCK:
        raise WeightsError(f"VGG depth {depth}: the released weights are VGG-16 and VGG-19 (depth 16 or 19)")
    if not isinstance(divisor, int) or divisor < 1 or 64 % divisor:
        raise WeightsError(f"width divisor {divisor}: must divide 64 (1, 2, 4, 8, 16, 32 or 64)")


def official_net(depth: int, divisor: int = 1) -> tuple[caffe_pb2.NetParameter, dict[str, list[tuple]]]:
    """The release's NetParameter structure (no blobs) and each layer's legacy 4-D blob dims."""
    _check(depth, divisor)
    net = caffe_pb2.NetParameter(name=f"VGG_ILSVRC_{depth}_layers", input=["data"])
    shapes: dict[str, list[tuple]] = {}
    bottom, channels = "data", 3
    for block, (count, width) in enumerate(zip(CONVS_PER_BLOCK[depth], WIDTHS), start=1):
        width //= divisor
        for i in range(1, count + 1):
            name = f"conv{block}_{i}"
            conv = _layer(bottom, name, name, V1.CONVOLUTION)
            conv.convolution_param.num_output = width
            conv.convolution_param.pad.append(1)
            conv.convolution_param.kernel_size.append(3)
            net.layers.extend([conv, _layer(name, name, f"relu{block}_{i}", V1.RELU)])
            shapes[name] = [(width, channels, 3, 3), (1, 1, 1, width)]
            bottom, channels = name, width
        pool = _layer(bottom, f"pool{block}", f"pool{block}", V1.POOLING)
        pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
        pool.pooling_param.kernel_size, pool.pooling_param.stride = 2, 2
        net.layers.append(pool)
        bottom = f"pool{block}"
    inputs = channels * 7 * 7
    for index, outputs in ((6, 4096 // divisor), (7, 4096 // divisor), (8, CLASSES)):
        name = f"fc{index}"
        fc = _layer(bottom, name, name, V1.INNER_PRODUCT)
        fc.inner_product_param.num_output = outputs
        net.layers.append(fc)
        shapes[name] = [(1, 1, outputs, inputs), (1, 1, 1, outputs)]
        if index < 8:
            drop = _layer(name, name, f"drop{index}", V1.DROPOUT)
            drop.dropout_param.dropout_ratio = 0.5
            net.layers.extend([_layer(name, name, f"relu{index}", V1.RELU), drop])
        bottom, inputs = name, outputs
    net.layers.append(_layer(bottom, "prob", "prob", V1.SOFTMAX))
    return net, shapes


def _random_blob(rng: np.random.Generator, dims: tuple, std: float) -> Callable[[], np.ndarray]:
    def make() -> np.ndarray:
        values = rng.standard_normal(int(np.prod(dims)), dtype=np.float32)
        values *= np.float32(std)
        return values
    return make


def net_parts(net: caffe_pb2.NetParameter, shapes: dict[str, list[tuple]], seed: int) -> list:
    """Stream parts of the whole file: each blob is legacy dims + packed data generated when written."""
    rng = np.random.default_rng(seed)
    v1 = bool(net.layers)
    layer_no, blob_no = (2, 6) if v1 else (100, 7)
    layers = net.layers if v1 else net.layer
    head = caffe_pb2.NetParameter()
    head.CopyFrom(net)
    head.ClearField("layers")
    head.ClearField("layer")
    before, _, after = split_message(head.SerializeToString(), layer_no)
    parts: list = [before]
    for layer in layers:
        lo, _, hi = split_message(layer.SerializeToString(), blob_no)
        blobs = []
        for index, dims in enumerate(shapes.get(layer.name, [])):
            legacy = caffe_pb2.BlobProto(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
            make = _random_blob(rng, dims, 0.01 if index == 0 else 0.1)
            data = Field(5, [LazyArray(int(np.prod(dims)) * 4, make)])
            blobs.append(Field(blob_no, [legacy.SerializeToString(), data]))
        parts.append(Field(layer_no, [lo, *blobs, hi]))
    parts.append(after)
    return parts


def write_official_like(out: str | os.PathLike, depth: int, seed: int = 0, v2: bool = False,
                        width_divisor: int = 1, force: bool = False) -> int:
    """Write the VGG-``depth`` release layout to ``out`` (atomically); return the bytes written.

    ``out`` is checked first (an existing file of another kind is kept unless ``force``), so a bad name costs
    nothing; ``seed`` fixes the weights, so two files with one seed are byte-identical.
    """
    check_output(out, kind="binary", force=force)
    net, shapes = official_net(depth, width_divisor)
    if v2:
        upgrade_net(net)  # Caffe: tools/upgrade_net_proto_binary.cpp — UpgradeNetAsNeeded, blobs kept as stored
    return write_parts(out, net_parts(net, shapes, seed))
