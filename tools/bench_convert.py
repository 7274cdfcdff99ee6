#!/usr/bin/env python3
"""Benchmark ``vggproto convert`` on a full-size VGG-16 caffemodel, and measure torchvision equivalence on photos.

Speed (issue #8: caffemodel -> torchvision state dict <= 2 s, peak RSS <= 2x the file).  The official-layout
file (553,432,081 bytes) is synthesised with ``vggproto make-official-like`` in a temp dir and read once to warm the
page cache.  Each case runs in a fresh subprocess; peak RSS growth = ``ru_maxrss`` at the end minus after imports.

* ``naive-torchvision``  baseline: protobuf ``ParseFromString`` + ``np.array(blob.data)`` per blob, the same
  fold and key mapping, ``torch.save`` — what a straightforward converter does
* ``vggproto-torchvision`` ``vggproto.convert.convert.convert(caffemodel, out.pth, to="torchvision")``
* ``vggproto-pt`` / ``vggproto-safetensors`` / ``vggproto-h5``: the same file to the other containers

``--equivalence``: random He-scaled VGG-16 weights; on each of skimage's six photos (224x224) compare Caffe's
logits (torchvision's module holding the unfolded weights, fed BGR 0-255 minus the mean pixel) with the converted
torchvision model on its standard normalisation: max |difference| / max |logit|, top-1 and top-5 agreement, and
the conv1_1 interior/border differences.

Usage: tools/bench_convert.py [--repeat N] [--cases CASE...] [--equivalence] [--skip-speed]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = {"naive-torchvision": "out.pth", "vggproto-torchvision": "out.pth", "vggproto-pt": "out.pt",
         "vggproto-safetensors": "out.safetensors", "vggproto-h5": "out.h5"}
BASELINE = "naive-torchvision"


def _naive(path: str, out: str) -> None:
    import numpy as np
    import torch

    from vggproto.caffe.proto import caffe_pb2
    from vggproto.weights.torchvision import caffe_to_torchvision
    net = caffe_pb2.NetParameter()
    with open(path, "rb") as handle:
        net.ParseFromString(handle.read())
    weights = {}
    for layer in net.layers:
        if layer.blobs:
            weights[layer.name] = [np.array(b.data, dtype=np.float32).reshape(b.num, b.channels, b.height, b.width)
                                   for b in layer.blobs]
    state = caffe_to_torchvision(weights)
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, out)


def _child(case: str, path: str, out_dir: str) -> dict:
    import resource
    import time
    sys.path.insert(0, str(ROOT))
    import torch  # noqa: F401  (imported before the baseline RSS, as in real use)

    from vggproto.convert.convert import convert

    def rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = rss()
    out = os.path.join(out_dir, CASES[case])
    start = time.perf_counter()
    if case == BASELINE:
        _naive(path, out)
    else:
        convert(path, out, to=case.split("-", 1)[1])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "rss": rss() - base, "out_bytes": os.path.getsize(out)}


def _run(case: str, path: str, out_dir: str) -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tools')!r}); " \
           f"import bench_convert as b; print(json.dumps(b._child({case!r}, {path!r}, {out_dir!r})))"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def speed(repeat: int, cases: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "VGG_ILSVRC_16_layers.caffemodel")
        subprocess.run([sys.executable, "-m", "vggproto", "make-official-like", "--depth", "16", path],
                       check=True, capture_output=True, cwd=ROOT)
        size = os.path.getsize(path)
        with open(path, "rb") as handle:  # warm the page cache
            while handle.read(1 << 24):
                pass
        print(f"file: {size:,} bytes (official VGG-16 layout), {repeat} run(s) per case, median shown")
        results = {}
        for case in [BASELINE] + [c for c in cases if c != BASELINE]:
            runs = [_run(case, path, tmp) for _ in range(repeat)]
            results[case] = {"seconds": statistics.median(r["seconds"] for r in runs),
                             "rss": max(r["rss"] for r in runs), "out_bytes": runs[0]["out_bytes"]}
        base = results[BASELINE]["seconds"]
        print(f"{'case':<22} {'seconds':>8} {'vs naive':>9} {'peak RSS':>10} {'RSS/file':>9} {'output bytes':>14}")
        for case, r in results.items():
            print(f"{case:<22} {r['seconds']:>8.2f} {r['seconds'] / base:>8.2f}x {r['rss'] / 2**20:>8.0f}MB "
                  f"{r['rss'] / size:>8.2f}x {r['out_bytes']:>14,}")


def equivalence() -> None:
    import cv2
    import numpy as np
    import skimage.data
    import torch
    import torchvision
    sys.path.insert(0, str(ROOT))
    from vggproto.weights.torchvision import (
        CAFFE_MEAN_BGR,
        TORCHVISION_MEAN_RGB,
        TORCHVISION_STD_RGB,
        caffe_to_torchvision,
    )
    generator = torch.Generator().manual_seed(0)
    weights, inputs = {}, 3
    for block, (count, width) in enumerate(zip((2, 2, 3, 3, 3), (64, 128, 256, 512, 512)), 1):
        for i in range(1, count + 1):
            weights[f"conv{block}_{i}"] = [torch.randn((width, inputs, 3, 3), generator=generator).mul_(
                (2 / (9 * inputs)) ** 0.5).numpy(), torch.randn(width, generator=generator).mul_(0.1).numpy()]
            inputs = width
    for name, (n, k) in {"fc6": (4096, 25088), "fc7": (4096, 4096), "fc8": (1000, 4096)}.items():
        weights[name] = [torch.randn((n, k), generator=generator).mul_((2 / k) ** 0.5).numpy(),
                         torch.randn(n, generator=generator).mul_(0.1).numpy()]
    folded = caffe_to_torchvision(weights)
    raw = dict(folded, **{"features.0.weight": weights["conv1_1"][0], "features.0.bias": weights["conv1_1"][1]})

    def model(state):
        with torch.device("meta"):
            m = torchvision.models.vgg16()
        m.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, assign=True)
        return m.eval()
    caffe_model, tv_model = model(raw), model(folded)
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "hubble_deep_field"]
    print(f"{'photo':<18} {'max|dlogit|/max|logit|':>23} {'top1':>5} {'top5':>5} "
          f"{'conv1 interior':>15} {'conv1 border':>13}")
    for name in names:
        image = getattr(skimage.data, name)()
        image = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]
        rgb = cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA)
        caffe_x = torch.from_numpy(np.ascontiguousarray(
            (rgb[..., ::-1].astype(np.float32) - np.array(CAFFE_MEAN_BGR, np.float32)).transpose(2, 0, 1)))[None]
        tv_x = torch.from_numpy(np.ascontiguousarray(((rgb.astype(np.float32) / 255 - np.array(
            TORCHVISION_MEAN_RGB, np.float32)) / np.array(TORCHVISION_STD_RGB, np.float32)).transpose(2, 0, 1)))[None]
        with torch.no_grad():
            a, b = caffe_model(caffe_x)[0], tv_model(tv_x)[0]
            c1, c2 = caffe_model.features[0](caffe_x), tv_model.features[0](tv_x)
        scale = float(c1.abs().max())
        interior = float((c1 - c2)[..., 1:-1, 1:-1].abs().max()) / scale
        border = float((c1 - c2).abs().max()) / scale
        top5 = set(a.topk(5).indices.tolist()) == set(b.topk(5).indices.tolist())
        top1 = bool(a.argmax() == b.argmax())
        print(f"{name:<18} {float((a - b).abs().max() / a.abs().max()):>23.2e} {str(top1):>5} "
              f"{str(top5):>5} {interior:>15.1e} {border:>13.1e}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--equivalence", action="store_true", help="also measure torchvision equivalence")
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="speed cases to run (the naive baseline always runs)")
    args = parser.parse_args()
    if not args.skip_speed:
        speed(args.repeat, args.cases)
    if args.equivalence:
        equivalence()
    return 0


if __name__ == "__main__":
    sys.exit(main())
