"""Caffe's own command lines, so a Caffe user's script changes one word (``caffe`` -> ``vggproto caffe``).

``vggproto caffe train|test|time|device_query`` take exactly the flags of tools/caffe.cpp, and
``convert_imageset``, ``compute_image_mean``, ``upgrade_net_proto_text``, ``upgrade_net_proto_binary``,
``upgrade_solver_proto_text`` and ``device_query`` the flags and arguments of Caffe's tools of those names, in
gflags' spellings (``-flag value``, ``-flag=value``, ``--flag value``, underscores or dashes; see
:class:`vggproto.commands.options.CaffeCommand`).  Each calls the library function the vggproto command calls.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from vggproto.commands.options import CaffeCommand, NameList, force_option, gpus_option
from vggproto.commands.train import test as score_command
from vggproto.errors import SolverError

if TYPE_CHECKING:
    from vggproto.net.devices import Devices

_EFFECTS = click.Choice(["stop", "snapshot", "none"])


@click.group("caffe")
def caffe_group() -> None:
    """Caffe's `caffe` tool: train, test, time and device_query with its flags (-solver, -gpu, -weights, ...)."""


@caffe_group.command("train", cls=CaffeCommand)
@click.option("--solver", required=True, help="The solver definition protocol buffer text file.")
@gpus_option("--gpu", one_device=False, help="GPU ids '0,1' or 'all' (default: the solver's solver_mode).")
@click.option("--weights", type=NameList(), default="", help="Pretrained weights to finetune from (a,b).")
@click.option("--snapshot", help="A .solverstate to resume training from.")
@click.option("--sigint-effect", "sigint", default="stop", type=_EFFECTS, show_default=True)
@click.option("--sighup-effect", "sighup", default="snapshot", type=_EFFECTS, show_default=True)
@click.option("--level", type=int, default=0, show_default=True, help="Sets train_state.level, as Caffe.")
@click.option("--stage", type=NameList(), default="", help="Network stages, comma-separated.")
def caffe_train(solver: str, gpus: Devices | None, weights: tuple[str, ...], snapshot: str | None, sigint: str,
                sighup: str, level: int, stage: tuple[str, ...]) -> None:
    """Train (or finetune) a model, as `caffe train`."""
    if snapshot and weights:   # Caffe: CHECK(!FLAGS_snapshot.size() || !FLAGS_weights.size())
        raise SolverError("give -snapshot to resume training or -weights to finetune, but not both")
    from vggproto.train.run import train, use_glog_format
    from vggproto.train.solver import TrainOptions
    use_glog_format()
    options = TrainOptions(weights=weights, level=level, stages=stage, sigint_effect=sigint, sighup_effect=sighup,
                           glog=True)
    train(solver, options, snapshot=snapshot, gpus=gpus)


# Caffe: tools/caffe.cpp test — the same flags as `vggproto test`, which already reads Caffe's spellings
caffe_group.add_command(score_command, name="test")


