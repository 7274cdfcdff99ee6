"""``vggproto train`` and ``vggproto test``: Caffe's ``caffe train`` / ``caffe test`` with the same flags.

``train`` runs on the CPU unless ``--gpus`` is given or the solver explicitly sets ``solver_mode: GPU`` (then its
``device_id``), as ``tools/caffe.cpp`` does; ``--gpus 0,1|all`` trains on several GPUs through torch.distributed and
``--gpus cpu:N`` runs N gloo CPU workers (for testing the multi-process path anywhere).
"""
from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from vggproto.commands.engine_option import engine_hook, engine_option
from vggproto.commands.gflags import CaffeCommand
from vggproto.commands.options import NameList, gpus_option, level_option, stage_option, with_defaults
from vggproto.errors import SolverError

if TYPE_CHECKING:
    from vggproto.net.devices import Devices


def _solver_file(solver_arg: str | None, solver_opt: str | None) -> str:
    """The solver file, given as the argument (``caffe train`` style) or as ``--solver`` (Caffe's flag)."""
    if not (solver_opt or solver_arg):   # Caffe: tools/caffe.cpp CHECK_GT(FLAGS_solver.size(), 0): a usage error
        raise click.UsageError("train needs a solver file: SOLVER or --solver SOLVER")
    if solver_opt and solver_arg and solver_opt != solver_arg:
        raise SolverError(f"two solver files given ({solver_arg} and --solver {solver_opt}); give one")
    return solver_opt or solver_arg


@click.command("train", cls=CaffeCommand)
@click.argument("solver_arg", required=False, metavar="SOLVER")
@click.option("--solver", "solver_opt", help="The solver definition protocol buffer text file.")
@click.option("--weights", type=NameList(), default="",
              help="Pretrained weights to finetune from (comma-separated files, applied in order).")
@click.option("--snapshot", help="A .solverstate or .solverstate.h5 to resume training from.")
@gpus_option(one_device=False, help="GPU ids '0,1', 'all', or 'cpu:N' for N CPU workers (gloo).")
@level_option
@stage_option
@click.option("--sigint-effect", "--sigint_effect", "sigint", default="stop",
              type=click.Choice(["stop", "snapshot", "none"]), show_default=True)
@click.option("--sighup-effect", "--sighup_effect", "sighup", default="snapshot",
              type=click.Choice(["snapshot", "stop", "none"]), show_default=True)
@click.option("--per-gpu-batch", is_flag=True, help="BVLC semantics: the prototxt batch_size is per GPU "
              "(default: it is the global batch, split across GPUs).")
@click.option("--plateau-patience", type=int, default=0, help="Paper schedule: divide the lr by 10 after N tests "
              "without a better test accuracy.")
@click.option("--plateau-max-drops", type=int, default=3, show_default=True, help="At most K such drops.")
@click.option("--plateau-output", default=None, help="Test output watched by the plateau schedule "
              "(default: the first Accuracy top of test net #0).")
@click.option("--init-layers", type=click.Choice(["all", "paper"]), default="all", show_default=True,
              help="'paper': copy only conv1_1, conv2_1, conv3_1, conv3_2, fc6, fc7, fc8 from --weights "
                   "(the paper's initialisation of deeper nets from net A).")
@click.option("--channels-last", is_flag=True, help="Keep 4-D weights and activations in NHWC memory (faster "
              "convolutions and pooling on most CPUs and GPUs; the same results up to float rounding).")
def train(solver_arg: str | None, solver_opt: str | None, weights: tuple[str, ...], snapshot: str | None,
          gpus: Devices | None, level: int | None, stage: tuple[str, ...], sigint: str, sighup: str,
          per_gpu_batch: bool, plateau_patience: int, plateau_max_drops: int, plateau_output: str | None,
          init_layers: str, channels_last: bool) -> None:
    """Train a net from a Caffe solver file, exactly as `caffe train` does."""
    from vggproto.train.options import TrainOptions
    from vggproto.train.run import train as caffe_train
    from vggproto.train.run import use_glog_format
    from vggproto.vgg.configs import PAPER_INIT_LAYERS
    solver_path = _solver_file(solver_arg, solver_opt)
    use_glog_format()
    options = TrainOptions(weights=weights, level=level, stages=stage, sigint_effect=sigint, sighup_effect=sighup,
                           per_gpu_batch=per_gpu_batch, plateau_patience=plateau_patience,
                           plateau_max_drops=plateau_max_drops, plateau_output=plateau_output,
                           init_layers=PAPER_INIT_LAYERS if init_layers == "paper" else None, glog=True,
                           channels_last=channels_last)
    caffe_train(solver_path, options, snapshot=snapshot, gpus=gpus)


@click.command("test", cls=CaffeCommand)
@click.option("--model", required=True, help="The model definition protocol buffer text file.")
@click.option("--weights", required=True, help="Trained weights (comma-separated files, applied in order).")
@click.option("--iterations", type=int, default=50, show_default=True, help="Number of batches to run.")
@gpus_option(help="Run on this GPU id (one device). Default: CPU.")
@level_option
@stage_option
@engine_option
def test(model: str, weights: str, iterations: int, gpus: Devices, level: int, stage: tuple[str, ...],
         engine: str) -> None:
    """Score a trained model: per-batch outputs, then their averages (Caffe's `caffe test`)."""
    if iterations < 1:  # Caffe: CHECK_GT(FLAGS_iterations, 0); averaging 0 batches divides by zero
        raise click.BadParameter(f"{iterations} is not a positive number of batches", param_hint="'--iterations'")
    from vggproto.train.run import use_glog_format
    from vggproto.train.scoring import caffe_test
    use_glog_format()
    caffe_test(model, weights, iterations, device=gpus.device, level=level, stages=stage, engine=engine_hook(engine))
    sys.stderr.flush()


#: ``vggproto train`` keeps the solver file's own train_state.level unless --level is given; Caffe's spelling
#: (``caffe train``, commands/caffe_tools.py) is ``train`` itself: tools/caffe.cpp overwrites the level with -level, 0
commands = [with_defaults(train, level=None), test]
