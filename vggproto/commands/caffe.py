"""Format commands: ``upgrade`` (also registered as Caffe's upgrade_net_proto_text/_binary and
upgrade_solver_proto_text, commands/caffe_tools.py) and ``info``."""
from __future__ import annotations

import click

from vggproto.commands.gflags import CaffeCommand
from vggproto.commands.options import dialect_option, force_option


@click.command("upgrade", cls=CaffeCommand)
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["auto", "net", "solver"]), default="auto", show_default=True,
              help="What SRC holds; auto looks at the file.")
@click.option("--to-bvlc", is_flag=True, help="Rewrite a fork net into BVLC fields where an exact equivalent "
              "exists (ceil_mode -> round_mode, ReLU6 -> Clip, ...); list the layers that have none.")
@dialect_option
@force_option
def upgrade_command(src: str, dst: str, kind: str, to_bvlc: bool, dialect: str | None,
                    force: bool) -> None:
    """Upgrade a Caffe net (text or binary, V0/V1 -> V2) or solver to the current format.

    Like Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text. The output's
    format (text or binary) follows DST's extension.  Binary caffemodels keep their blobs (and legacy dims).
    """
    from vggproto.weights.files import upgrade_file
    click.echo("\n".join(upgrade_file(src, dst, kind, dialect, to_bvlc, force)))  # type: ignore[arg-type]


@click.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--shapes/--no-shapes", default=True, show_default=True,
              help="For nets: build the net to compute every top shape and parameter count (imports torch).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TEST", show_default=True)
@dialect_option
def info_command(path: str, shapes: bool, phase: str, dialect: str | None) -> None:
    """Describe a net (prototxt) or a weights file (caffemodel / Caffe HDF5): layers, tops, shapes, parameters."""
    from vggproto.weights.files import describe_weights, is_weights_file
    if is_weights_file(path):
        click.echo(describe_weights(path))
        return
    from vggproto.net.table import describe_net
    click.echo(describe_net(path, phase, shapes, dialect))


commands = [upgrade_command, info_command]
