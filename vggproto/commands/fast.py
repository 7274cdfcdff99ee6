"""``vggproto time-inference``: forward-only timing of a net prepared by ``vggproto.fast.optimize_for_inference``.

``vggproto time`` mirrors ``caffe time`` (forward + backward, layer by layer, exact path); this command answers the
deployment question instead: how fast does the net run for inference with the speed options on.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vggproto.commands.engine_option import engine_option
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
@engine_option
@click.option("--json", "as_json", is_flag=True, help='Print a last line {"engine", "batch", "threads", "ms"} '
              "(ms: the median per batch).")
def time_inference_command(model: str, weights: str | None, batch: int, iterations: int, gpus: Devices,
                           winograd: bool | None, channels_last: bool, autocast: str | None,
                           compile_: bool, engine: str, as_json: bool) -> None:
    """Median inference forward time of MODEL (TEST phase, random inputs) on an engine; the speed options
    (--winograd, --channels-last, --autocast, --compile) are the torch engine's, and with them auto means torch."""
    from vggproto.engine.bench import json_line
    torch_options = winograd or channels_last or autocast or compile_
    if engine in ("onnxruntime", "ncnn") and (torch_options or gpus.device != "cpu"):
        raise click.UsageError(f"--engine {engine} runs on the CPU without the torch speed options")
    if engine == "torch" or torch_options or gpus.device != "cpu":
        import torch

        from vggproto.fast.bench import time_inference
        timing = time_inference(model, weights, batch=batch, iterations=iterations, device=gpus.device,
                                winograd=winograd, channels_last=channels_last, autocast=autocast, compile=compile_)
        line = json_line("torch", batch, torch.get_num_threads(), timing.times)
    else:
        from vggproto.engine.bench import time_engine
        timing = time_engine(model, weights, engine=engine, batch=batch, iterations=iterations)
        line = json_line(timing.engine, batch, timing.threads, timing.times)
    click.echo(timing.report())
    if as_json:
        click.echo(line)


commands = [time_inference_command]
