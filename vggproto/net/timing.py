"""Per-layer forward/backward timing of a :class:`vggproto.net.interpreter.Net`, as Caffe's ``caffe time`` reports it.

Caffe: tools/caffe.cpp time() — run forward+backward ``iterations`` times and average every layer's forward and
backward time.  Layers are timed with module hooks (forward pre/post, full backward pre/post); the device is
synchronised at every hook so asynchronous GPU kernels are charged to the right layer.  Inputs are zeros, as
Caffe's blobs are; a net without a loss back-propagates ones from its outputs so backward is timed anyway.
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import torch

from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.net.interpreter")


@dataclass
class Timing:
    """Average milliseconds per layer (in layer order) and per pass."""

    iterations: int
    forward_ms: dict[str, float] = field(default_factory=dict)
    backward_ms: dict[str, float] = field(default_factory=dict)
    forward_total_ms: float = 0.0
    backward_total_ms: float = 0.0
    total_ms: float = 0.0

    def report(self) -> str:
        """Caffe's log lines: per-layer averages, then the pass averages and the total."""
        lines = ["Average time per layer: "]
        for name in self.forward_ms:
            lines.append(f"{name:>15}\tforward: {self.forward_ms[name]:.4f} ms.")
            lines.append(f"{name:>15}\tbackward: {self.backward_ms.get(name, 0.0):.4f} ms.")
        lines += [f"Average Forward pass: {self.forward_total_ms:.4f} ms.",
                  f"Average Backward pass: {self.backward_total_ms:.4f} ms.",
                  f"Average Forward-Backward: {self.forward_total_ms + self.backward_total_ms:.4f} ms.",
                  f"Total Time: {self.total_ms:.4f} ms.", "*** Benchmark ends ***"]
        return "\n".join(lines)


class _Clock:
    def __init__(self, device: torch.device):
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _backward(net: Net) -> None:
    if net.loss is not None and net.loss.requires_grad:
        net.loss.backward()
        return
    outs = [net.blobs[name] for name in net.output_names if net.blobs[name].requires_grad]
    if outs:
        torch.autograd.backward(outs, [torch.ones_like(t) for t in outs])


def time_net(net: Net, iterations: int = 50) -> Timing:
    """Time ``iterations`` forward+backward passes of ``net`` layer by layer (after one warm-up pass)."""
    device = net.device
    clock = _Clock(device)
    inputs = {name: torch.zeros(net.blob_shapes[name], device=device, dtype=net.dtype)
              for name in net.input_names}
    net(**inputs)
    _backward(net)   # warm-up (Caffe logs the initial loss here)
    net.zero_grad(set_to_none=True)
    started: dict[str, float] = {}
    fwd = {name: 0.0 for name in net.layer_names}
    bwd = {name: 0.0 for name in net.layer_names}
    handles = []
    for name, layer in zip(net.layer_names, net.layer_list):
        def pre(module, args, name=name):
            started[name] = clock.now()

        def post(module, args, output, name=name):
            fwd[name] += clock.now() - started[name]

        def bpre(module, grad_output, name=name):
            started["~" + name] = clock.now()

        def bpost(module, grad_input, grad_output, name=name):
            bwd[name] += clock.now() - started.get("~" + name, clock.now())
        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
        if not layer.feeds and not layer.is_data:
            handles += [layer.register_full_backward_pre_hook(bpre), layer.register_full_backward_hook(bpost)]
    forward_total = backward_total = 0.0
    begin = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")   # first layer: no input grads
            for it in range(iterations):
                t0 = clock.now()
                net(**inputs)
                t1 = clock.now()
                _backward(net)
                t2 = clock.now()
                net.zero_grad(set_to_none=True)
                forward_total += t1 - t0
                backward_total += t2 - t1
                log.info("Iteration: %d forward-backward time: %.4f ms.", it + 1, (t2 - t0) * 1e3)
    finally:
        for handle in handles:
            handle.remove()
    scale = 1e3 / max(iterations, 1)
    return Timing(iterations, {k: v * scale for k, v in fwd.items()}, {k: v * scale for k, v in bwd.items()},
                  forward_total * scale, backward_total * scale, (time.perf_counter() - begin) * 1e3)
