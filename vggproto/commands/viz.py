"""Picture commands: ``draw`` (a net as a graphviz graph) and ``plot`` (training curves from a log)."""
from __future__ import annotations

import click

from vggproto.commands.options import dialect_option, force_option


@click.command("draw")
@click.argument("net", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--rankdir", type=click.Choice(["auto", "LR", "TB", "BT", "RL"]), default="auto", show_default=True,
              help="Direction of the graph (Caffe's draw_net --rankdir); auto: TB for nets of over 12 layers, "
                   "else LR.")
@click.option("--phase", type=click.Choice(["ALL", "TRAIN", "TEST"], case_sensitive=False), default="ALL",
              show_default=True, help="Draw only the layers of this phase (NetStateRule filtering).")
@click.option("--stage", "stages", multiple=True, metavar="S", help="A NetState stage (repeatable).")
@click.option("--level", type=int, default=0, show_default=True, help="The NetState level.")
@click.option("--display-lrm", "--display_lrm", "display_lrm", is_flag=True,
              help="Show the lr_mult of Convolution/Deconvolution/InnerProduct layers (Caffe's --display_lrm).")
@click.option("--no-shapes", is_flag=True, help="Do not build the net: no blob shapes or parameter counts.")
@click.option("--no-clusters", is_flag=True, help="Do not group VGG blocks (conv<b>_*, fc<n>) into boxes.")
@dialect_option
@force_option
def draw_command(net: str, out: str, rankdir: str, phase: str, stages: tuple[str, ...], level: int,
                 display_lrm: bool, no_shapes: bool, no_clusters: bool, dialect: str | None, force: bool) -> None:
    """Draw NET (prototxt, V1 or V2) into OUT (.svg, .png, .pdf, or .dot which needs no graphviz binary).

    Caffe's draw_net colours and labels, plus blob shapes, parameter counts and VGG block clusters.
    """
    from vggproto.viz.draw import DrawOptions, draw_net
    options = DrawOptions(rankdir=rankdir, phase=phase.upper(), stages=stages, level=level,
                          display_lrm=display_lrm, shapes=not no_shapes, clusters=not no_clusters, dialect=dialect)
    click.echo(f"Drawing net to {draw_net(net, out, options, force)}")


@click.command("plot")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="curves.png", show_default=True, type=click.Path(dir_okay=False),
              help="Image to write (.png, .svg or .pdf).")
@click.option("--smooth", type=int, default=0, show_default=True,
              help="Moving-average window for the loss when the log's loss is unsmoothed (0 = automatic).")
@force_option
def plot_command(log: str, out: str, smooth: int, force: bool) -> None:
    """Plot training loss (raw and smoothed), test accuracy and learning rate against iteration.

    LOG is a Caffe-format training log (from 'caffe train' or 'vggproto train') or vggproto's CSV log.
    """
    from vggproto.viz.plot import plot_file
    parsed = plot_file(log, out, smooth=smooth, force=force)
    tests = ", ".join(parsed.test) or "none"
    click.echo(f"Plotted {len(parsed.loss) or len(parsed.raw_loss)} loss points up to iteration "
               f"{parsed.last_iter} (test outputs: {tests}) to {out}")


commands = [draw_command, plot_command]
