"""``vggproto time-inference``: forward-only timing of a net prepared by ``vggproto.fast.optimize_for_inference``.

``vggproto time`` mirrors ``caffe time`` (forward + backward, layer by layer, exact path); this command answers the
deployment question instead: how fast does the net run for inference with the speed options on.
"""
from __future__ import annotations

import click


@click.command("time-inference")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--weights", default=None, help="Caffemodel(s) to load first (comma-separated).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Images per forward.")
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed forward passes (after 2 warm-up passes).")
@click.option("--gpu", default=None, type=int, help="CUDA device index (default: CPU).")
@click.option("--winograd/--no-winograd", default=None,
              help="Winograd F(4x4,3x3) for wide stride-1 3x3 convolutions [default: on for CPU float32].")
@click.option("--channels-last", is_flag=True, help="NHWC memory layout.")
@click.option("--autocast", type=click.Choice(["bf16", "fp16"]), default=None, help="Autocast dtype.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the net.")
def time_inference_command(model: str, weights: str | None, batch: int, iterations: int, gpu: int | None,
                           winograd: bool | None, channels_last: bool, autocast: str | None,
                           compile_: bool) -> None:
    """Average inference forward time of MODEL (TEST phase, random inputs) with the chosen speed options."""
    import statistics
    import time

    import torch

    from vggproto.errors import VGGProtoError
    from vggproto.fast import optimize_for_inference
    from vggproto.fast.optimize import WinogradConv
    from vggproto.net.interpreter import Net
    if gpu is not None and not (torch.cuda.is_available() and gpu < torch.cuda.device_count()):
        raise VGGProtoError(f"--gpu {gpu}: no such CUDA device (available: {torch.cuda.device_count()})")
    device = torch.device(f"cuda:{gpu}" if gpu is not None else "cpu")
    net = Net(model, weights, phase="TEST").to(device)
    if not net.input_names:
        raise VGGProtoError(f"{model}: the net has no Input/MemoryData layer to feed")
    fast = optimize_for_inference(net, winograd=winograd, channels_last=channels_last, autocast=autocast,
                                  compile=compile_)
    gen = torch.Generator().manual_seed(0)
    inputs = {name: torch.randn((batch, *net.blob_shapes[name][1:]), generator=gen).to(device)
              for name in net.input_names}
    times = []
    for i in range(iterations + 2):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fast(**inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    winograd_layers = [n for n, layer in net.layer_dict.items()
                       if isinstance(getattr(layer, "accelerated", None), WinogradConv)]
    click.echo(f"Winograd layers: {', '.join(winograd_layers) or 'none'}")
    median = statistics.median(times)
    click.echo(f"Average Forward pass: {statistics.mean(times) * 1e3:.4f} ms (median {median * 1e3:.4f} ms, "
               f"batch {batch}, {batch / median:.1f} img/s).")


commands = [time_inference_command]
