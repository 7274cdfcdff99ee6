#!/usr/bin/env python3
"""Write a caffemodel with exactly the layout of the released VGG-16/19 weights, filled with seeded random values.

Layout (caffe-format.md section D): NetParameter ``name: "VGG_ILSVRC_<depth>_layers"``, V1 ``layers`` with enum
types in deploy order (conv/relu per block, MAX pool 2/2, fc6/relu6/drop6, fc7/relu7/drop7, fc8, prob), field
order bottom, top, name, type, *_param, blobs with legacy num/channels/height/width only (fc weights 1x1xNxK,
biases 1x1x1xN), and a bare ``input: "data"`` without dims.  At full width the files are 553,432,081 (16) and
574,671,192 (19) bytes, the sizes of the official files.  ``--v2`` writes what Caffe's upgrade_net_proto_binary
makes of it instead (V2 ``layer`` entries, string types, legacy blob dims kept, input stripped).
``--width-divisor D`` divides every width (conv channels, fc6/fc7 outputs) for small test files.

Usage: tools/make_official_like.py --depth 16|19 OUT [--seed N] [--v2] [--width-divisor D]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vggproto.caffe.proto import caffe_pb2  # noqa: E402
from vggproto.caffe.upgrade import upgrade_net  # noqa: E402
from vggproto.caffe.wire import Field, LazyArray, split_message  # noqa: E402
from vggproto.weights.caffemodel import write_parts  # noqa: E402

V1 = caffe_pb2.V1LayerParameter
CONVS_PER_BLOCK = {16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
CLASSES = 1000


def _layer(bottom: str, top: str, name: str, kind: int) -> caffe_pb2.V1LayerParameter:
    return V1(bottom=[bottom], top=[top], name=name, type=kind)


def official_net(depth: int, divisor: int = 1) -> tuple[caffe_pb2.NetParameter, dict[str, list[tuple]]]:
    """The release's NetParameter structure (no blobs) and each layer's legacy 4-D blob dims."""
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


def _random_blob(rng: np.random.Generator, dims: tuple, std: float):
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, choices=(16, 19), required=True)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--v2", action="store_true", help="write Caffe's V2 re-save of the same file")
    parser.add_argument("--width-divisor", type=int, default=1, help="divide all widths (small test files)")
    args = parser.parse_args(argv)
    if args.width_divisor < 1 or 64 % args.width_divisor:
        parser.error("--width-divisor must divide 64")
    net, shapes = official_net(args.depth, args.width_divisor)
    if args.v2:
        upgrade_net(net)  # Caffe: tools/upgrade_net_proto_binary.cpp — UpgradeNetAsNeeded, blobs kept as stored
    size = write_parts(args.out, net_parts(net, shapes, args.seed))
    print(f"wrote {args.out}: {size} bytes ({'V2' if args.v2 else 'V1'}, VGG-{args.depth}, "
          f"width/{args.width_divisor}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
