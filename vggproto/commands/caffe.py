"""Format commands: ``upgrade`` (Caffe's upgrade_net_proto_text/_binary, upgrade_solver_proto_text) and ``info``."""
from __future__ import annotations

from pathlib import Path

import click

from vggproto.data.options import DataOptions
from vggproto.errors import PrototxtError, VGGProtoError


def _is_solver(path: str) -> bool:
    """A text file whose top-level fields are solver fields (``base_lr``, ``net``, ...) is a solver."""
    from vggproto.caffe.prototxt import load_source, sniff_binary
    content, _ = load_source(path)
    if sniff_binary(content, path):
        return False
    head = content.decode("utf-8", errors="replace")
    return not any(tok in head for tok in ("layer {", "layers {", "layer{", "layers{", "input:")) and any(
        tok in head for tok in ("base_lr", "solver_type", "lr_policy", "max_iter", "train_net", "net:"))


@click.command("upgrade")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("dst", type=click.Path(dir_okay=False))
@click.option("--kind", type=click.Choice(["auto", "net", "solver"]), default="auto", show_default=True,
              help="What SRC holds; auto looks at the file.")
def upgrade_command(src: str, dst: str, kind: str) -> None:
    """Upgrade a Caffe net (text or binary, V0/V1 -> V2) or solver to the current format.

    Like Caffe's upgrade_net_proto_text, upgrade_net_proto_binary and upgrade_solver_proto_text. The output's
    format (text or binary) follows DST's extension.  Binary caffemodels keep their blobs (and legacy dims).
    """
    from vggproto.caffe.prototxt import read_net, read_solver, write_net, write_solver
    if kind == "solver" or (kind == "auto" and _is_solver(src)):
        write_solver(read_solver(src, resolve_prefix=False), dst)
        click.echo(f"Wrote upgraded solver to {dst}")
        return
    if Path(src).suffix.lower() == Path(dst).suffix.lower() == ".caffemodel":  # stream blobs, no protobuf decode
        from vggproto.weights.caffemodel import upgrade_caffemodel
        net = upgrade_caffemodel(src, dst)
    else:
        net = read_net(src)
        write_net(net, dst)
    click.echo(f"Wrote upgraded net '{net.name}' ({len(net.layer)} layers) to {dst}")


@click.command("info")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--shapes/--no-shapes", default=True, show_default=True,
              help="For nets: build the net to compute every top shape and parameter count (imports torch).")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TEST", show_default=True)
def info_command(path: str, shapes: bool, phase: str) -> None:
    """Describe a net (prototxt) or a weights file (caffemodel / Caffe HDF5): layers, tops, shapes, parameters."""
    suffix = Path(path).suffix.lower()
    if suffix in (".caffemodel", ".h5", ".hdf5") or _looks_binary(path):
        _describe_weights(path)
        return
    from vggproto.caffe.prototxt import read_net
    net = read_net(path)
    if shapes:
        try:
            from vggproto.net.interpreter import Net
            from vggproto.net.table import shape_table
            click.echo(shape_table(Net(path, phase=phase, options=DataOptions(dry_run=True))))
            return
        except VGGProtoError:
            raise
        except ImportError as exc:  # the interpreter is optional for this command
            click.echo(f"(shapes unavailable: {exc})", err=True)
    click.echo(f"net '{net.name}': {len(net.layer)} layers")
    for layer in net.layer:
        click.echo(f"  {layer.name:<20} {layer.type:<18} {','.join(layer.bottom) or '-':<20} -> "
                   f"{','.join(layer.top)}")


def _looks_binary(path: str) -> bool:
    from vggproto.caffe.prototxt import load_source, sniff_binary
    try:
        content, _ = load_source(path)
        return sniff_binary(content, path)
    except PrototxtError:
        return True  # let the weights reader produce the precise message


def _describe_weights(path: str) -> None:
    from vggproto.weights.caffemodel import read_caffemodel
    net, weights = read_caffemodel(path)
    types = {layer.name: layer.type for layer in net.layer}
    total = 0
    click.echo(f"weights '{path}' (net '{net.name}'): {len(net.layer)} layers, {len(weights)} with blobs")
    for name, blobs in weights.items():
        count = sum(int(b.size) for b in blobs)
        total += count
        shapes = "  ".join("x".join(str(d) for d in b.shape) for b in blobs)
        click.echo(f"  {name:<20} {types.get(name, '?'):<14} {shapes:<40} {count:>12,d}")
    click.echo(f"Total parameters: {total:,d}")


commands = [upgrade_command, info_command]
