#!/usr/bin/env python3
"""Benchmark the interpreter: VGG-16 (config D deploy) through ``vggproto.net.interpreter.Net`` against torchvision's
``vgg16`` holding the same weights, in the same process, interleaved, median of ``--repeat`` runs.

The baseline is the hand-written PyTorch model (the best case for an interpreter: the same conv/pool/linear
kernels without any Caffe bookkeeping), so the ratio is the interpreter's overhead.  Both models compute the
same function here (224x224 input: Caffe's ceil pooling equals torch's floor pooling on even sizes), which is
checked before timing.  Forward-only (``no_grad``) and forward+backward (sum of the logits) are timed.

Usage: tools/bench_net.py [--batch 2] [--repeat 5] [--threads 2] [--device cpu]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vggproto.net.interpreter import Net  # noqa: E402

DEPLOY = os.path.join(os.path.dirname(__file__), "..", "nets", "D_deploy.prototxt")


def torchvision_twin(net: Net) -> torch.nn.Module:
    """torchvision's vgg16 with ``net``'s weights (no softmax: compare logits)."""
    import torchvision
    model = torchvision.models.vgg16(weights=None)
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    caffe = [(name, blobs) for name, blobs in net.params.items()]
    with torch.no_grad():
        for module, (_, (w, b)) in zip(convs + fcs, caffe):
            module.weight.copy_(w)
            module.bias.copy_(b)
    return model.eval()


def timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    net = Net(DEPLOY, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w, b in net.params.values():
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
            b.copy_(torch.randn(b.shape, generator=gen) * 0.01)
    twin = torchvision_twin(net).to(device)
    net = net.to(device)
    x = torch.randn(args.batch, 3, 224, 224, generator=gen).to(device) * 50
    with torch.no_grad():
        logits, theirs = _logits(net, x), twin(x)
        err = ((logits - theirs).abs().max() / theirs.abs().max()).item()
    print(f"VGG-16 batch {args.batch} on {device} ({args.threads} threads): max |logit diff| / max |logit| = "
          f"{err:.2e}")
    assert err < 1e-4, "the two models disagree"
    cases = {
        "forward (no_grad)": (lambda: _nograd(lambda: net(data=x)), lambda: _nograd(lambda: twin(x))),
        "forward+backward": (lambda: _fb(lambda: _logits(net, x)), lambda: _fb(lambda: twin(x))),
    }
    for name, (mine, base) in cases.items():
        mine(), base()   # warm-up
        a, b = [], []
        for _ in range(args.repeat):
            a.append(timed(mine, device))
            b.append(timed(base, device))
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:18s} vggproto {ma * 1e3:8.1f} ms   torchvision {mb * 1e3:8.1f} ms   ratio {ma / mb:.3f}")


def _logits(net: Net, x: torch.Tensor) -> torch.Tensor:
    net(data=x)
    return net.blobs["fc8"]


def _nograd(fn):
    with torch.no_grad():
        return fn()


def _fb(fn):
    fn().sum().backward()


if __name__ == "__main__":
    main()
