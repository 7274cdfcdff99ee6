#!/usr/bin/env python
"""Benchmark of the paper's test-time procedures on a VGG net (random weights), one process, one device.

Prints images/second for ``center``, ``dense`` (image + flip) and ``crops`` (g×g grid + flips) at one scale Q, and
the ratios against the named baseline ``dense`` (Sect. 3.2: dense evaluation avoids re-computing the net for each
crop).  A second ratio compares the interpreter's deploy net with torchvision's ``vgg11/13/16/19`` on the same batch
(baseline: torchvision), when the configuration has a torchvision twin and ``--width-divisor`` is 1.

    python tools/bench_evaluate.py [--config D] [--width-divisor 1] [--q 256] [--grid 5] [--images 2] [--gpus 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}


def _weights(net_param, path: Path) -> None:
    from vggproto.net.shapes import net_param_shapes
    from vggproto.weights.caffemodel import write_weights
    _, shapes = net_param_shapes(net_param)
    rng = np.random.default_rng(0)
    arrays = {layer: [(rng.standard_normal(s) * np.sqrt(2.0 / max(int(np.prod(s[1:])), 1)) * 0.5)
                      .astype(np.float32) for s in blob_shapes] for layer, blob_shapes in shapes.items()}
    write_weights(str(path), arrays, net_param)


def _images(folder: Path, n: int, q: int) -> Path:
    import cv2
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        img = rng.integers(0, 256, size=(q, q * 4 // 3, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"{i}.png"), img)
        lines.append(f"{folder / f'{i}.png'} {i % 10}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    return folder / "list.txt"


def _rate(models, list_path, options, device) -> float:
    from vggproto.evaluation.evaluate import evaluate
    result = evaluate(models, str(list_path), options, device)
    return result.counts["model0"].images / result.seconds


def _torchvision_ratio(config: str, model, device: str, batch: int) -> str:
    import torchvision
    tv = getattr(torchvision.models, TORCHVISION[config])(weights=None).to(device).eval()
    x = torch.randn(batch, 3, 224, 224, device=device)
    timings = {}
    with torch.inference_mode():
        runs = (("torchvision", lambda: tv(x)), ("vggproto", lambda: model.net.forward(**{model.input_blob: x})))
        for name, fn in runs:
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings[name] = time.perf_counter() - start
    ratio = timings["vggproto"] / timings["torchvision"]
    return (f"forward, batch {batch} at 224 (dense net = deploy net): vggproto {timings['vggproto']:.3f}s, "
            f"torchvision {timings['torchvision']:.3f}s, ratio vggproto/torchvision {ratio:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="D")
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--q", type=int, default=256)
    parser.add_argument("--grid", type=int, default=5)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--gpus", default=None)
    args = parser.parse_args()
    from vggproto.caffe.prototxt import write_net
    from vggproto.evaluation.evaluate import EvalOptions, load_model
    from vggproto.vgg.generate import build_net
    device = f"cuda:{args.gpus.split(',')[0]}" if args.gpus else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        deploy = build_net(args.config, "deploy", width_divisor=args.width_divisor)
        write_net(deploy, str(folder / "deploy.prototxt"))
        _weights(deploy, folder / "w.caffemodel")
        model = load_model(str(folder / "deploy.prototxt"), str(folder / "w.caffemodel"), device)
        list_path = _images(folder, args.images, args.q)
        print(f"VGG-{args.config} width/{args.width_divisor}, Q={args.q}, {args.images} images, device {device}, "
              f"{torch.get_num_threads()} threads")
        rates = {}
        for mode in ("dense", "center", "crops"):
            options = EvalOptions(mode=mode, scales=(args.q,), grid=args.grid, workers=0, progress=False,
                                  batch=args.batch)
            rates[mode] = _rate([model], list_path, options, device)
        for mode, rate in rates.items():
            views = {"dense": "image + flip", "center": "1 crop", "crops": f"{2 * args.grid ** 2} crops"}[mode]
            print(f"{mode:<7} ({views:>12}): {rate:8.3f} img/s   ratio to dense {rate / rates['dense']:.3f}")
        if args.config in TORCHVISION and args.width_divisor == 1:
            print(_torchvision_ratio(args.config, model, device, 4))


if __name__ == "__main__":
    main()
