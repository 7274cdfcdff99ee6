"""Re-created real architectures for tools/bench_engines.py, written as Caffe prototxt text: ResNet-50
(bottlenecks, BatchNorm + Scale, Eltwise), GoogLeNet (inception v1: LRN, 1x1/3x3/5x5/pool-proj branches,
Concat), SqueezeNet 1.1 (fire modules, global average pool, Softmax over N x C x 1 x 1) and MobileNet v1
(depthwise convolutions as grouped Convolution + BatchNorm + Scale).  Same layer shapes as the published deploy
prototxts (224 x 224 input, 1000 classes); weights come from the benchmark's random fill.

    python tools/bench_nets.py OUT_DIR     # writes resnet50.prototxt, googlenet.prototxt, ...
"""
from __future__ import annotations

import sys
from pathlib import Path


class Text:
    """A prototxt being written: each method adds one layer and returns its top."""

    def __init__(self, name: str, shape: tuple[int, ...] = (1, 3, 224, 224)) -> None:
        dims = " ".join(f"dim: {d}" for d in shape)
        self.lines = [f'name: "{name}"',
                      f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ {dims} }} }} }}']

    def add(self, name: str, kind: str, bottoms: list[str], top: str, body: str = "") -> str:
        ins = " ".join(f'bottom: "{b}"' for b in bottoms)
        self.lines.append(f'layer {{ name: "{name}" type: "{kind}" {ins} top: "{top}" {body} }}')
        return top

    def conv(self, name: str, bottom: str, out: int, k: int, stride: int = 1, pad: int = 0, group: int = 1,
             bias: bool = True) -> str:
        extra = (f" group: {group}" if group > 1 else "") + ("" if bias else " bias_term: false")
        body = f"num_output: {out} kernel_size: {k} stride: {stride} pad: {pad}{extra}"
        return self.add(name, "Convolution", [bottom], name, f"convolution_param {{ {body} }}")

    def relu(self, blob: str) -> str:
        return self.add(f"{blob}_relu", "ReLU", [blob], blob)

    def bn(self, blob: str) -> str:
        self.add(f"{blob}_bn", "BatchNorm", [blob], blob, "batch_norm_param { use_global_stats: true }")
        return self.add(f"{blob}_scale", "Scale", [blob], blob, "scale_param { bias_term: true }")

    def pool(self, name: str, bottom: str, kind: str, k: int = 0, stride: int = 1, pad: int = 0,
             global_: bool = False) -> str:
        size = "global_pooling: true" if global_ else f"kernel_size: {k} stride: {stride} pad: {pad}"
        return self.add(name, "Pooling", [bottom], name, f"pooling_param {{ pool: {kind} {size} }}")

    def head(self, bottom: str, classes: int = 1000) -> None:
        self.add("fc", "InnerProduct", [bottom], "fc", f"inner_product_param {{ num_output: {classes} }}")
        self.add("prob", "Softmax", ["fc"], "prob")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def resnet50() -> str:
    """ResNet-50 (He et al. 2016) as in KaimingHe/deep-residual-networks' deploy prototxt."""
    t = Text("ResNet-50")
    x = t.relu(t.bn(t.conv("conv1", "data", 64, 7, 2, 3, bias=False)))
    x = t.pool("pool1", x, "MAX", 3, 2)
    width = 64
    for stage, blocks in enumerate((3, 4, 6, 3), 2):
        for block in range(blocks):
            name, stride = f"res{stage}{chr(97 + block)}", 2 if block == 0 and stage > 2 else 1
            shortcut = x
            if block == 0:
                shortcut = t.bn(t.conv(f"{name}_branch1", x, width * 4, 1, stride, bias=False))
            y = t.relu(t.bn(t.conv(f"{name}_branch2a", x, width, 1, stride, bias=False)))
            y = t.relu(t.bn(t.conv(f"{name}_branch2b", y, width, 3, 1, 1, bias=False)))
            y = t.bn(t.conv(f"{name}_branch2c", y, width * 4, 1, bias=False))
            x = t.relu(t.add(name, "Eltwise", [shortcut, y], name))
        width *= 2
    t.head(t.pool("pool5", x, "AVE", 7, 1))
    return t.text()


