"""Small nets, random weights and image lists shared by the evaluate / classify / extract tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import write_net
from vggproto.weights.caffemodel import write_weights


def mini_deploy(classes: int = 5, height: int = 224, width: int = 224, fc: int = 6) -> caffe_pb2.NetParameter:
    """A VGG-shaped deploy net that costs nothing: one 3x3 conv, five 2x2 max pools (stride 32, Caffe's ceil
    rounding), fc6 on the 7x7 pool5 map, fc7, fc8, Softmax ``prob``."""
    net = caffe_pb2.NetParameter(name="mini")
    layer = net.layer.add(name="input", type="Input", top=["data"])
    layer.input_param.shape.add().dim.extend([2, 3, height, width])
    conv = net.layer.add(name="conv1_1", type="Convolution", bottom=["data"], top=["conv1_1"])
    conv.convolution_param.num_output = 3
    conv.convolution_param.pad.append(1)
    conv.convolution_param.kernel_size.append(3)
    net.layer.add(name="relu1_1", type="ReLU", bottom=["conv1_1"], top=["conv1_1"])
    bottom = "conv1_1"
    for i in range(1, 6):
        pool = net.layer.add(name=f"pool{i}", type="Pooling", bottom=[bottom], top=[f"pool{i}"])
        pool.pooling_param.pool = caffe_pb2.PoolingParameter.MAX
        pool.pooling_param.kernel_size, pool.pooling_param.stride = 2, 2
        bottom = f"pool{i}"
    for number, width_ in ((6, fc), (7, fc), (8, classes)):
        ip = net.layer.add(name=f"fc{number}", type="InnerProduct", bottom=[bottom], top=[f"fc{number}"])
        ip.inner_product_param.num_output = width_
        bottom = f"fc{number}"
        if number < 8:
            net.layer.add(name=f"relu{number}", type="ReLU", bottom=[bottom], top=[bottom])
            drop = net.layer.add(name=f"drop{number}", type="Dropout", bottom=[bottom], top=[bottom])
            drop.dropout_param.dropout_ratio = 0.5
    net.layer.add(name="prob", type="Softmax", bottom=["fc8"], top=["prob"])
    return net


def random_weights(net_param: caffe_pb2.NetParameter, seed: int = 0, gain: float = 1.0) -> dict:
    """He-scaled Gaussian weights and small biases for every layer with parameters (shapes from the net)."""
    from vggproto.net.shapes import net_param_shapes
    _, shapes = net_param_shapes(net_param)
    rng = np.random.default_rng(seed)
    out = {}
    for layer, blob_shapes in shapes.items():
        weight_shape = blob_shapes[0]
        fan_in = int(np.prod(weight_shape[1:]))
        blobs = [(rng.standard_normal(weight_shape) * gain * np.sqrt(2.0 / fan_in)).astype(np.float32)]
        blobs += [(rng.standard_normal(s) * 0.1).astype(np.float32) for s in blob_shapes[1:]]
        out[layer] = blobs
    return out


def write_model(tmp: Path, net_param: caffe_pb2.NetParameter, seed: int = 0, name: str = "m",
                gain: float = 1.0) -> tuple[Path, Path]:
    """Write ``<name>.prototxt`` and ``<name>.caffemodel`` (random weights); return their paths."""
    model, weights = tmp / f"{name}.prototxt", tmp / f"{name}.caffemodel"
    write_net(net_param, str(model))
    write_weights(str(weights), random_weights(net_param, seed, gain), net_param)
    return model, weights


def write_images(tmp: Path, sizes, labels=None, seed: int = 0) -> Path:
    """Random smooth-ish BGR JPEG-free (PNG, lossless) images of the given (h, w) sizes and a list file."""
    import cv2
    rng = np.random.default_rng(seed)
    lines = []
    for i, (h, w) in enumerate(sizes):
        small = rng.integers(0, 256, size=(max(h // 8, 2), max(w // 8, 2), 3)).astype(np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
        path = tmp / f"img{i}.png"
        cv2.imwrite(str(path), img)
        label = labels[i] if labels is not None else i % 5
        lines.append(f"{path} {label}")
    list_path = tmp / "list.txt"
    list_path.write_text("\n".join(lines) + "\n")
    return list_path
