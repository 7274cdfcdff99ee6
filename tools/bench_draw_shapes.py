#!/usr/bin/env python3
"""Benchmark: shape inference for drawing a full-size VGG net, meta device vs. the baseline (a normal CPU build).

Usage: python tools/bench_draw_shapes.py [--config D] [--kind train_val] [--phase TRAIN]
Both runs happen in this process, the meta run first (its one-off imports are paid by a warm-up before timing, so
the peak-RSS growth of each run can be read in turn); prints both times, peak RSS growth and the ratio.
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="D")
    parser.add_argument("--kind", default="train_val", choices=("deploy", "train_val", "dense"))
    parser.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST"))
    args = parser.parse_args()
    import torch

    from vggproto.caffe.prototxt import read_net
    from vggproto.data.options import DataOptions
    from vggproto.net.interpreter import Net
    from vggproto.net.shapes import interpreter_shapes

    net = read_net(str(ROOT / "nets" / f"{args.config}_{args.kind}.prototxt"))
    with torch.device("meta"):  # warm-up: the meta path's one-off imports (torch._refs / decompositions)
        torch.randn(2, 2, generator=torch.Generator())
    rss0 = _rss_mb()
    start = time.perf_counter()
    shapes = interpreter_shapes(net, args.phase)
    meta = time.perf_counter() - start
    rss1 = _rss_mb()
    start = time.perf_counter()
    Net(net, phase=args.phase, options=DataOptions(dry_run=True))
    baseline = time.perf_counter() - start
    rss2 = _rss_mb()
    print(f"{args.config}_{args.kind} {args.phase}: {shapes.total:,} parameters")
    print(f"baseline Net on CPU: {baseline:.2f} s (peak RSS +{rss2 - rss1:.0f} MB)")
    print(f"meta-device shapes:  {meta:.3f} s (peak RSS +{rss1 - rss0:.0f} MB)")
    print(f"speed-up: {baseline / meta:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
