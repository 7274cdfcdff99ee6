"""``vggproto train`` and ``vggproto test``: Caffe's ``caffe train`` / ``caffe test`` with the same flags.

``train`` runs on the CPU unless ``--gpus`` is given or the solver explicitly sets ``solver_mode: GPU`` (then its
``device_id``), as ``tools/caffe.cpp`` does; ``--gpus 0,1|all`` trains on several GPUs through torch.distributed and
``--gpus cpu:N`` runs N gloo CPU workers (for testing the multi-process path anywhere).
"""
from __future__ import annotations

import logging
import sys

import click

from vggproto.errors import SolverError

log = logging.getLogger("vggproto.train.solver")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v for v in (value or "").split(",") if v)


def _use_glog_format() -> None:
    """Give the process's log handlers glog's line prefix, so Caffe's parse_log.py reads the log."""
    from vggproto.train.log import GlogFormatter
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the CLI's own handler, not a test harness's
            handler.setFormatter(GlogFormatter())


def _solver_gpus(solver_path: str, gpus: str | None) -> str | None:
    """Caffe: tools/caffe.cpp — without --gpu, use the GPU only if the solver explicitly says solver_mode: GPU."""
    if gpus is not None:
        return gpus
    from vggproto.caffe.proto import caffe_pb2
    from vggproto.caffe.prototxt import read_solver
    param = read_solver(solver_path)
    if param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        return str(param.device_id)
    return None


@click.command("train")
@click.argument("solver_arg", required=False, metavar="SOLVER")
@click.option("--solver", "solver_opt", help="The solver definition protocol buffer text file.")
@click.option("--weights", help="Pretrained weights to finetune from (comma-separated files, applied in order).")
@click.option("--snapshot", help="A .solverstate or .solverstate.h5 to resume training from.")
@click.option("--gpus", "--gpu", "gpus", help="GPU ids '0,1', 'all', or 'cpu:N' for N CPU workers (gloo).")
@click.option("--level", type=int, default=None, help="Optional; network level (train_state.level).")
@click.option("--stage", help="Optional; network stages, comma-separated (train_state.stage).")
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
def train(solver_arg, solver_opt, weights, snapshot, gpus, level, stage, sigint, sighup, per_gpu_batch,
          plateau_patience, plateau_max_drops, plateau_output, init_layers) -> None:
    """Train a net from a Caffe solver file, exactly as `caffe train` does."""
    from vggproto.train.distributed import launch
    from vggproto.train.solver import TrainOptions
    solver_path = solver_opt or solver_arg
    if not solver_path:
        raise SolverError("train needs a solver file: vggproto train SOLVER (or --solver SOLVER)")
    if solver_opt and solver_arg and solver_opt != solver_arg:
        raise SolverError(f"two solver files given ({solver_arg} and --solver {solver_opt}); give one")
    if weights and snapshot:
        raise SolverError("give --snapshot or --weights, not both (Caffe: resume OR finetune)")
    init = None
    if init_layers == "paper":
        if not weights:
            raise SolverError("--init-layers paper needs --weights (the trained net A to copy from)")
        from vggproto.vgg.configs import PAPER_INIT_LAYERS
        init = tuple(PAPER_INIT_LAYERS)
    _use_glog_format()
    options = TrainOptions(weights=_split(weights), level=level, stages=_split(stage), sigint_effect=sigint,
                           sighup_effect=sighup, per_gpu_batch=per_gpu_batch, plateau_patience=plateau_patience,
                           plateau_max_drops=plateau_max_drops if plateau_patience else 0,
                           plateau_output=plateau_output, init_layers=init, extra={"glog": True})
    launch(solver_path, options, resume=snapshot, gpus=_solver_gpus(solver_path, gpus))


@click.command("test")
@click.option("--model", required=True, help="The model definition protocol buffer text file.")
@click.option("--weights", required=True, help="Trained weights (comma-separated files, applied in order).")
@click.option("--iterations", type=int, default=50, show_default=True, help="Number of batches to run.")
@click.option("--gpus", "--gpu", "gpus", help="Run on this GPU id (one device).")
@click.option("--level", type=int, default=0)
@click.option("--stage", help="Network stages, comma-separated.")
def test(model, weights, iterations, gpus, level, stage) -> None:
    """Score a trained model: per-batch outputs, then their averages (Caffe's `caffe test`)."""
    import torch

    from vggproto.net.interpreter import Net
    from vggproto.train.log import fmt
    from vggproto.train.setup import loss_weights as _loss_weights
    _use_glog_format()
    device = "cpu"
    if gpus:
        if "," in gpus or gpus == "all":
            raise SolverError(f"--gpus {gpus}: test runs on one device; give a single GPU id")
        device = f"cuda:{int(gpus)}"
    net = Net(model, weights=weights, phase="TEST", stages=_split(stage), level=level)
    if device != "cpu":
        net.to(device)
    log.info("Running for %d iterations.", iterations)
    sums: dict[str, torch.Tensor] = {}
    loss = 0.0
    with torch.no_grad():
        for i in range(iterations):
            outputs = net.forward()
            loss += float(net.loss)
            for name, value in outputs.items():
                flat = value.detach().double().reshape(-1).cpu()
                for v in flat.tolist():
                    log.info("Batch %d, %s = %s", i, name, fmt(v))
                sums[name] = sums[name] + flat if name in sums else flat.clone()
    log.info("Loss: %s", fmt(loss / max(iterations, 1)))
    weights_of = _loss_weights(net)
    for name, total in sums.items():
        for v in (total / max(iterations, 1)).tolist():
            w = weights_of.get(name, 0.0)
            suffix = f" (* {fmt(w)} = {fmt(w * v)} loss)" if w else ""
            log.info("%s = %s%s", name, fmt(v), suffix)
    sys.stderr.flush()


commands = [train, test]
