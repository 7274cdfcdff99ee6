"""Net commands: ``time`` (Caffe's ``caffe time``, also registered under that spelling: per-layer forward/backward
benchmark)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vggproto.commands.gflags import CaffeCommand
from vggproto.commands.options import dialect_option, gpus_option, level_option, stage_option
from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    from vggproto.net.devices import Devices


@click.command("time", cls=CaffeCommand)
@click.argument("model_arg", metavar="MODEL", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(exists=True, dir_okay=False), help="The net (Caffe's -model); or MODEL.")
@click.option("--iterations", default=50, show_default=True, type=click.IntRange(min=1),
              help="Forward+backward passes to average over.")
@gpus_option("--gpu", "--gpus", help="CUDA device index (default: CPU).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TRAIN", show_default=True,
              help="Phase the net is built for (Caffe's default is TRAIN).")
@level_option
@stage_option
@click.option("--weights", default=None, help="Caffemodel(s) to load first (comma-separated).")
@dialect_option
def time_command(model_arg: str | None, model: str | None, iterations: int, gpus: Devices, phase: str,
                 level: int, stage: tuple[str, ...], weights: str | None, dialect: str | None) -> None:
    """Benchmark MODEL layer by layer: average forward and backward time per layer, like ``caffe time``."""
    if not (model or model_arg) or (model and model_arg and model != model_arg):
        raise VGGProtoError("time needs one net: vggproto time MODEL (or --model MODEL)")
    from vggproto.net.interpreter import Net
    from vggproto.net.timing import time_net
    net = Net(model or model_arg, weights, phase=phase, stages=stage, level=level, dialect=dialect).to(gpus.device)
    click.echo("*** Benchmark begins ***")
    click.echo(f"Testing for {iterations} iterations.")
    click.echo(time_net(net, iterations).report())


commands = [time_command]
