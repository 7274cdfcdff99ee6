"""Multi-process training on torch.distributed: one worker per GPU (NCCL), or N CPU workers (gloo) for tests.

``launch`` either runs in-process (one device), joins a torchrun job (``RANK``/``WORLD_SIZE`` in the environment) or
spawns one worker per device.  Semantics (reference B.6 and the training brief): the prototxt ``batch_size`` is the
GLOBAL batch split evenly across ranks (``--per-gpu-batch``: BVLC's per-GPU batch), data sharded by rank (record i on
rank ``i % world``), gradients summed then scaled by ``1/world`` after the iter_size backward passes (Caffe:
``parallel.cpp`` on_gradients_ready), so one step equals the single-process step on the same global batch; every
rank then runs the identical clip/normalise/decay/update.  Rank 0 broadcasts the initial state, tests, logs and
snapshots.  A worker that fails takes the job down: the others are terminated and the launcher raises that worker's
error (collectives also carry a timeout, so nothing hangs).  The launcher takes the job's SIGINT/SIGHUP as the one
Caffe process would and relays them to rank 0 (:mod:`vggproto.train.signals`); SIGTERM ends every worker.
"""
from __future__ import annotations

import datetime
import logging
import os
import signal
import socket
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vggproto.errors import SolverError, VGGProtoError
from vggproto.net.devices import CPU, Devices, usable_cpus

if TYPE_CHECKING:
    from vggproto.train.options import TrainOptions

log = logging.getLogger("vggproto.train.distributed")

#: Test hook: ``kill:<rank>:<iter>`` makes that worker SIGKILL itself at that iteration (failure-propagation tests).
FAULT_ENV = "VGGPROTO_FAULT_INJECT"
TIMEOUT_ENV = "VGGPROTO_COLLECTIVE_TIMEOUT_S"
BUCKET_ENV = "VGGPROTO_BUCKET_MB"


class GradSync:
    """DDP-style bucketed gradient all-reduce that overlaps the last backward pass of an iteration.

    Buckets hold consecutive parameters in reverse Caffe order (backward finishes the last layers first).  A
    parameter's post-accumulate-grad hook counts it ready; a bucket whose parameters are all ready is flattened and
    all-reduced asynchronously, strictly in bucket order so every rank issues identical collectives.  Parameters
    that got no gradient (frozen, unused) are zero-filled and their buckets sent in :meth:`finish`.  Sum then
    ×1/world, as Caffe's ``parallel.cpp``; only armed (last micro-batch) backward passes trigger it, so iter_size
    accumulation stays local.
    """

    def __init__(self, params: list[torch.Tensor], bucket_bytes: int):
        self.params = params
        self.buckets: list[list[int]] = []
        size = bucket_bytes + 1
        for index in reversed(range(len(params))):
            nbytes = params[index].numel() * params[index].element_size()
            if size + nbytes > bucket_bytes and (not self.buckets or self.buckets[-1]):
                self.buckets.append([])
                size = 0
            self.buckets[-1].append(index)
            size += nbytes
        self.bucket_of = {i: k for k, bucket in enumerate(self.buckets) for i in bucket}
        self.armed = False
        self._reset()
        for index, param in enumerate(params):
            if param.requires_grad:
                param.register_post_accumulate_grad_hook(lambda p, i=index: self._ready(i))

    def _reset(self) -> None:
        self.pending = [len(b) for b in self.buckets]
        self.next_launch = 0
        self.launched: list = []

    def arm(self) -> None:
        self._reset()
        self.armed = True

    def _ready(self, index: int) -> None:
        if not self.armed:
            return
        self.pending[self.bucket_of[index]] -= 1
        while self.next_launch < len(self.buckets) and self.pending[self.next_launch] == 0:
            self._launch(self.next_launch)

    def _launch(self, k: int) -> None:
        import torch.distributed as dist
        grads = []
        for i in self.buckets[k]:
            p = self.params[i]
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.launched.append((dist.all_reduce(flat, async_op=True), k, flat))
        self.next_launch = k + 1

    def finish(self, world: int) -> None:
        """Send what is left, wait for every bucket and write the averaged gradients back."""
        while self.next_launch < len(self.buckets):
            self._launch(self.next_launch)
        for handle, k, flat in self.launched:
            handle.wait()
            flat.mul_(1.0 / world)
            offset = 0
            for i in self.buckets[k]:
                g = self.params[i].grad
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()
        self.armed = False
        self.launched = []


