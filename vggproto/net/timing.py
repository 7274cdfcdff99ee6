"""Per-layer forward/backward timing of a :class:`vggproto.net.interpreter.Net`, as Caffe's ``caffe time`` reports it.

Caffe: tools/caffe.cpp time() — run forward+backward ``iterations`` times and average every layer's forward and
backward time.  Layers are timed with module hooks (forward) and hooks on their output tensors' gradients
(backward, see :class:`_Hooks`); the device is synchronised at every hook so asynchronous GPU kernels are
charged to the right layer.  Inputs are zeros, as
Caffe's blobs are; a net without a loss back-propagates ones from its outputs so backward is timed anyway.
"""
from __future__ import annotations

import logging
import time
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


class _Hooks:
    """Per-layer clocks.  Forward: module pre/post hooks.  Backward: a hook on each layer's output tensors marks
    when autograd reaches the layer; everything until the next layer is reached (its input *and* weight
    gradients, as Caffe's Layer::Backward computes both) is charged to it, so the per-layer times add up to the
    whole backward pass."""

    def __init__(self, net: Net, clock: _Clock):
        self.clock, self.started, self.events = clock, {}, []
        self.forward = {name: 0.0 for name in net.layer_names}
        self.backward = {name: 0.0 for name in net.layer_names}
        self.handles = []
        for name, layer in zip(net.layer_names, net.layer_list):
            self.handles += [layer.register_forward_pre_hook(self._pre(name)),
                             layer.register_forward_hook(self._post(name))]

    def _pre(self, name: str):
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self.started[name] = self.clock.now()
        return hook

    def _post(self, name: str):
        def hook(module: torch.nn.Module, args: tuple, output: object) -> None:
            self.forward[name] += self.clock.now() - self.started[name]
            for tensor in output if isinstance(output, (tuple, list)) else (output,):
                if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
                    tensor.register_hook(lambda grad, name=name: self.events.append((self.clock.now(), name)))
        return hook

    def charge_backward(self, end: float) -> None:
        """Split the backward pass that ended at ``end`` among the layers, in the order autograd reached them."""
        for (t, name), (t_next, _) in zip(self.events, [*self.events[1:], (end, "")]):
            self.backward[name] += t_next - t
        self.events.clear()

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def time_net(net: Net, iterations: int = 50) -> Timing:
    """Time ``iterations`` forward+backward passes of ``net`` layer by layer (after one warm-up pass)."""
    device = net.device
    clock = _Clock(device)
    inputs = {name: torch.zeros(net.blob_shapes[name], device=device, dtype=net.dtype)
              for name in net.input_names}
    net(**inputs)
    _backward(net)   # warm-up (Caffe logs the initial loss here)
    net.zero_grad(set_to_none=True)
    hooks = _Hooks(net, clock)
    forward_total = backward_total = 0.0
    begin = time.perf_counter()
    try:
        for it in range(iterations):
            t0 = clock.now()
            net(**inputs)
            t1 = clock.now()
            _backward(net)
            t2 = clock.now()
            hooks.charge_backward(t2)
            net.zero_grad(set_to_none=True)
            forward_total += t1 - t0
            backward_total += t2 - t1
            log.info("Iteration: %d forward-backward time: %.4f ms.", it + 1, (t2 - t0) * 1e3)
    finally:
        hooks.remove()
    scale = 1e3 / max(iterations, 1)
    return Timing(iterations, {k: v * scale for k, v in hooks.forward.items()},
                  {k: v * scale for k, v in hooks.backward.items()}, forward_total * scale, backward_total * scale,
                  (time.perf_counter() - begin) * 1e3)
