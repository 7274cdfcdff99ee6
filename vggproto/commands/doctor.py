"""``vggproto doctor``: the environment in one report (versions, CUDA devices, NCCL, graphviz) for bug reports;
``device_query`` (also ``caffe device_query``): the devices part alone, as Caffe's tool."""
from __future__ import annotations

import click

from vggproto.commands.gflags import CaffeCommand


@click.command("doctor")
def doctor_command() -> None:
    """Print the versions of Python and the libraries vggproto uses, the CUDA devices, NCCL and graphviz."""
    from vggproto.net.doctor import doctor_report
    click.echo("\n".join(doctor_report()))


@click.command("device_query", cls=CaffeCommand)
@click.option("--gpu", default=None, help="GPU ids to describe, '0,1' or 'all' (default: all).")
def device_query(gpu: str | None) -> None:
    """Show the CUDA devices (memory, compute capability) and NCCL, as `caffe device_query`."""
    from vggproto.errors import VGGProtoError
    from vggproto.net.devices import parse_devices  # the one --gpu parser: unknown ids are one line
    from vggproto.net.doctor import device_lines
    try:   # a bad -gpu value is a usage error, as for every option parsed by commands/options.py
        ids = None if gpu in (None, "") else list(parse_devices(gpu, flag="-gpu").ids)
    except VGGProtoError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("\n".join(device_lines(ids)))


commands = [doctor_command, device_query]
