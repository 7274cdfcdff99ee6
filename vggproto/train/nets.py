"""The nets a solver trains and tests: built from the solver's fields as Caffe's Solver::InitTrainNet and
InitTestNets do (file names, finetuning, the TEST nets sharing the trained layers), and what the loop asks of them
beyond :class:`~vggproto.net.interpreter.Net` itself (data cursors for a snapshot, the non-finite loss error,
images per iteration)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.options import DataOptions
from vggproto.errors import SolverError

if TYPE_CHECKING:
    from vggproto.layers.data import FeedLayer
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.train.solver")


def resolve(name: str, solver_path: str | None) -> str:
    """A net file as Caffe opens it (relative to the CWD), else relative to the solver file."""
    if os.path.isfile(name) or solver_path is None:
        return name
    beside = Path(solver_path).parent / name
    return str(beside) if beside.is_file() else name


def train_net_source(p: caffe_pb2.SolverParameter, solver_path: str | None) -> str | caffe_pb2.NetParameter:
    """Caffe: Solver::InitTrainNet — exactly one of the four train-net fields."""
    given = [f for f in ("train_net_param", "train_net", "net_param", "net") if p.HasField(f)]
    if len(given) != 1:
        raise SolverError(f"{solver_path or 'solver'}: exactly one of train_net_param, train_net, net_param, net "
                          f"must specify the train net (found: {', '.join(given) or 'none'})")
    value = getattr(p, given[0])
    return resolve(value, solver_path) if isinstance(value, str) else value


def test_net_sources(p: caffe_pb2.SolverParameter, solver_path: str | None) -> list:
    """Caffe: Solver::InitTestNets — (source, NetState) per test net: test_net_param, test_net, then net."""
    sources = list(p.test_net_param) + [resolve(f, solver_path) for f in p.test_net]
    generic = p.net_param if p.HasField("net_param") else (resolve(p.net, solver_path) if p.HasField("net") else None)
    where = solver_path or "solver"
    if generic is None and len(p.test_iter) != len(sources):
        raise SolverError(f"{where}: test_iter must be given once per test net ({len(sources)} test nets, "
                          f"{len(p.test_iter)} test_iter)")
    if generic is not None:
        if len(p.test_iter) < len(sources):
            raise SolverError(f"{where}: test_iter must be specified for each test network")
        sources += [generic] * (len(p.test_iter) - len(sources))
    if p.test_state and len(p.test_state) != len(sources):
        raise SolverError(f"{where}: test_state must be unspecified or specified once per test net")
    if sources and p.test_interval <= 0:
        raise SolverError(f"{where}: test nets need test_interval > 0")
    states = list(p.test_state) or [caffe_pb2.NetState() for _ in sources]
    return list(zip(sources, states))


def finetune(net: Net, path: str, init_layers: tuple[str, ...] | None) -> None:
    """Caffe: ``--weights`` → CopyTrainedLayersFrom, optionally limited to ``init_layers`` (the paper's init)."""
    from vggproto.net.weights import copy_weights
    log.info("Finetuning from %s", path)
    copy_weights(net, path, only=init_layers)


def build_train_net(p: caffe_pb2.SolverParameter, solver_path: str | None, options: DataOptions,
                    device: torch.device, weights: tuple[str, ...], init_layers: tuple[str, ...] | None,
                    channels_last: bool = False) -> Net:
    """Caffe: Solver::InitTrainNet — the TRAIN net on ``device``, finetuned from ``weights`` (``--weights``, else
    the solver's own ``weights:`` entries, as tools/caffe.cpp does).  ``channels_last`` is a memory layout, not
    a semantic: convolutions given NHWC weights produce NHWC activations, which oneDNN (CPU) and cuDNN convolve
    and pool faster; every value is the same up to float rounding."""
    from vggproto.net.interpreter import Net
    from vggproto.net.setup_log import log_setup
    source = train_net_source(p, solver_path)
    log.info(_train_net_line(p))
    net = Net(source, phase="TRAIN", stages=tuple(p.train_state.stage), level=p.train_state.level,
              seed=options.seed, options=options)
    log_setup(net)
    to_device(net, device)
    for path in weights or tuple(f for entry in p.weights for f in entry.split(",") if f):
        finetune(net, path, init_layers)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    return net


def _train_net_line(p: caffe_pb2.SolverParameter) -> str:
    """Caffe: solver.cpp InitTrainNet's log line for the field that names the train net."""
    if p.HasField("train_net_param"):
        return "Creating training net specified in train_net_param."
    if p.HasField("train_net"):
        return f"Creating training net from train_net file: {p.train_net}"
    if p.HasField("net_param"):
        return "Creating training net specified in net_param."
    return f"Creating training net from net file: {p.net}"


def _test_net_descriptions(p: caffe_pb2.SolverParameter, count: int) -> list[str]:
    """Caffe: solver.cpp InitTestNets' ``sources``, in the order test_net_sources lists the nets."""
    named = ["test_net_param"] * len(p.test_net_param) + [f"test_net file: {f}" for f in p.test_net]
    generic = "net_param" if p.HasField("net_param") else f"net file: {p.net}"
    return (named + [generic] * count)[:count]


def build_test_nets(p: caffe_pb2.SolverParameter, solver_path: str | None, seed: int | None,
                    device: torch.device, train_net: Net) -> list[Net]:
    """Caffe: Solver::InitTestNets — every test net on ``device``, sharing the trained layers by name."""
    from vggproto.net.interpreter import Net
    from vggproto.net.setup_log import log_setup
    nets = []
    sources = test_net_sources(p, solver_path)
    for index, ((source, state), described) in enumerate(zip(sources, _test_net_descriptions(p, len(sources)))):
        log.info("Creating test net (#%d) specified by %s", index, described)
        net = Net(source, phase="TEST", stages=tuple(state.stage), level=state.level, seed=seed,
                  options=DataOptions())
        log_setup(net)
        to_device(net, device)
        net.share_weights_from(train_net)
        nets.append(net)
    return nets


def to_device(net: Net, device: torch.device) -> None:
    """Move a net unless it is already there (nets are built on the CPU)."""
    if device.type != "cpu":
        net.to(device)


def data_layers(net: Net) -> Iterator[tuple[str, FeedLayer]]:
    """The layers of ``net`` that keep a position in their data (a snapshot saves it, a resume restores it)."""
    for name, module in net.named_modules():
        if callable(getattr(module, "cursor", None)) and callable(getattr(module, "set_cursor", None)):
            yield name, module


def cursors(net: Net) -> dict:
    """Every data layer's position, by layer name (a snapshot's sidecar holds one such dict per net)."""
    return {name: module.cursor() for name, module in data_layers(net)}


def set_cursors(net: Net, cursors: dict) -> None:
    """Put the data layers named in ``cursors`` back at their saved positions."""
    for name, module in data_layers(net):
        if name in cursors:
            module.set_cursor(cursors[name])


def non_finite_loss_error(net: Net, iteration: int, loss: float, last_snapshot: str | None) -> SolverError:
    """The error for a NaN/inf training loss, naming the first blob (and its layer) that stopped being finite."""
    culprit = ""
    for name, blob in net.blobs.items():
        if torch.is_tensor(blob) and blob.is_floating_point() and not bool(torch.isfinite(blob).all()):
            culprit = f"; the first top that became non-finite is blob '{name}'"
            layer = net.producer(name)
            culprit += f" (layer '{layer}')" if layer else ""
            break
    kept = f"; the last good snapshot is {last_snapshot}" if last_snapshot else ""
    return SolverError(f"iteration {iteration}: the training loss is {loss}{culprit}. Training stopped{kept}; "
                       f"lower base_lr or enable clip_gradients")


def images_per_iter(net: Net, iter_size: int, world: int) -> int:
    """Images one iteration consumes over all processes (the progress bar's img/s): the first blob's batch ×
    iter_size × processes.  Asked after the first forward: before it the blobs have no batch shape yet."""
    try:
        first = next(iter(net.blobs.values()))
        return int(first.shape[0]) * iter_size * world
    except (StopIteration, AttributeError, IndexError, TypeError):
        return 0
