"""``vggproto doctor``: the environment in one report (versions, CUDA devices, NCCL, graphviz) for bug reports."""
from __future__ import annotations

import click


@click.command("doctor")
def doctor_command() -> None:
    """Print the versions of Python and the libraries vggproto uses, the CUDA devices, NCCL and graphviz."""
    from vggproto.net.doctor import doctor_report
    click.echo("\n".join(doctor_report()))


commands = [doctor_command]