@caffe_group.command("time", cls=CaffeCommand)
@click.option("--model", required=True, type=click.Path(exists=True, dir_okay=False), help="The net to time.")
@click.option("--iterations", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--weights", default=None, help="Weights to load first (comma-separated).")
@gpus_option("--gpu", help="Run on this GPU id. Default: CPU.")
@click.option("--phase", type=click.Choice(["TRAIN", "TEST"]), default="TRAIN", show_default=True)
@click.option("--level", type=int, default=0, show_default=True)
@click.option("--stage", type=NameList(), default="", help="Network stages, comma-separated.")
def caffe_time(model: str, iterations: int, weights: str | None, gpus: Devices, phase: str, level: int,
               stage: tuple[str, ...]) -> None:
    """Benchmark a model layer by layer, as `caffe time`."""
    from vggproto.net.interpreter import Net
    from vggproto.net.timing import time_net
    net = Net(model, weights, phase=phase, stages=stage, level=level).to(gpus.device)
    click.echo("*** Benchmark begins ***")
    click.echo(f"Testing for {iterations} iterations.")
    click.echo(time_net(net, iterations).report())


def _device_query(gpu: str | None) -> None:
    """Print the CUDA devices (``gpu``: '0,1' or 'all'; default all) as ``vggproto doctor`` does."""
    from vggproto.errors import VGGProtoError
    from vggproto.net.devices import parse_devices  # the one --gpu parser: unknown ids are one line
    from vggproto.net.doctor import device_lines
    try:   # a bad -gpu value is a usage error, as for every option parsed by commands/options.py
        ids = None if gpu in (None, "") else list(parse_devices(gpu, flag="-gpu").ids)
    except VGGProtoError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo("\n".join(device_lines(ids)))


@caffe_group.command("device_query", cls=CaffeCommand)
@click.option("--gpu", default=None, help="GPU ids to describe, '0,1' or 'all' (default: all).")
def caffe_device_query(gpu: str | None) -> None:
    """Show the CUDA devices (memory, compute capability) and NCCL, as `caffe device_query`."""
    _device_query(gpu)


@click.command("device_query", cls=CaffeCommand)
@click.option("--gpu", default=None, help="GPU ids to describe, '0,1' or 'all' (default: all).")
def device_query(gpu: str | None) -> None:
    """Show the CUDA devices (memory, compute capability) and NCCL, as `caffe device_query`."""
    _device_query(gpu)


@click.command("convert_imageset", cls=CaffeCommand)
@click.argument("root", metavar="ROOTFOLDER/")
@click.argument("list_file", metavar="LISTFILE", type=click.Path(dir_okay=False))
@click.argument("db", metavar="DB_NAME", type=click.Path())
@click.option("--gray", is_flag=True, help="Read images as grayscale.")
@click.option("--shuffle", is_flag=True, help="Shuffle the order of images and their labels.")
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True)
@click.option("--resize-width", type=int, default=0, show_default=True)
@click.option("--resize-height", type=int, default=0, show_default=True)
@click.option("--check-size", is_flag=True, help="Check that all the datum have the same size.")
@click.option("--encoded", is_flag=True, help="Store the encoded image in the datum.")
@click.option("--encode-type", default="", help="Re-encode images as this type ('png', 'jpg', ...).")
@force_option
def convert_imageset_tool(root: str, list_file: str, db: str, gray: bool, shuffle: bool, backend: str,
                          resize_width: int, resize_height: int, check_size: bool, encoded: bool,
                          encode_type: str, force: bool) -> None:
    """Caffe's convert_imageset: the images of LISTFILE ('<path> <label>' lines) into a new database."""
    from vggproto.data.convert import convert_imageset
    convert_imageset(root, list_file, db, resize_height, resize_width, shuffle, gray, encoded or bool(encode_type),
                     encode_type, check_size, backend=backend, force=force)


@click.command("compute_image_mean", cls=CaffeCommand)
@click.argument("db", metavar="INPUT_DB", type=click.Path())
@click.argument("out", metavar="[OUTPUT_FILE]", required=False, type=click.Path(dir_okay=False))
@click.option("--backend", type=click.Choice(["lmdb", "leveldb"]), default="lmdb", show_default=True)
@force_option
def compute_image_mean_tool(db: str, out: str | None, backend: str, force: bool) -> None:
    """Caffe's compute_image_mean: the mean image of INPUT_DB into OUTPUT_FILE (.binaryproto), channel means."""
    from vggproto.data.convert import compute_mean_file
    click.echo("\n".join(compute_mean_file(db, out, backend, force)))


def _upgrade_tool(name: str, kind: str, what: str) -> click.Command:
    """One of Caffe's upgrade_* tools: IN OUT, with ``kind`` fixed."""
    @click.command(name, cls=CaffeCommand, help=f"Caffe's {name}: upgrade {what} IN into OUT.")
    @click.argument("src", metavar="IN", type=click.Path(exists=True, dir_okay=False))
    @click.argument("dst", metavar="OUT", type=click.Path(dir_okay=False))
    @force_option
    def command(src: str, dst: str, force: bool) -> None:
        from vggproto.weights.files import upgrade_file
        click.echo("\n".join(upgrade_file(src, dst, kind, force=force)))  # type: ignore[arg-type]
    return command


commands = [caffe_group, convert_imageset_tool, compute_image_mean_tool, device_query,
            _upgrade_tool("upgrade_net_proto_text", "net", "a V0/V1 net prototxt (text)"),
            _upgrade_tool("upgrade_net_proto_binary", "net", "a V0/V1 binary net (caffemodel)"),
            _upgrade_tool("upgrade_solver_proto_text", "solver", "a solver prototxt (solver_type -> type)")]
