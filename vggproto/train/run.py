"""``caffe train`` as one library call (tools/caffe.cpp train()): check the flags, pick the devices, launch.

``vggproto train`` parses its flags into :class:`~vggproto.train.solver.TrainOptions` and calls :func:`train`;
``vggproto test`` calls :func:`vggproto.train.scoring.caffe_test`.  Both give the CLI's log handler glog's prefix
first (:func:`use_glog_format`), so Caffe's ``tools/extra/parse_log.py`` reads their logs.
"""
from __future__ import annotations

import logging
from dataclasses import replace

from vggproto.errors import SolverError
from vggproto.net.devices import Devices, parse_devices
from vggproto.train import distributed
from vggproto.train.options import TrainOptions


def use_glog_format() -> None:
    """Give the process's log handlers glog's line prefix, so Caffe's parse_log.py reads the log."""
    from vggproto.caffe.glog import GlogFormatter
    for handler in logging.getLogger().handlers:
        if type(handler) is logging.StreamHandler:  # the CLI's own handler, not a test harness's
            handler.setFormatter(GlogFormatter())


def solver_devices(solver_path: str, gpus: Devices | None) -> Devices | None:
    """Caffe: tools/caffe.cpp — without --gpu, use the GPU only if the solver explicitly says solver_mode: GPU."""
    if gpus is not None:
        return gpus
    from vggproto.caffe.proto import caffe_pb2
    from vggproto.caffe.prototxt import read_solver
    param = read_solver(solver_path)
    if param.HasField("solver_mode") and param.solver_mode == caffe_pb2.SolverParameter.GPU:
        return parse_devices(str(param.device_id), f"{solver_path}: solver_mode GPU, device_id")
    return None


def train(solver_path: str, options: TrainOptions, snapshot: str | None = None, gpus: Devices | None = None) -> None:
    """Train from a solver file as ``caffe train`` does: finetune from ``options.weights`` or resume from
    ``snapshot`` (Caffe refuses both), on ``gpus`` (or the solver's own device), one process per device."""
    if options.weights and snapshot:
        raise SolverError("give --snapshot or --weights, not both (Caffe: resume OR finetune)")
    if options.init_layers is not None and not options.weights:
        raise SolverError("--init-layers paper needs --weights (the trained net A to copy from)")
    if not options.plateau_patience:  # the drop budget only means something with a patience
        options = replace(options, plateau_max_drops=0)
    distributed.launch(solver_path, options, resume=snapshot, gpus=solver_devices(solver_path, gpus))
