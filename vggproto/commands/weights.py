"""``vggproto make-official-like``: a caffemodel with the layout of the released VGG-16/19 weights, seeded random
values (the test and benchmark stand-in for the real files; see :mod:`vggproto.weights.official_like`)."""
from __future__ import annotations

import click

from vggproto.commands.options import force_option


@click.command("make-official-like")
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--depth", required=True, type=click.Choice(["16", "19"]), help="VGG-16 or VGG-19.")
@click.option("--seed", type=int, metavar="N", default=0, show_default=True, help="Seed of the random weights.")
@click.option("--v2", is_flag=True, help="Write Caffe's V2 re-save of the same file (upgrade_net_proto_binary).")
@click.option("--width-divisor", type=int, metavar="D", default=1, show_default=True,
              help="Divide every width (conv channels, fc6/fc7 outputs) by D, a divisor of 64 (small test files).")
@force_option
def official_like_command(out: str, depth: str, seed: int, v2: bool, width_divisor: int, force: bool) -> None:
    """Write OUT with exactly the layout (and, at full width, the byte size) of the official VGG caffemodels."""
    from vggproto.weights.official_like import write_official_like
    size = write_official_like(out, int(depth), seed=seed, v2=v2, width_divisor=width_divisor, force=force)
    click.echo(f"wrote {out}: {size} bytes ({'V2' if v2 else 'V1'}, VGG-{depth}, width/{width_divisor}, "
               f"seed {seed})")


commands = [official_like_command]
