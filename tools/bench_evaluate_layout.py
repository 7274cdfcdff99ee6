#!/usr/bin/env python
"""Crops-evaluation throughput of a small VGG in one process: NCHW memory with `--batch 1` (64 crops of 28x28
per pass; the named baseline, two threads) against `--channels-last` and the default `--batch 50` (3,200 crops
per pass: `--batch` counts 224x224 views of pixels), at one and two threads.

Why: `make demo` evaluates VGG-A/4 (28x28 crops, 3x3 grid + flips on 30x30 images) and must fit in 5 minutes;
this is how `evaluate --channels-last` and `--batch` counting 224² views of pixels were chosen.  Random weights
and images (speed does not depend on them); each case evaluates the same list in the same process, cases
interleaved over ``--repeats``, medians reported, with the load at start and end.

    python tools/bench_evaluate_layout.py [--images 2000] [--repeats 1]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# (threads, channels_last, --batch); a pass holds --batch x 224² / 28² = 64 x --batch crops of 28x28
CASES = [(threads, layout, batch) for threads in (1, 2) for layout in (False, True) for batch in (1, 50)]
BASELINE = (2, False, 1)


def prepare(folder: Path, images: int) -> tuple[Path, Path, Path]:
    """VGG-A/4 deploy net (28x28 input, 10 classes), random weights, ``images`` random 30x30 PNGs and a list."""
    import cv2

    from vggproto.net.interpreter import Net
    from vggproto.weights.caffemodel import write_weights
    subprocess.run([sys.executable, "-m", "vggproto", "-q", "generate", "--config", "A", "--out-dir", str(folder),
                    "--width-divisor", "4", "--num-classes", "10", "--crop-size", "28", "--scale", "none",
                    "--no-chain"], check=True, stdout=subprocess.DEVNULL)
    deploy = folder / "nets" / "A_deploy.prototxt"
    net, rng = Net(str(deploy)), np.random.default_rng(0)
    weights = {name: [rng.standard_normal(tuple(b.shape)).astype(np.float32) * 0.05 for b in blobs]
               for name, blobs in net.params.items()}
    write_weights(str(folder / "w.caffemodel"), weights)
    lines = []
    for i in range(images):
        cv2.imwrite(str(folder / f"{i}.png"), rng.integers(0, 256, size=(30, 30, 3), dtype=np.uint8))
        lines.append(f"{i}.png {i % 10}\n")
    (folder / "list.txt").write_text("".join(lines))
    return deploy, folder / "w.caffemodel", folder / "list.txt"


def views_per_second(deploy: Path, weights: Path, listing: Path, case: tuple[int, bool, int]) -> float:
    from vggproto.evaluation.evaluate import EvalOptions, evaluate, load_model
    threads, channels_last, batch = case
    torch.set_num_threads(threads)
    model = load_model(str(deploy), str(weights), channels_last=channels_last)
    options = EvalOptions(mode="crops", grid=3, flip=True, scales=(30,), mean=(73.0, 73.0, 73.0),
                          input_scale=0.0125, workers=0, progress=False, root=f"{listing.parent}/", batch=batch)
    start = time.perf_counter()
    result = evaluate([model], str(listing), options)
    return result.counts["model0"].images * 18 / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    print(f"start: load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; VGG-A/4, crops 3x3 + flips, "
          f"{args.images} images, torch {torch.__version__}")
    rates: dict[tuple, list[float]] = {case: [] for case in CASES}
    with tempfile.TemporaryDirectory() as tmp:
        deploy, weights, listing = prepare(Path(tmp), args.images)
        for _ in range(args.repeats):
            for case in CASES:
                rates[case].append(views_per_second(deploy, weights, listing, case))
    base = statistics.median(rates[BASELINE])
    print(f"{'threads':>7} {'layout':>7} {'--batch':>8} {'crops/pass':>10} {'views/s':>9} {'vs baseline':>12}")
    for (threads, channels_last, batch), values in rates.items():
        rate = statistics.median(values)
        print(f"{threads:>7} {'NHWC' if channels_last else 'NCHW':>7} {batch:>8} {batch * 64:>10} {rate:9.0f} "
              f"{rate / base:11.2f}x")
    print(f"end: load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
