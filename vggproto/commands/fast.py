"""``vggproto time-inference``: forward-only timing of a net prepared by ``vggproto.fast.optimize_for_inference``.

``vggproto time`` mirrors ``caffe time`` (forward + backward, layer by layer, exact path); this command answers the
deployment question instead: how fast does the net run for inference with the speed options on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vggproto.commands.options import gpus_option

if TYPE_CHECKING:
    from vggproto.net.devices import Devices


@click.command("time-inference")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--weights", default=None, help="Caffemodel(s) to load first (comma-separated).")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1), help="Images per forward.")
@click.option("--iterations", default=10, show_default=True, type=click.IntRange(min=1),
              help="Timed forward passes (after 2 warm-up passes).")
@gpus_option("--gpu", "--gpus", help="CUDA device index (default: CPU).")
@click.option("--winograd/--no-winograd", default=None,
              help="Winograd F(4x4,3x3) for wide stride-1 3x3 convolutions [default: on for CPU float32].")
@click.option("--channels-last", is_flag=True, help="NHWC memory layout.")
@click.option("--autocast", type=click.Choice(["bf16", "fp16"]), default=None, help="Autocast dtype.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the net.")
def time_inference_command(model: str, weights: str | None, batch: int, iterations: int, gpus: Devices,
                           winograd: bool | None, channels_last: bool, autocast: str | None,
                           compile_: bool) -> None:
    """Average inference forward time of MODEL (TEST phase, random inputs) with the chosen speed options."""
    from vggproto.fast.bench import time_inference
    timing = time_inference(model, weights, batch=batch, iterations=iterations, device=gpus.device, winograd=winograd,
                            channels_last=channels_last, autocast=autocast, compile=compile_)
    click.echo(timing.report())


commands = [time_inference_command]
