"""Net commands: ``time`` (Caffe's ``caffe time``: per-layer forward/backward benchmark)."""
from __future__ import annotations

import click


@click.command("time")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--iterations", default=50, show_default=True, type=click.IntRange(min=1),
              help="Forward+backward passes to average over.")
@click.option("--gpu", default=None, type=int, help="CUDA device index (default: CPU).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TRAIN", show_default=True,
              help="Phase the net is built for (Caffe's default is TRAIN).")
@click.option("--level", default=0, show_default=True, help="Net state level.")
@click.option("--stage", default="", help="Comma-separated net state stages.")
@click.option("--weights", default=None, help="Caffemodel(s) to load first (comma-separated).")
def time_command(model: str, iterations: int, gpu: int | None, phase: str, level: int, stage: str,
                 weights: str | None) -> None:
    """Benchmark MODEL layer by layer: average forward and backward time per layer, like ``caffe time``."""
    import torch

    from vggproto.errors import VGGProtoError
    from vggproto.net.interpreter import Net
    from vggproto.net.timing import time_net
    if gpu is not None and not (torch.cuda.is_available() and gpu < torch.cuda.device_count()):
        raise VGGProtoError(f"--gpu {gpu}: no such CUDA device (available: {torch.cuda.device_count()})")
    device = torch.device(f"cuda:{gpu}" if gpu is not None else "cpu")
    stages = [s for s in stage.split(",") if s]
    net = Net(model, weights, phase=phase, stages=stages, level=level).to(device)
    click.echo("*** Benchmark begins ***")
    click.echo(f"Testing for {iterations} iterations.")
    click.echo(time_net(net, iterations).report())


commands = [time_command]
