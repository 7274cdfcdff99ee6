"""Forward-only timing of a net prepared by :func:`vggproto.fast.optimize_for_inference` (``vggproto
time-inference``).

``vggproto time`` mirrors ``caffe time`` (forward + backward, layer by layer, the exact path,
:mod:`vggproto.net.timing`); this answers the deployment question instead: how fast the net runs for inference
with the speed options on.  Inputs are seeded random batches; two untimed warm-up passes absorb one-off costs
(cuDNN autotuning, ``torch.compile``), and CUDA is synchronised around each timed pass.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from vggproto.errors import VGGProtoError
from vggproto.fast.optimize import WinogradConv, optimize_for_inference

WARMUP = 2


@dataclass(frozen=True)
class InferenceTiming:
    """Seconds per timed forward pass, and the layers that took the Winograd path."""

    times: list[float]
    batch: int
    winograd_layers: list[str]

    def report(self) -> str:
        """The command's two lines (mean in the words of ``caffe time``'s "Average Forward pass")."""
        median = statistics.median(self.times)
        return (f"Winograd layers: {', '.join(self.winograd_layers) or 'none'}\n"
                f"Average Forward pass: {statistics.mean(self.times) * 1e3:.4f} ms (median {median * 1e3:.4f} ms, "
                f"batch {self.batch}, {self.batch / median:.1f} img/s).")


def time_inference(model: str, weights: str | None = None, *, batch: int = 1, iterations: int = 10,
                   device: str = "cpu", winograd: bool | None = None, channels_last: bool = False,
                   autocast: str | None = None, compile: bool = False) -> InferenceTiming:
    """Time ``iterations`` forward passes of ``model``'s TEST net on ``device`` with the given speed options."""
    from vggproto.net.interpreter import Net
    net = Net(model, weights, phase="TEST").to(device)
    if not net.input_names:
        raise VGGProtoError(f"{model}: the net has no Input/MemoryData layer to feed")
    fast = optimize_for_inference(net, winograd=winograd, channels_last=channels_last, autocast=autocast,
                                  compile=compile)
    gen = torch.Generator().manual_seed(0)
    inputs = {name: torch.randn((batch, *net.blob_shapes[name][1:]), generator=gen).to(device)
              for name in net.input_names}
    cuda = torch.device(device).type == "cuda"
    times = []
    for i in range(iterations + WARMUP):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fast(**inputs)
        if cuda:
            torch.cuda.synchronize(device)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    winograd_layers = [n for n, layer in net.layer_dict.items()
                       if isinstance(getattr(layer, "accelerated", None), WinogradConv)]
    return InferenceTiming(times, batch, winograd_layers)