class ProcessGroupComm:
    """:class:`vggproto.train.comm.Comm` over the default ``torch.distributed`` process group."""

    def __init__(self, device: torch.device, bucket_mb: float = 25.0):
        self.device = device
        self.bucket_bytes = int(bucket_mb * (1 << 20))
        self.sync: GradSync | None = None

    def attach(self, params: list[torch.Tensor]) -> None:
        """Install the overlapping all-reduce on the learnable parameters (Caffe order)."""
        self.sync = GradSync(params, self.bucket_bytes)

    def arm(self) -> None:
        """The next backward pass is the iteration's last: start all-reducing buckets as they complete."""
        if self.sync is not None:
            self.sync.arm()

    def reduce_grads(self, params: list[torch.Tensor]) -> None:
        """Average the gradients over all ranks (overlapped buckets if armed, else one flattened all-reduce)."""
        import torch.distributed as dist
        if self.sync is not None and self.sync.armed:
            self.sync.finish(dist.get_world_size())
            return
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        self.all_reduce_mean(grads, [])

    def all_reduce_mean(self, tensors: list[torch.Tensor], extra: list[float]) -> list[float]:
        """Average ``tensors`` (in place) and the scalars ``extra`` over all ranks; returns the averaged scalars."""
        import torch.distributed as dist
        world = dist.get_world_size()
        if tensors:
            flat = torch.cat([t.reshape(-1) for t in tensors])
            dist.all_reduce(flat)
            flat.mul_(1.0 / world)
            offset = 0
            for t in tensors:
                t.copy_(flat[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
        scalars = torch.tensor(extra, dtype=torch.float64, device=self.device)
        dist.all_reduce(scalars)
        return (scalars / world).tolist()

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Rank 0's values of ``tensors`` on every rank (in place)."""
        import torch.distributed as dist
        for t in tensors:
            dist.broadcast(t, src=0)

    def broadcast_ints(self, values: list[int]) -> list[int]:
        """Rank 0's ``values`` on every rank."""
        import torch.distributed as dist
        t = torch.tensor(values, dtype=torch.int64, device=self.device)
        dist.broadcast(t, src=0)
        return [int(v) for v in t.tolist()]

    def gather_objects(self, value: object) -> list:
        """Every rank's ``value``, in rank order."""
        import torch.distributed as dist
        out = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out


def launch(solver_path: str, options: TrainOptions, resume: str | None = None, gpus: Devices | None = None) -> None:
    """Train ``solver_path`` with :class:`vggproto.train.solver.TrainOptions` on ``gpus`` (parsed ``--gpus``,
    :func:`vggproto.net.devices.parse_devices`; None: one process on ``options.device``)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        # under torchrun each process takes the GPU of its LOCAL_RANK when --gpus names GPUs (any id list / all)
        _join_torchrun(solver_path, options, resume, cuda=gpus is not None and gpus.kind == "cuda")
        return
    kind, ids = (gpus or CPU).kind, list((gpus or CPU).ids)
    # read in the launcher: forkserver workers do not see later changes of this process's environment
    options = replace(options, fault=os.environ.get(FAULT_ENV, ""),
                      timeout_s=float(os.environ.get(TIMEOUT_ENV, "1800")),
                      bucket_mb=float(os.environ.get(BUCKET_ENV, "25")))
    if len(ids) == 1:
        device = f"cuda:{ids[0]}" if kind == "cuda" else options.device
        from vggproto.train.solver import Solver
        Solver(solver_path, replace(options, device=device)).solve(resume)
        return
    _spawn(solver_path, options, resume, kind, ids)


def _timeout(options=None) -> datetime.timedelta:
    seconds = (options.timeout_s if options is not None else None) or os.environ.get(TIMEOUT_ENV, 1800)
    return datetime.timedelta(seconds=float(seconds))


def _join_torchrun(solver_path: str, options, resume: str | None, cuda: bool) -> None:
    import torch.distributed as dist
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if cuda and not torch.cuda.is_available():
        raise SolverError("torchrun job asked for GPUs (--gpus) but torch sees no CUDA device")
    device = f"cuda:{local}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(local)
    _init_group("nccl" if cuda else "gloo", rank, world)
    if rank != 0:  # rank 0 logs; the others only warn
        logging.getLogger("vggproto").setLevel(logging.WARNING)
    try:
        _run(solver_path, replace(options, rank=rank, world_size=world, device=device), resume)
    finally:
        dist.destroy_process_group()


def _init_group(backend: str, rank: int, world: int) -> None:
    """Join the torchrun job's process group, or one line saying who never came (instead of a stack of c10d
    errors): every peer must reach ``MASTER_ADDR:MASTER_PORT`` within the collective timeout."""
    import torch.distributed as dist
    timeout = _timeout()
    try:
        dist.init_process_group(backend, timeout=timeout)
    except (RuntimeError, ValueError) as exc:  # DistStoreError / DistNetworkError are RuntimeErrors
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SolverError(f"torchrun job: rank {rank} of {world} could not join the process group at {where} "
                          f"within {timeout.total_seconds():g} s ({TIMEOUT_ENV}): {reason[:200]}") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn(solver_path: str, options, resume: str | None, kind: str, ids: list[int]) -> None:
    import torch.multiprocessing as mp
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vggproto-workers-") as errors:
        log.info("Spawning %d workers (%s) on %s", len(ids), "nccl" if kind == "cuda" else "gloo",
                 ", ".join(f"{kind}:{i}" for i in ids))
        level = logging.getLogger().getEffectiveLevel()
        options = replace(options, relay_signals=True)
        # measured once, here: workers that measured as they start would count each other's start-up as busy
        threads = max(1, usable_cpus() // len(ids)) if kind == "cpu" else 0
        # ignored while the workers start (they inherit it), then relayed to rank 0 (train.signals)
        ignored = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _job_signals()}
        if ignored:
            ignored[signal.SIGTERM] = signal.getsignal(signal.SIGTERM)
        try:
            context = mp.start_processes(_worker, args=(solver_path, options, resume, kind, ids, port, errors,
                                                        level, threads), nprocs=len(ids), join=False,
                                         start_method=_start_method(kind))
            _relay_signals(context)
            while not context.join(timeout=1.0):
                pass
        except Exception as exc:  # ProcessRaisedException / ProcessExitedException
            rank = getattr(exc, "error_index", None)
            message = _worker_error(errors, rank)
            if message is None:
                code = getattr(exc, "exit_code", None)
                sig = getattr(exc, "signal_name", None)
                message = (f"died with {sig}" if sig else f"exited with status {code}") if code is not None \
                    else str(exc).strip().splitlines()[-1]
            raise SolverError(f"training worker {rank} failed: {message}; all workers were stopped") from None
        finally:
            for sig, old in ignored.items():
                signal.signal(sig, old)


def _relay_signals(context) -> None:
    """Make the launcher pass SIGINT/SIGHUP on to rank 0 as :data:`vggproto.train.signals.RELAYED`, so the
    ``--sigint-effect``/``--sighup-effect`` act on the whole job as in one Caffe process (the all-reduce spreads
    rank 0's request); SIGTERM terminates every worker, so none outlives the launcher."""
    from vggproto.train.signals import RELAYED

    def relay(signum: int, frame: object) -> None:
        targets = context.processes if signum == signal.SIGTERM else context.processes[:1]
        for process in targets:
            try:
                os.kill(process.pid, RELAYED.get(signum, signum))
            except (ProcessLookupError, TypeError):  # already gone / never started
                pass

    for sig in _job_signals():
        signal.signal(sig, relay)
    if _job_signals():
        signal.signal(signal.SIGTERM, relay)


def _start_method(kind: str) -> str:
    """CUDA needs fresh 'spawn' processes; CPU workers fork from a forkserver that imported torch once (fast,
    and safe: the server itself never ran torch's OpenMP pool)."""
    import multiprocessing
    if kind == "cuda" or "forkserver" not in multiprocessing.get_all_start_methods():
        return "spawn"
    multiprocessing.set_forkserver_preload(["torch", "vggproto.train.solver", "vggproto.train.distributed"])
    return "forkserver"


def _job_signals() -> list:
    import threading
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return []
    return [signal.SIGINT] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])


