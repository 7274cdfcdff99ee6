#!/usr/bin/env python
"""Long version of tests/test_localize_train.py: train a reduced-width localisation net on the synthetic set
(coloured rectangles on real photographs) and report, on held-out images, the share with IoU > 0.5 and the
Euclidean loss, next to the baseline "best constant box" (the mean held-out target) computed in the same process.

    python tools/bench_localize.py --iterations 600 --regression pcr
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vggproto.caffe.prototxt import write_net
from vggproto.data.box_geometry import iou_matrix, target_to_corners
from vggproto.localize.synthetic import make_synthetic_set, synthetic_nets, synthetic_solver
from vggproto.train.solver import Solver, TrainOptions


def held_out(solver, crop: int, blob: str) -> tuple[float, float, float, float]:
    """(loss, IoU>0.5 share) of the net and of the best constant box on the TEST batch."""
    net = solver.test_nets[0]
    with torch.no_grad():
        net.forward()
    pred, target = net.blobs[blob].numpy(), net.blobs["box"].numpy()
    constant = np.broadcast_to(target.mean(axis=0), target.shape)

    def loss(p):
        return float(((p - target) ** 2).sum() / len(target) / 2)

    def hits(p):
        return float(np.mean([iou_matrix(target_to_corners(a, crop), target_to_corners(b, crop))[0, 0] > 0.5
                              for a, b in zip(p, target)]))
    return loss(pred), hits(pred), loss(constant), hits(constant)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--regression", choices=["scr", "pcr"], default="scr")
    parser.add_argument("--config", default="A")
    parser.add_argument("--width-divisor", type=int, default=8)
    parser.add_argument("--crop", type=int, default=48)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=100)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        lists = make_synthetic_set(work, args.train, args.val, height=args.crop, width=args.crop * 5 // 4)
        train_val, _ = synthetic_nets(*lists, config=args.config, regression=args.regression, crop=args.crop,
                                      width_divisor=args.width_divisor, val_batch=args.val)
        write_net(train_val, str(work / "train_val.prototxt"))
        solver = Solver(synthetic_solver(work / "train_val.prototxt", args.iterations, args.lr),
                        TrainOptions(progress=False, csv=False))
        blob = "class_box" if args.regression == "pcr" else "fc8-loc"
        started = time.perf_counter()
        solver.step(args.iterations)
        seconds = time.perf_counter() - started
        loss, hits, c_loss, c_hits = held_out(solver, args.crop, blob)
    print(f"{args.config}/{args.width_divisor} {args.regression.upper()}, crop {args.crop}, {args.iterations} Adam "
          f"iterations of 16 in {seconds:.1f} s")
    print(f"held-out ({args.val} images)   loss {loss:.4f}   IoU>0.5 {100 * hits:.1f}%")
    print(f"best constant box (baseline) loss {c_loss:.4f}   IoU>0.5 {100 * c_hits:.1f}%")
    print(f"ratio loss net/baseline {loss / c_loss:.3f}")


if __name__ == "__main__":
    main()
