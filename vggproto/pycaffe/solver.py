"""pycaffe's solvers (``caffe.SGDSolver(path)`` … ``caffe.get_solver(path)``) on :class:`vggproto.train.solver.Solver`.

As in pycaffe, a named solver class forces its update rule whatever the file's ``type`` says, and ``get_solver``
takes the file's type.  ``solver.net`` and ``solver.test_nets`` are pycaffe Net views of the solver's own nets
(the test nets share the train net's weights, as Caffe's do), so reading their blobs after ``step`` shows the
last iteration and writing an input blob feeds the next one.
"""
from __future__ import annotations

import os
from typing import Callable

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_solver
from vggproto.pycaffe import mode
from vggproto.pycaffe.net import Net
from vggproto.train import nets, updates
from vggproto.train.solver import Solver as TorchSolver
from vggproto.train.solver import TrainOptions


def _read(path: str | os.PathLike, solver_type: str | None) -> caffe_pb2.SolverParameter:
    """The solver file with its net paths resolved (the CWD first, as Caffe, then beside the file), checked
    here, where its name is known (the vggproto Solver is handed the parameters, not the file)."""
    path = os.fspath(path)
    param = read_solver(path)
    if solver_type is not None:
        param.type = solver_type
    updates.check_solver(param, path)
    for field in ("net", "train_net"):
        if param.HasField(field):
            setattr(param, field, nets.resolve(getattr(param, field), path))
    resolved = [nets.resolve(name, path) for name in param.test_net]
    del param.test_net[:]
    param.test_net.extend(resolved)
    return param


class Solver:
    """A Caffe solver driven from Python (pycaffe's ``caffe.Solver`` interface)."""

    solver_type: str | None = None

    def __init__(self, path: str | os.PathLike):
        options = TrainOptions(device=str(mode.device()), progress=False, csv=False)
        self._solver = TorchSolver(_read(path, self.solver_type), options)
        self.net = Net.wrap(self._solver.net)
        self.test_nets = [Net.wrap(net) for net in self._solver.test_nets]
        self._gradient_callbacks: list[Callable[[], None]] = []
        update = self._solver.apply_update

        def apply_update(display: bool) -> float:   # Caffe: on_gradients_ready, then ApplyUpdate
            for callback in self._gradient_callbacks:
                callback()
            return update(display)
        self._solver.apply_update = apply_update
        self._apply = update

    @property
    def torch_solver(self) -> TorchSolver:
        """The vggproto Solver behind this one."""
        return self._solver

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        return self._solver.param

    @property
    def iter(self) -> int:
        return self._solver.iter

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration."""
        rate, _ = setup_rate(self._solver)
        return rate

    def step(self, iters: int) -> None:
        self._solver.step(int(iters))

    def solve(self, resume: str | None = None) -> None:
        self._solver.solve(resume)

    def snapshot(self) -> None:
        self._solver.snapshot()

    def restore(self, state_file: str) -> None:
        self._solver.restore(state_file)

    def apply_update(self) -> None:
        """One update from the current parameter diffs (the iteration counter does not move, as in pycaffe)."""
        self._apply(False)

    def add_callback(self, on_start: Callable[[], None], on_gradients: Callable[[], None]) -> None:
        """pycaffe's callbacks: ``on_start`` before each iteration's forward, ``on_gradients`` before the update."""
        self._solver.callbacks.append(lambda _solver: on_start())
        self._gradient_callbacks.append(on_gradients)

    def share_weights(self, net: Net) -> None:
        """Make ``net`` use the train net's parameters (pycaffe: ``ShareTrainedLayersWith``)."""
        net.share_with(self.net)


def setup_rate(solver: TorchSolver) -> tuple[float, int]:
    """The rate of ``solver``'s current iteration, without moving its step counter."""
    return solver.plateau.rate(solver.param, solver.iter, solver.current_step)


def _solver_class(name: str, solver_type: str) -> type[Solver]:
    return type(name, (Solver,), {"solver_type": solver_type, "__doc__": f"Caffe's {name} (type {solver_type})."})


SGDSolver = _solver_class("SGDSolver", "SGD")
NesterovSolver = _solver_class("NesterovSolver", "Nesterov")
AdaGradSolver = _solver_class("AdaGradSolver", "AdaGrad")
RMSPropSolver = _solver_class("RMSPropSolver", "RMSProp")
AdaDeltaSolver = _solver_class("AdaDeltaSolver", "AdaDelta")
AdamSolver = _solver_class("AdamSolver", "Adam")


def get_solver(path: str | os.PathLike) -> Solver:
    """pycaffe's ``get_solver``: the update rule the file's ``type`` names."""
    return Solver(path)
