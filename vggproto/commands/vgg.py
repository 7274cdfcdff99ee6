"""``vggproto generate``: write the Table 1 nets and their solvers as Caffe prototxt files."""
from __future__ import annotations

import logging
import time
from typing import Any

import click

from vggproto.commands.options import MeanValue, TrainScales, force_option
from vggproto.errors import VGGProtoError
from vggproto.vgg.configs import CONFIGS, SCALES

log = logging.getLogger("vggproto.vgg.generate")


@click.command("generate")
@click.option("--config", "config", required=True, type=click.Choice([*CONFIGS, "all"]),
              help="Table 1 column, or all six.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=".", show_default=True,
              help="Writes OUT_DIR/nets/<cfg>_{train_val,deploy,dense}.prototxt and OUT_DIR/solvers/<cfg>.prototxt.")
@click.option("--data", type=click.Choice(["lmdb", "imagedata", "hdf5"]), default="lmdb", show_default=True,
              help="Data layer type of the train_val net (hdf5: preprocessed crops, Caffe applies no transform).")
@click.option("--train-source", default="", help="TRAIN data source (default: data/ilsvrc12_train_lmdb etc.).")
@click.option("--val-source", default="", help="TEST data source (default: data/ilsvrc12_val_lmdb etc.).")
@click.option("--mean-value", type=MeanValue(), default=None,
              help="Mean pixel B,G,R subtracted from 0-255 images [default: 103.939,116.779,123.68].")
@click.option("--crop-size", type=int, default=224, show_default=True)
@click.option("--batch-size", type=int, default=256, show_default=True, help="TRAIN batch per iteration.")
@click.option("--test-batch-size", type=int, default=50, show_default=True)
@click.option("--global-batch", type=int, default=256, show_default=True,
              help="Images per SGD update; the solver's iter_size = global batch / batch size.")
@click.option("--num-classes", type=int, default=1000, show_default=True)
@click.option("--width-divisor", type=int, default=1, show_default=True,
              help="Divide every conv/FC width (not the classes) by N, for small CPU runs.")
@click.option("--init", type=click.Choice(["gaussian", "xavier", "msra"]), default="gaussian", show_default=True,
              help="Weight filler: gaussian std 0.01 (the paper's random init), or Caffe's xavier/msra (FAN_IN). "
                   "msra expects unit-scale inputs: use it with --input-scale (e.g. 0.0167 for 0-255 pixels), "
                   "else the first layers' activations are ~60x too large and training diverges.")
@click.option("--scale", type=TrainScales(), default="256", show_default=True,
              help=f"Training scale S (smallest side), fixed or jittered per image: S or SMIN-SMAX "
                   f"(the paper's: {', '.join(SCALES[:3])}; 'none': images already at the crop size).")
@click.option("--chain-scales", type=TrainScales(several=True), default=None,
              help="The S of the chain's S=384 and S=[256;512] stages on other images, e.g. 48,32-64 for 28-pixel "
                   "crops [default: 384,256-512]; the files keep the paper's stage names.")
@click.option("--test-scale", type=int, default=0, help="Test scale Q [default: S, or (Smin+Smax)/2 if jittered].")
@click.option("--input-scale", type=float, default=1.0, show_default=True,
              help="transform_param.scale: multiply mean-subtracted pixels by this (deploy-time tools take the "
                   "same value as --input-scale).")
@click.option("--task", type=click.Choice(["classification", "localization"]), default="classification",
              show_default=True, help="localization (Appendix A): the last FC predicts a box, Euclidean loss; writes "
              "nets/<cfg>_loc_<regression>[_fc]_*.prototxt.")
@click.option("--regression", type=click.Choice(["scr", "pcr"]), default="scr", show_default=True,
              help="Localisation: single-class (4 outputs) or per-class (4 x classes) box regression.")
@click.option("--finetune", type=click.Choice(["all", "fc"]), default="all", show_default=True,
              help="Localisation: fine-tune all layers, or only the FC layers (lr_mult 0 on the conv layers).")
@click.option("--max-iter", type=int, default=None,
              help="Solver max_iter for a short run (the lr steps scale with it) [default: the paper's 74 epochs].")
@click.option("--test-iter", type=int, default=None, help="Solver test_iter [default: the 50,000 validation images].")
@click.option("--test-interval", type=int, default=None, help="Solver test_interval [default: one epoch].")
@click.option("--snapshot", type=int, default=None, help="Solver snapshot interval [default: 10,000].")
@click.option("--chain-max-iter", type=int, default=None,
              help="max_iter of the chain's S=384 and S=[256;512] stages [default: --max-iter, or the paper's].")
@click.option("--random-seed", type=int, default=None, help="Solver random_seed (initialisation, data order, "
              "augmentation) [default: 1].")
@click.option("--chain/--no-chain", default=None,
              help="Also write the paper's S=384 and S=[256;512] stages [default: for C, D, E at S=256].")
@force_option
def generate_command(config: str, out_dir: str, mean_value: tuple[float, ...] | None, chain: bool | None,
                     chain_scales: tuple[str, ...] | None, force: bool, **options: Any) -> None:
    """Write the VGG net(s) of Table 1 (train_val, deploy, dense) and solvers as Caffe prototxt.

    Solvers name their nets relative to OUT_DIR (Caffe resolves `net:` against the working directory), so
    train from there: `vggproto train solvers/D.prototxt`.
    """
    from vggproto.vgg.generate import generate
    if mean_value is not None:
        options["mean_value"] = mean_value
    if chain is not None:
        options["chain"] = chain
    if chain_scales is not None:
        options["chain_scales"] = chain_scales
    start = time.perf_counter()
    try:
        paths = generate(config, out_dir, force=force, **options)
    except OSError as exc:
        raise VGGProtoError(f"cannot write under {out_dir}: {exc.strerror}") from None
    for path in paths:
        click.echo(str(path))
    _say_iter_size(click.get_current_context(), options)
    log.info("wrote %d files in %.3f s", len(paths), time.perf_counter() - start)


def _say_iter_size(ctx: click.Context, options: dict[str, Any]) -> None:
    """``--batch-size`` alone keeps the paper's global batch of 256, which the solvers reach by accumulating
    ``iter_size`` batches per iteration: say so, since a short run usually wants ``--global-batch`` too."""
    batch, total = options["batch_size"], options["global_batch"]
    if total <= batch or batch <= 0 or total % batch:
        return
    how = ("the paper's global batch; add --global-batch %d for one batch per iteration" % batch
           if ctx.get_parameter_source("global_batch") is click.core.ParameterSource.DEFAULT else "--global-batch")
    click.echo(f"note: the solvers say iter_size: {total // batch}: each iteration accumulates {total // batch} "
               f"batches of {batch} into {total} images ({how})", err=True)


commands = [generate_command]