def googlenet() -> str:
    """GoogLeNet (inception v1) as BVLC's bvlc_googlenet deploy prototxt (without the auxiliary heads)."""
    t = Text("GoogLeNet")
    x = t.relu(t.conv("conv1", "data", 64, 7, 2, 3))
    x = t.pool("pool1", x, "MAX", 3, 2)
    x = t.add("norm1", "LRN", [x], "norm1", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    x = t.relu(t.conv("conv2_reduce", x, 64, 1))
    x = t.relu(t.conv("conv2", x, 192, 3, 1, 1))
    x = t.add("norm2", "LRN", [x], "norm2", "lrn_param { local_size: 5 alpha: 0.0001 beta: 0.75 }")
    x = t.pool("pool2", x, "MAX", 3, 2)
    modules = {"3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64), "pool3": None,
               "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
               "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128), "pool4": None,
               "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128)}
    for name, widths in modules.items():
        if widths is None:
            x = t.pool(name, x, "MAX", 3, 2)
            continue
        one, r3, three, r5, five, proj = widths
        p = f"inception_{name}"
        b1 = t.relu(t.conv(f"{p}_1x1", x, one, 1))
        b3 = t.relu(t.conv(f"{p}_3x3", t.relu(t.conv(f"{p}_3x3_reduce", x, r3, 1)), three, 3, 1, 1))
        b5 = t.relu(t.conv(f"{p}_5x5", t.relu(t.conv(f"{p}_5x5_reduce", x, r5, 1)), five, 5, 1, 2))
        bp = t.relu(t.conv(f"{p}_pool_proj", t.pool(f"{p}_pool", x, "MAX", 3, 1, 1), proj, 1))
        x = t.add(f"{p}_output", "Concat", [b1, b3, b5, bp], f"{p}_output")
    t.head(t.pool("pool5", x, "AVE", 7, 1))
    return t.text()


def squeezenet() -> str:
    """SqueezeNet 1.1 (DeepScale/SqueezeNet's deploy prototxt): conv10 + global average pool + Softmax."""
    t = Text("SqueezeNet-1.1", (1, 3, 227, 227))
    x = t.pool("pool1", t.relu(t.conv("conv1", "data", 64, 3, 2)), "MAX", 3, 2)
    fires = [("fire2", 16, 64), ("fire3", 16, 64), "pool3", ("fire4", 32, 128), ("fire5", 32, 128), "pool5",
             ("fire6", 48, 192), ("fire7", 48, 192), ("fire8", 64, 256), ("fire9", 64, 256)]
    for item in fires:
        if isinstance(item, str):
            x = t.pool(item, x, "MAX", 3, 2)
            continue
        name, squeeze, expand = item
        s = t.relu(t.conv(f"{name}_squeeze1x1", x, squeeze, 1))
        e1 = t.relu(t.conv(f"{name}_expand1x1", s, expand, 1))
        e3 = t.relu(t.conv(f"{name}_expand3x3", s, expand, 3, 1, 1))
        x = t.add(f"{name}_concat", "Concat", [e1, e3], f"{name}_concat")
    x = t.relu(t.conv("conv10", x, 1000, 1))
    x = t.pool("pool10", x, "AVE", global_=True)
    t.add("prob", "Softmax", [x], "prob")
    return t.text()


def mobilenet() -> str:
    """MobileNet v1 (shicai/MobileNet-Caffe's deploy prototxt): depthwise 3x3 + pointwise 1x1, BN + Scale."""
    t = Text("MobileNet-v1")
    x = t.relu(t.bn(t.conv("conv1", "data", 32, 3, 2, 1, bias=False)))
    channels = 32
    plan = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    for index, (out, stride) in enumerate(plan, 2):
        x = t.relu(t.bn(t.conv(f"conv{index}_dw", x, channels, 3, stride, 1, group=channels, bias=False)))
        x = t.relu(t.bn(t.conv(f"conv{index}_sep", x, out, 1, bias=False)))
        channels = out
    x = t.pool("pool6", x, "AVE", global_=True)
    x = t.conv("fc7", x, 1000, 1)
    t.add("prob", "Softmax", [x], "prob")
    return t.text()


ARCHITECTURES = {"resnet50": resnet50, "googlenet": googlenet, "squeezenet1.1": squeezenet, "mobilenet_v1": mobilenet}


def write_all(folder: Path) -> dict[str, Path]:
    """Write every architecture's prototxt into ``folder``; ``{name: path}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in ARCHITECTURES.items():
        paths[name] = folder / f"{name}.prototxt"
        paths[name].write_text(build())
    return paths


if __name__ == "__main__":
    for name, path in write_all(Path(sys.argv[1] if len(sys.argv) > 1 else ".")).items():
        print(name, path)
