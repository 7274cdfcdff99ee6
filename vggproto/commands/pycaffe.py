"""``vggproto install-caffe-shim``: make ``import caffe`` run vggproto's pycaffe (issue [7/7])."""
from __future__ import annotations

import click


@click.command("install-caffe-shim")
@click.option("--target", type=click.Path(file_okay=False), default=None,
              help="Folder to write caffe/ into [default: this Python's site-packages].")
def install_caffe_shim_command(target: str | None) -> None:
    """Install a top-level `caffe` package that is vggproto.pycaffe, so unmodified pycaffe scripts run.

    Refuses when a real Caffe (or another `caffe` module) is importable: it is never shadowed silently.
    """
    from vggproto.pycaffe.shim import install_shim
    click.echo(f"installed the caffe shim at {install_shim(target)}")


commands = [install_caffe_shim_command]
