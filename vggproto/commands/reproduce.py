"""``vggproto reproduce``: the paper's Sect. 4 protocol (Tables 3-6) as one resumable plan of vggproto commands."""
from __future__ import annotations

import logging
import os
from typing import Any

import click

from vggproto.commands.options import IntList, MeanValue, NameList
from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import CONFIGS


def _paths(values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        if not os.path.exists(value):
            raise VGGProtoError(f"no such file or folder: {value}")
    return tuple(os.path.abspath(v) for v in values)


def _split_sources(data: tuple[str, ...], lists: tuple[str, ...]) -> dict[str, Any]:
    """``--data TRAIN_DB,VAL_DB`` and ``--list [TRAIN.txt,]VAL.txt`` -> the Options fields."""
    if data and len(data) != 2:
        raise click.UsageError("--data takes TRAIN_DB,VAL_DB")
    if len(lists) not in (1, 2) or (len(lists) == 1 and not data):
        raise click.UsageError("--list takes TRAIN.txt,VAL.txt (or VAL.txt alone with --data TRAIN_DB,VAL_DB): the "
                               "evaluations read the validation images")
    lists = _paths(lists)
    return {"data": _paths(data) if data else None, "train_list": lists[0] if len(lists) == 2 else None,
            "val_list": lists[-1]}


def _gpus(value: str | None) -> str | None:
    if value:
        from vggproto.net.devices import parse_devices
        try:
            parse_devices(value, "--gpus")
        except VGGProtoError as exc:
            raise click.UsageError(str(exc)) from None
    return value or None


@click.command("reproduce")
@click.option("--list", "lists", type=NameList(), required=True, metavar="[TRAIN.txt,]VAL.txt",
              help="TRAIN.txt,VAL.txt: Caffe lists '<path> <label>' "
              "(converted to LMDBs by the plan), or VAL.txt alone with --data; the evaluations read VAL's images.")
@click.option("--root", default="", help="Folder the lists' paths are relative to [the current folder].")
@click.option("--data", type=NameList(), default="", metavar="TRAIN_DB,VAL_DB",
              help="LMDBs to train on (and test during "
              "training) instead of converting the lists.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder of the plan, its outputs "
              "and the results (rerun with the same DIR to continue).")
@click.option("--tables", type=IntList(), default="3,4,5,6", show_default=True, help="Which of Tables 3-6.")
@click.option("--configs", type=NameList(), default=",".join(CONFIGS), show_default=True, metavar="CFG,...",
              help="Table 1 configurations (A is trained whenever B-E are: they start from it).")
@click.option("--width-divisor", type=int, default=1, show_default=True, help="Divide every width by N.")
@click.option("--crop", type=int, default=224, show_default=True,
              help="Crop size; the paper's pixels are mapped by crop/224 (e.g. 28: S=256 -> 32, 512 -> 64).")
@click.option("--scales", type=IntList(), default="256,384,512", show_default=True,
              help="S1,S2,SMAX in the paper's pixels: fixed S1 and S2, jittered [S1;SMAX].")
@click.option("--seeds", type=int, default=1, show_default=True, help="Train and evaluate everything K times "
              "(solver random_seed 1..K); tables show mean and spread.")
@click.option("--gpus", default=None, help="Training devices for every train step ('0,1', 'all', 'cpu:N'); "
              "evaluation uses the first GPU.")
@click.option("--iterations", type=int, default=None, help="max_iter of training from scratch [the paper's 370K].")
@click.option("--chain-iterations", type=int, default=None, help="max_iter of the S=384 and jittered stages "
              "[--iterations, or the paper's 150K].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Training batch (one per iteration).")
@click.option("--test-batch-size", type=int, default=50, show_default=True)
@click.option("--test-iter", type=int, default=None, help="Solver test_iter [50,000 images].")
@click.option("--test-interval", type=int, default=None, help="Solver test_interval [one epoch].")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--init", type=click.Choice(["gaussian", "xavier", "msra"]), default="gaussian", show_default=True,
              help="Random init of A and of the layers B-E do not take from A (gaussian: std 0.01, see README).")
@click.option("--mean-value", type=MeanValue(), default=None, help="B,G,R mean [the ImageNet mean].")
@click.option("--input-scale", type=float, default=1.0, show_default=True)
@click.option("--plateau-patience", type=int, default=0, help="The paper's schedule: lr / 10 after N tests without "
              "a better accuracy, three times [0: the generated solvers' steps].")
@click.option("--grid", type=int, default=5, show_default=True, help="Multi-crop grid g (g x g crops and flips "
              "per scale).")
@click.option("--eval-limit", type=int, default=None, help="Evaluate the first N validation images only.")
@click.option("--eval-workers", type=int, default=2, show_default=True, help="Image decoding processes.")
@click.option("--encoded", is_flag=True, help="Convert the lists as encoded images (ImageNet's JPEGs).")
def reproduce_command(lists: tuple[str, ...], root: str, data: tuple[str, ...], out: str, tables: tuple[int, ...],
                      configs: tuple[str, ...], scales: tuple[int, ...], gpus: str | None, **options: Any) -> None:
    """Run the paper's protocol (Sect. 4): train A, A-LRN, B-E (from A), the S chain of C-E; evaluate for
    Tables 3-6; write DIR/results.json, DIR/TABLES.md (the paper's errors beside this run's), DIR/tables.png and
    the claims' verdicts.

    Every step is a vggproto command (DIR/plan.sh lists them); a rerun skips the steps whose outputs are complete
    and whose inputs are unchanged, so Ctrl-C and rerun continues.  On ImageNet with GPUs:
    `vggproto reproduce --list train.txt,val.txt --root /data/ilsvrc12/ --encoded --out paper --gpus all`.
    """
    from vggproto.caffe.glog import GlogFormatter
    from vggproto.reproduce.plan import Options
    from vggproto.reproduce.run import reproduce
    if len(scales) != 3:
        raise click.UsageError("--scales takes S1,S2,SMAX (three numbers, the paper's pixels)")
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:
            handler.setFormatter(GlogFormatter())
    run = Options(out=os.path.abspath(out), root=os.path.abspath(root or "."), tables=tables,
                  configs=configs, scales=scales, gpus=_gpus(gpus), **_split_sources(data, lists), **options)
    _, verdicts = reproduce(run)
    for claim in verdicts:
        click.echo(f"claim {claim['number']}: {claim['verdict']:<12} {claim['claim']}")


commands = [reproduce_command]