def _worker_error(folder: str, rank: int | None) -> str | None:
    names = [f"rank{rank}.err"] if rank is not None else []
    names += sorted(p.name for p in Path(folder).glob("rank*.err"))
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return None


def _worker(index: int, solver_path: str, options, resume, kind: str, ids: list[int], port: int,
            errors: str, level: int, threads: int) -> None:
    import torch.distributed as dist
    world = len(ids)
    from vggproto.train.signals import defer_relayed
    defer_relayed()  # the launcher relays SIGINT/SIGHUP to rank 0; record them until the solver polls
    logging.basicConfig(level=level if index == 0 else logging.WARNING, format="%(message)s", stream=sys.stderr)
    if options.glog:
        from vggproto.caffe.glog import GlogFormatter
        for handler in logging.getLogger().handlers:
            handler.setFormatter(GlogFormatter())
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(port)
    if kind == "cuda":
        torch.cuda.set_device(ids[index])
        device = f"cuda:{ids[index]}"
    else:
        torch.set_num_threads(threads)   # the launcher's share of the free CPUs
        device = "cpu"
    try:
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", rank=index, world_size=world,
                                timeout=_timeout(options))
        try:
            _run(solver_path, replace(options, rank=index, world_size=world, device=device), resume)
        finally:
            dist.destroy_process_group()
    except VGGProtoError as exc:
        Path(errors, f"rank{index}.err").write_text(str(exc), encoding="utf-8")
        raise SystemExit(1)


def _run(solver_path: str, options, resume) -> None:
    from vggproto.train.solver import Solver
    bucket_mb = float(options.bucket_mb or os.environ.get(BUCKET_ENV, 25))
    solver = Solver(solver_path, options, comm=ProcessGroupComm(torch.device(options.device), bucket_mb))
    fault = options.fault or os.environ.get(FAULT_ENV, "")
    if fault.startswith("kill:"):
        _, rank, at = fault.split(":")
        if int(rank) == options.rank:
            solver.callbacks.append(lambda s: _kill_self() if s.iter == int(at) else None)
    solver.solve(resume)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
