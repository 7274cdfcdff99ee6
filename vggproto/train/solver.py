"""The training loop: Caffe's ``Solver::Solve`` / ``Step`` / ``TestAll`` / ``Snapshot`` / ``Restore``, in one file.

Read it top to bottom like ``caffe train``: build the nets from the solver (TRAIN net, then TEST nets that share the
trained layers by name), optionally finetune from ``--weights`` or resume from a solverstate, then iterate

    test (every test_interval) → iter_size × forward/backward (grads summed) → smoothed loss → display →
    all-reduce (multi-process) → lr → clip → 1/iter_size → decay → update rule → iter++ → snapshot

and finish as Caffe does: final snapshot, one display-only forward, final test (reference B.1/B.2,
``BVLC/caffe:src/caffe/solver.cpp``).  The update math lives in :mod:`vggproto.train.updates`, the file formats
in :mod:`vggproto.train.snapshot`, the log lines in :mod:`vggproto.train.log`, process groups in
:mod:`vggproto.train.distributed`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from functools import partial

import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import message_to_text, read_solver
from vggproto.data.options import DataOptions
from vggproto.errors import DataError, SolverError
from vggproto.train import log as tl
from vggproto.train import nets, updates
from vggproto.train import snapshot as snap
from vggproto.train.comm import Comm
from vggproto.train.options import TrainOptions
from vggproto.train.scoring import flat_scores, score
from vggproto.train.signals import Signals, check_effect

log = logging.getLogger("vggproto.train.solver")
sgd_log = logging.getLogger("vggproto.train.solver.sgd")   # the lines Caffe's sgd_solver.cpp logs


class Solver:
    """A Caffe solver on vggproto's Net: ``Solver(solver_path_or_param, options).solve(resume=None)``."""

    def __init__(self, solver: str | os.PathLike | caffe_pb2.SolverParameter, options: TrainOptions | None = None,
                 *, comm: Comm | None = None):
        self.opts = opts = options or TrainOptions()
        self.path = str(solver) if isinstance(solver, (str, os.PathLike)) else None
        self.param = p = self._checked_param(read_solver(solver) if self.path else solver)
        if opts.rank == 0:  # Caffe: solver.cpp Init
            log.info("Initializing solver from parameters: \n%s", message_to_text(p).rstrip())
        self.comm, self.rank, self.world = comm, opts.rank, opts.world_size
        self.root = self.rank == 0
        self.device = torch.device(opts.device)
        if p.random_seed >= 0:  # Caffe: seed + solver rank
            torch.manual_seed(p.random_seed + self.rank)
        seed = p.random_seed + self.rank if p.random_seed >= 0 else None
        if self.root and (p.snapshot or p.snapshot_after_train):  # Caffe: solver.cpp Init, before InitTrainNet
            snap.check_write_permission(p.snapshot_prefix)
            snap.remove_stale_temporaries(p.snapshot_prefix)
        data = DataOptions(rank=self.rank, world_size=self.world, per_gpu_batch=opts.per_gpu_batch, seed=seed)
        self.net = nets.build_train_net(p, self.path, data, self.device, opts.weights, opts.init_layers,
                                        opts.channels_last)
        # only the root process tests (Caffe: Solver::InitTestNets runs on the root solver)
        self.test_nets = nets.build_test_nets(p, self.path, seed, self.device, self.net) if self.root else []
        self.learnable = list(self.net.learnable_params)
        self.history = updates.new_history(p.type, [lp.param.detach() for lp in self.learnable])
        if comm is not None and p.layer_wise_reduce:
            # Caffe: parallel.cpp — layer_wise_reduce (default true) overlaps the all-reduce with backward;
            # false reduces all gradients in one call after it (the same result)
            comm.attach([lp.param for lp in self.learnable])
        self.iter, self.current_step = 0, 0
        self.plateau = updates.Plateau(opts.plateau_patience, opts.plateau_max_drops)
        self.signals = Signals(opts.sigint_effect, opts.sighup_effect, relayed=opts.relay_signals)
        self.smoothed_loss, self._losses = 0.0, []
        self.last_snapshot: str | None = None
        self.requested_early_exit = False
        self.csv: tl.CsvLog | None = None
        self.callbacks: list = []  # called with the solver at the start of every iteration (Caffe: on_start)

    def _checked_param(self, p: caffe_pb2.SolverParameter) -> caffe_pb2.SolverParameter:
        """The solver with ``--level``/``--stage`` applied, after Caffe's checks of its fields and of the flags."""
        updates.check_solver(p, self.path)
        check_effect(self.opts.sigint_effect, "sigint_effect")
        check_effect(self.opts.sighup_effect, "sighup_effect")
        if self.opts.level is not None:
            p.train_state.level = self.opts.level
        if self.opts.stages:
            del p.train_state.stage[:]
            p.train_state.stage.extend(self.opts.stages)
        return p

    # ---------------------------------------------------------------------------------------------------------------
    # Solve (Caffe: Solver::Solve)
    # ---------------------------------------------------------------------------------------------------------------

    def solve(self, resume: str | None = None) -> None:
        """Train to ``max_iter`` (optionally resuming), then final snapshot, display forward and test."""
        p = self.param
        log.info("Solving %s", self.net_name)
        log.info("Learning Rate Policy: %s", "plateau (not the solver's)" if self.plateau.enabled else p.lr_policy)
        self.requested_early_exit = False
        if resume:
            log.info("Restoring previous solver status from %s", resume)
            self.restore(resume)
        self._broadcast_state()
        if self.root and self.opts.csv and (p.snapshot or p.snapshot_after_train):
            self.csv = tl.CsvLog(p.snapshot_prefix + "_log.csv",
                                 list(self.test_nets[0].output_names) if self.test_nets else [],
                                 resume_iter=self.iter if resume else None)
        start_iter = self.iter
        try:
            with self.signals:
                self.step(p.max_iter - self.iter)
                # Caffe: snapshot after train unless the loop just took one
                if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
                    self.snapshot()
                if self.requested_early_exit:
                    log.info("Optimization stopped early.")
                    return
                if p.display:   # Caffe: solver.cpp Solve, only at iter % display == 0; here a short run too
                    with torch.no_grad():
                        loss = self._all_mean(self._forward_loss())
                    self._update_smoothed_loss(loss, start_iter)
                    if self.root:
                        log.info("Iteration %d, loss = %s", self.iter, tl.fmt(self.smoothed_loss))
                if p.test_interval and self.iter % p.test_interval == 0:
                    self.test_all()
        finally:
            if self.csv is not None:
                self.csv.close()
        log.info("Optimization Done.")

    @property
    def net_name(self) -> str:
        return self.net.net_param.name or "net"

    # ---------------------------------------------------------------------------------------------------------------
    # Step (Caffe: Solver::Step) — the loop
    # ---------------------------------------------------------------------------------------------------------------

    def step(self, iters: int) -> None:
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + iters
        self._losses, self.smoothed_loss = [], 0.0
        timer, iters_last = time.perf_counter(), self.iter
        images = partial(nets.images_per_iter, self.net, p.iter_size, self.world)
        progress = tl.Progress(p.max_iter, self.iter, images, self.opts.progress) if self.root else None
        try:
            while self.iter < stop_iter:
                for lp in self.learnable:  # ClearParamDiffs
                    lp.param.grad = None
                if (p.test_interval and self.iter % p.test_interval == 0
                        and (self.iter > 0 or p.test_initialization)):
                    self.test_all()
                    if self.requested_early_exit:
                        break
                for callback in self.callbacks:
                    callback(self)
                display = bool(p.display) and self.iter % p.display == 0
                self.net.debug_info = display and p.debug_info   # Caffe: solver.cpp Step
                loss, action = self._all_reduce(self._accumulate_gradients())
                self._check_finite(loss)
                self._update_smoothed_loss(loss, start_iter)
                outputs = self._train_outputs() if display else None  # collective: every rank
                if display and self.root:
                    lapse = time.perf_counter() - timer
                    per_s = (self.iter - iters_last) / (lapse or 1.0)
                    log.info(tl.iteration_line(self.iter, per_s, lapse, p.display, self.smoothed_loss))
                    timer, iters_last = time.perf_counter(), self.iter
                    for line in tl.output_lines("Train", outputs):
                        log.info(line)
                rate = self.apply_update(display)
                if self.csv is not None:
                    self.csv.add_train(self.iter, loss, self.smoothed_loss, rate, self.plateau.drops)
                if progress is not None:
                    progress.update(self.smoothed_loss)
                self.iter += 1
                if (p.snapshot and self.iter % p.snapshot == 0) or action == "snapshot":
                    self.snapshot()
                if action == "stop":
                    self.requested_early_exit = True
                    break
        finally:
            if progress is not None:
                progress.close()

    def _accumulate_gradients(self) -> float:
        """``iter_size`` forward/backward passes with the gradients summed; the mean loss (Caffe: Solver::Step)."""
        loss = 0.0
        for micro in range(self.param.iter_size):
            if self.comm is not None and micro == self.param.iter_size - 1:
                self.comm.arm()  # overlap the all-reduce with the last backward
            try:
                loss += self._forward_backward()
            except DataError as exc:  # a bad record (e.g. a NaN label): say when, as Caffe's log would
                raise DataError(f"iteration {self.iter}: {exc}") from None
        return loss / self.param.iter_size

    def _forward_backward(self) -> float:
        outputs = self.net.forward()
        self._last_outputs = outputs
        loss = self.net.loss
        if torch.is_tensor(loss) and loss.requires_grad:
            loss.backward()
            self.net.log_backward_debug()
        return float(loss.detach())

    def _forward_loss(self) -> float:
        self._last_outputs = self.net.forward()
        return float(self.net.loss)

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        """Caffe: Solver::UpdateSmoothedLoss — running mean over the last ``average_loss`` iterations."""
        n = self.param.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            size = len(self._losses)
            self.smoothed_loss = (self.smoothed_loss * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % n
            self.smoothed_loss += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    # ---------------------------------------------------------------------------------------------------------------
    # ApplyUpdate (Caffe: SGDSolver::ApplyUpdate)
    # ---------------------------------------------------------------------------------------------------------------

    def learning_rate(self) -> float:
        rate, self.current_step = self.plateau.rate(self.param, self.iter, self.current_step)
        return rate

    def apply_update(self, display: bool) -> float:
        rate = self.learning_rate()
        if display and self.root:
            sgd_log.info(tl.lr_line(self.iter, rate))
        weights = [lp.param.data for lp in self.learnable]
        grads = [lp.param.grad if lp.param.grad is not None else torch.zeros_like(lp.param.data)
                 for lp in self.learnable]
        updates.apply_update(self.param, weights, grads, self.history, [lp.lr_mult for lp in self.learnable],
                             [lp.decay_mult for lp in self.learnable], rate, self.iter)
        return rate

    # ---------------------------------------------------------------------------------------------------------------
    # Multi-process glue: one all-reduce per iteration carries grads, loss, signal requests and the plateau drops
    # ---------------------------------------------------------------------------------------------------------------

    def _all_reduce(self, loss: float) -> tuple[float, str]:
        action = self.signals.take()
        if self.comm is None:
            return loss, action
        self.comm.reduce_grads([lp.param for lp in self.learnable])  # Caffe: parallel.cpp, sum × 1/solver_count
        extra = [loss, float(action == "snapshot"), float(action == "stop"),
                 float(self.plateau.drops) if self.root else 0.0]
        extra = self.comm.all_reduce_mean([], extra)
        loss = extra[0]
        self.plateau.drops = int(round(extra[3] * self.world))
        action = "stop" if extra[2] > 0 else "snapshot" if extra[1] > 0 else "none"
        return loss, action

    def _all_mean(self, value: float) -> float:
        if self.comm is None:
            return value
        return self.comm.all_reduce_mean([], [value])[0]

    def _broadcast_state(self) -> None:
        """Rank 0's weights, history and counters go to every process before the first step (Caffe: NCCL init)."""
        if self.comm is None:
            return
        self.comm.broadcast([lp.param.data for lp in self.learnable] + list(self.history))
        self.iter, self.current_step = self.comm.broadcast_ints([self.iter, self.current_step])

    def _check_finite(self, loss: float) -> None:
        if not math.isfinite(loss):
            raise nets.non_finite_loss_error(self.net, self.iter, loss, self.last_snapshot)

    # ---------------------------------------------------------------------------------------------------------------
    # Testing (Caffe: Solver::TestAll / Test)
    # ---------------------------------------------------------------------------------------------------------------

    def test_all(self) -> None:
        if not self.root:
            return
        for index, net in enumerate(self.test_nets):
            log.info(tl.testing_line(self.iter, index))
            scores = self.test(index)
            if self.requested_early_exit:
                return
            if index == 0:
                self._plateau_observe(scores)
                if self.csv is not None:
                    self.csv.add_tests(self.iter, {name: value for name, value in flat_scores(scores)})

    def test(self, index: int) -> list[tuple[str, list[float], float]]:
        """Caffe: Solver::Test — test net #index on the trained weights, through the loop ``caffe test`` uses too;
        ``[]`` when a stop signal interrupts it."""
        net = self.test_nets[index]
        net.share_weights_from(self.net)  # Caffe: ShareTrainedLayersWith before every test
        compute_loss = self.param.test_compute_loss
        # Caffe: Solver::Test polls the signal handler before every batch (one process only)
        result = score(net, self.param.test_iter[index], compute_loss=compute_loss,
                       stop=lambda: self.comm is None and self.signals.pending == "stop")
        if result.interrupted:
            self.requested_early_exit = True
            log.info("Test interrupted.")
            return []
        if compute_loss:
            log.info("Test loss: %s", tl.fmt(result.loss))
        for line in tl.output_lines("Test", result.outputs):
            log.info(line)
        return result.outputs

    def _plateau_observe(self, scores) -> None:
        if not self.plateau.enabled:
            return
        name = self.opts.plateau_output or self.test_nets[0].first_accuracy_top or "accuracy"
        values = dict(flat_scores(scores))
        if name not in values:
            raise SolverError(f"--plateau-patience: test net #0 has no output '{name}' (outputs: "
                              f"{', '.join(values)})")
        if self.plateau.observe(values[name]):
            log.info("Plateau: test %s has not improved for %d tests; dividing the learning rate by 10 "
                     "(drop %d of at most %d)", name, self.plateau.patience, self.plateau.drops,
                     self.plateau.max_drops)

    def _train_outputs(self) -> list[tuple[str, list[float], float]]:
        """The train net's outputs of the last forward, averaged over the processes (the global batch)."""
        weights = self.net.loss_weights
        named = [(name, value.detach().double().reshape(-1).cpu().tolist())
                 for name, value in self._last_outputs.items()]
        if self.comm is not None:
            flat = self.comm.all_reduce_mean([], [v for _, values in named for v in values])
            offset, averaged = 0, []
            for name, values in named:
                averaged.append((name, flat[offset:offset + len(values)]))
                offset += len(values)
            named = averaged
        return [(name, values, weights.get(name, 0.0)) for name, values in named]

    # ---------------------------------------------------------------------------------------------------------------
    # Snapshot / restore (Caffe: Solver::Snapshot, SGDSolver::SnapshotSolverState / RestoreSolverState)
    # ---------------------------------------------------------------------------------------------------------------

    def snapshot(self) -> None:
        p = self.param
        cursors = nets.cursors(self.net)
        if self.comm is not None:
            cursors = self.comm.gather_objects(cursors)
        if not self.root:
            return
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        model_path, state_path = snap.snapshot_paths(p.snapshot_prefix, self.iter, hdf5)
        model_line, state_line = tl.snapshot_lines(model_path, state_path, hdf5)
        log.info(model_line)
        sgd_log.info(state_line)
        history = [h.detach().float().cpu().numpy() for h in self.history]
        # Caffe: solver.cpp Snapshot writes the model then the state; here both appear together (write_pair)
        snap.write_pair(model_path, lambda tmp: self.net.save_weights(tmp, with_diff=self.param.snapshot_diff),
                        state_path, snap.SolverStateData(self.iter, model_path, self.current_step, history),
                        self._sidecar(cursors if self.comm is not None else [cursors]), self.last_snapshot)
        self.last_snapshot = state_path
        if self.csv is not None:
            self.csv.last_snapshot = state_path
            self.csv.flush()

    def restore(self, state_path: str) -> None:
        state = snap.read_solverstate(state_path)
        snap.check_history(state_path, state.history, [tuple(h.shape) for h in self.history], self.param.type)
        if state.learned_net:
            self.net.load_weights(snap.resolve_learned_net(state_path, state.learned_net))
        self.iter, self.current_step = state.iter, state.current_step
        with torch.no_grad():
            for target, array in zip(self.history, state.history):
                target.copy_(torch.from_numpy(array.reshape(tuple(target.shape))))
        sgd_log.info("SGDSolver: restoring history")
        self._resume_data(snap.read_sidecar(state_path), state_path)

    def _sidecar(self, train_cursors: list[dict]) -> snap.Sidecar:
        return snap.Sidecar(self.iter, self.world, train_cursors, [nets.cursors(net) for net in self.test_nets],
                            self.plateau.state(), torch.get_rng_state().numpy().tobytes().hex())

    def _resume_data(self, side: snap.Sidecar | None, state_path: str) -> None:
        """Restore what :meth:`_sidecar` saved; without one (a Caffe solverstate) data restarts at record 0."""
        if side is None:
            log.info("No vggproto sidecar beside %s: data layers restart at record 0 (as Caffe does)", state_path)
            return
        nets.set_cursors(self.net, side.cursors_of(self.rank, self.world))
        for net, saved in zip(self.test_nets, side.test_cursors):
            nets.set_cursors(net, saved)
        self.plateau.load(side.plateau)
        if side.torch_rng and self.world == 1:
            torch.set_rng_state(torch.frombuffer(bytearray(bytes.fromhex(side.torch_rng)), dtype=torch.uint8))
