"""Faults during training: snapshot pairs, full disks, kill -9, signals through the launcher, NaN, dead workers,
multi-node torchrun without a cluster.

Subprocess tests run ``python -m vggproto`` with ``OMP_NUM_THREADS=1`` on the golden tiny solver case
(``tests/conftest.py`` ``solver_workdir``); each marks its processes with an environment variable so the test can
prove none is left behind.
"""
from __future__ import annotations

import errno
import logging
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vggproto.errors import DataError, SolverError
from vggproto.train import log as tl
from vggproto.train import snapshot as snap
from vggproto.train.solver import Solver, TrainOptions
from vggproto.weights.caffemodel import read_weights

torch.set_num_threads(1)

from test_snapshot import SOLVER as _SNAPSHOT_SOLVER  # noqa: E402 (the one tiny-solver template)

SOLVER = _SNAPSHOT_SOLVER.replace("display: 1", "display: {display}")


@pytest.fixture
def case(solver_workdir, monkeypatch):
    # subprocesses and in-process runs on one thread each, whatever an earlier test in this worker set: the
    # bitwise-resume tests compare them, and 1- and 2-thread convolutions may differ in the last bit
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    return solver_workdir("run")


def write_solver(name: str, max_iter=6, snapshot=0, prefix="snap", display=1, extra="") -> str:
    Path(name).write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot, prefix=prefix, display=display,
                                        extra=extra))
    return name


def train(solver: str, resume=None, **opts) -> Solver:
    s = Solver(solver, TrainOptions(progress=False, **opts))
    s.solve(resume)
    return s


def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ------------------------------------------------------------------------------------------------------------------
# The snapshot pair
# ------------------------------------------------------------------------------------------------------------------

def test_snapshot_renames_model_then_sidecar_then_solverstate_last(case, monkeypatch):
    renamed, real = [], os.replace

    def spy(src, dst):
        if Path(src).name.endswith(f".{os.getpid()}.tmp") and not Path(src).name.startswith(".."):
            renamed.append(Path(dst).name)
        return real(src, dst)
    monkeypatch.setattr(snap.os, "replace", spy)
    train(write_solver("a.prototxt", max_iter=2, snapshot=2, prefix="a"), weights=("init.caffemodel",))
    pair = [n for n in renamed if n.startswith("a_iter_2")]
    assert pair == ["a_iter_2.caffemodel", "a_iter_2.solverstate.vggproto.json", "a_iter_2.solverstate"]
    assert not list(case.glob(".*.tmp*"))


@pytest.mark.parametrize("where", ["model", "solverstate"])
def test_disk_full_during_a_snapshot_stops_keeping_the_previous_one(case, monkeypatch, where):
    # the disk fills while the streaming writer (inside the atomic writer) writes one file of iteration 4's pair
    import vggproto.weights.caffemodel as caffemodel
    name = "a_iter_4.caffemodel" if where == "model" else "a_iter_4.solverstate"
    real = caffemodel.write_part

    def write_part(handle, part):
        if f".{name}." in Path(handle.name).name:
            enospc()
        return real(handle, part)
    monkeypatch.setattr(caffemodel, "write_part", write_part)
    with pytest.raises(SolverError, match=rf"^disk full writing {name} \([0-9.]+ MB free in .*\); training "
                                          r"stopped, the previous snapshot a_iter_2.solverstate is intact$"):
        train(write_solver("a.prototxt", snapshot=2, prefix="a"), weights=("init.caffemodel",))
    assert sorted(p.name for p in case.glob("a_iter_*")) == [
        "a_iter_2.caffemodel", "a_iter_2.solverstate", "a_iter_2.solverstate.vggproto.json"]
    assert not list(case.glob(".a_iter*"))  # no temporaries left
    train(write_solver("b.prototxt", prefix="b"), resume="a_iter_2.solverstate")  # the previous pair resumes


def test_disk_full_in_the_csv_log_stops_naming_it(case):
    class Full:
        def write(self, text):
            return len(text)

        def flush(self):
            enospc()

        def close(self):
            enospc()

    s = Solver(write_solver("a.prototxt", snapshot=2, prefix="a"), TrainOptions(progress=False))
    s.callbacks.append(lambda solver: setattr(solver.csv, "_handle", Full()) if solver.iter == 3 else None)
    with pytest.raises(SolverError, match=r"disk full writing a_log.csv \(.* MB free .*\); training stopped, "
                                          r"the previous snapshot a_iter_2.solverstate is intact"):
        s.solve()
    assert Path("a_iter_2.solverstate").is_file() and not Path("a_iter_4.solverstate").exists()


def test_stale_temporaries_of_a_killed_run_are_removed_at_start(case, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = [f".a_iter_2.caffemodel.{dead.pid}.tmp", f".a_iter_2.solverstate.h5.{dead.pid}.tmp.h5",
             f"..a_iter_4.solverstate.{dead.pid}.tmp.{dead.pid}.tmp"]
    kept = [f".other_iter_2.caffemodel.{dead.pid}.tmp", f".a_iter_2.caffemodel.{os.getppid()}.tmp", "a_notes.tmp"]
    for name in stale + kept:
        Path(name).write_bytes(b"partial")
    with caplog.at_level(logging.INFO, logger="vggproto"):
        Solver(write_solver("a.prototxt", snapshot=2, prefix="a"), TrainOptions(progress=False))
    assert [name for name in stale + kept if Path(name).exists()] == kept
    lines = [r.getMessage() for r in caplog.records if "temporary file left" in r.getMessage()]
    assert len(lines) == 3 and all(name in " ".join(lines) for name in stale)


def test_resume_from_a_solverstate_without_its_caffemodel_is_one_clear_error(case):
    train(write_solver("a.prototxt", max_iter=2, snapshot=2, prefix="a"))
    os.remove("a_iter_2.caffemodel")
    with pytest.raises(SolverError, match=r"a_iter_2.solverstate: incomplete snapshot: its caffemodel "
                                          r"\(learned_net 'a_iter_2.caffemodel'\) is missing"):
        train(write_solver("b.prototxt", prefix="b"), resume="a_iter_2.solverstate")


# ------------------------------------------------------------------------------------------------------------------
# Subprocess helpers
# ------------------------------------------------------------------------------------------------------------------

class Run:
    """``python -m vggproto ARGS`` in the CWD, stderr collected by a thread, processes marked for the leak check."""

    def __init__(self, *args: str, env: dict | None = None, module=("-m", "vggproto")):
        self.mark = uuid.uuid4().hex
        full = dict(os.environ, OMP_NUM_THREADS="1", VGGPROTO_TEST_MARK=self.mark, **(env or {}))
        # a session of its own: its process group is what a terminal's Ctrl-C would reach
        self.proc = subprocess.Popen([sys.executable, *module, *args], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, text=True, env=full, start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.proc.poll() is None or any(text in line for line in self.lines), "\n".join(self.lines)
            assert time.monotonic() < deadline, f"no '{text}' within {timeout}s:\n" + "\n".join(self.lines)
            time.sleep(0.02)

    def finish(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self.reader.join(5)
        return code

    def leftovers(self) -> list[int]:
        """Processes still alive that carry this run's mark (workers, forkserver)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if f"VGGPROTO_TEST_MARK={self.mark}".encode() in (entry / "environ").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    def assert_no_leftovers(self, grace: float = 10) -> None:
        deadline = time.monotonic() + grace
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert self.leftovers() == [], "processes left behind"


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists() or not hasattr(signal, "SIGHUP"),
                                reason="POSIX /proc needed")


# ------------------------------------------------------------------------------------------------------------------
# kill -9, bitwise resume
# ------------------------------------------------------------------------------------------------------------------

def check_snapshots_complete(folder: Path) -> list[Path]:
    """Every caffemodel/solverstate present loads, and every solverstate has its caffemodel."""
    states = sorted(folder.glob("k_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    for model in folder.glob("k_iter_*.caffemodel"):
        assert read_weights(str(model))
    for state in states:
        data = snap.read_solverstate(str(state))
        model = read_weights(snap.resolve_learned_net(str(state), data.learned_net))
        assert data.iter == int(state.stem.split("_")[-1])
        assert [h.size for h in data.history] == [b.size for blobs in model.values() for b in blobs]  # SGD: N
        assert snap.read_sidecar(str(state)).iter == data.iter
    return states


@needs_proc
@pytest.mark.slow
def test_kill_9_at_random_moments_leaves_only_complete_snapshots_and_resume_is_bitwise(case):
    write_solver("k.prototxt", max_iter=400, snapshot=1, prefix="k", display=0)
    rng = random.Random(7)
    for attempt in range(3):
        run = Run("train", "k.prototxt", "--weights", "init.caffemodel")
        deadline = time.monotonic() + 60
        while not list(case.glob("k_iter_*.solverstate")) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.6))
        run.proc.send_signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        states = check_snapshots_complete(case)
        assert states, "\n".join(run.lines)
    latest = states[-1]
    it = int(latest.stem.split("_")[-1])
    assert it < 400
    # resume the killed run's latest pair to it + 10, against a straight run of it + 10 iterations
    train(write_solver("straight.prototxt", max_iter=it + 10, prefix="s"), weights=("init.caffemodel",))
    train(write_solver("resumed.prototxt", max_iter=it + 10, prefix="r"), resume=str(latest))
    straight, resumed = read_weights(f"s_iter_{it + 10}.caffemodel"), read_weights(f"r_iter_{it + 10}.caffemodel")
    for layer in straight:
        for a, b in zip(straight[layer], resumed[layer], strict=True):
            assert np.array_equal(a, b), layer


def test_twenty_iterations_equal_ten_plus_resumed_ten_bitwise(case):
    train(write_solver("straight.prototxt", max_iter=20, prefix="s"), weights=("init.caffemodel",))
    train(write_solver("first.prototxt", max_iter=10, snapshot=10, prefix="f"), weights=("init.caffemodel",))
    train(write_solver("second.prototxt", max_iter=20, prefix="r"), resume="f_iter_10.solverstate")
    straight, resumed = read_weights("s_iter_20.caffemodel"), read_weights("r_iter_20.caffemodel")
    for layer in straight:
        for a, b in zip(straight[layer], resumed[layer], strict=True):
            assert np.array_equal(a, b), layer
    a, b = snap.read_solverstate("s_iter_20.solverstate"), snap.read_solverstate("r_iter_20.solverstate")
    for x, y in zip(a.history, b.history, strict=True):
        assert np.array_equal(x, y)


# ------------------------------------------------------------------------------------------------------------------
# NaN loss / NaN label through the CLI
# ------------------------------------------------------------------------------------------------------------------

@needs_proc
def test_nan_loss_through_the_cli_names_iteration_and_blob_and_exits_nonzero(case):
    with h5py.File("train.h5", "r+") as handle:  # an infinite input: the loss becomes non-finite at once
        handle["data"][0, 0, 0, 0] = np.float32("inf")
    run = Run("train", write_solver("a.prototxt", prefix="a"), "--weights", "init.caffemodel")
    assert run.finish() == 1
    error = [line for line in run.lines if line.startswith("vggproto: error:")]
    assert len(error) == 1 and "iteration 0: the training loss is nan" in error[0], "\n".join(run.lines)
    assert "the first top that became non-finite is blob 'data' (layer 'data')" in error[0]


def test_nan_label_names_the_iteration_and_says_it_is_nan(case):
    with h5py.File("train.h5", "r+") as handle:
        handle["label"][11] = np.float32("nan")  # record 11: the second batch of 8
    with pytest.raises(DataError, match=r"^iteration 1: layer '.*' \(SoftmaxWithLoss\): label nan \(at position "
                                        r"3\) is not a finite number"):
        train(write_solver("a.prototxt", prefix="a"))


# ------------------------------------------------------------------------------------------------------------------
# Signals through the launcher, dead workers
# ------------------------------------------------------------------------------------------------------------------

@needs_proc
@pytest.mark.slow
def test_sigint_and_sighup_to_the_launcher_act_on_the_whole_cpu2_job(case):
    write_solver("sig.prototxt", max_iter=100000, prefix="sig", display=1)
    run = Run("train", "sig.prototxt", "--gpus", "cpu:2", "--sigint-effect", "snapshot", "--sighup-effect", "stop")
    run.wait_for("Iteration 1 (")
    # Ctrl-C in a terminal: SIGINT to the whole process group (launcher, forkserver, workers) asks once
    os.killpg(run.proc.pid, signal.SIGINT)  # snapshot and go on
    run.wait_for("Snapshotting solver state")
    time.sleep(0.5)
    first = sorted(case.glob("sig_iter_*.solverstate"))
    assert len(first) == 1
    run.proc.send_signal(signal.SIGHUP)  # kill -HUP <launcher>: stop, final snapshot, exit 0
    assert run.finish() == 0, "\n".join(run.lines)
    assert "Optimization stopped early." in "\n".join(run.lines)
    states = sorted(case.glob("sig_iter_*.solverstate"), key=lambda p: int(p.stem.split("_")[-1]))
    assert len(states) == 2 and int(states[-1].stem.split("_")[-1]) < 100000
    assert sum("Caught SIGINT" in line for line in run.lines) == 1
    assert sum("Caught SIGHUP" in line for line in run.lines) == 1
    run.assert_no_leftovers()


@needs_proc
@pytest.mark.slow
def test_sigterm_to_the_launcher_ends_every_worker(case):
    write_solver("term.prototxt", max_iter=100000, prefix="term", display=1)
    run = Run("train", "term.prototxt", "--gpus", "cpu:2")
    run.wait_for("Iteration 1 (")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 1
    assert [line for line in run.lines if line.startswith("vggproto: error:")][0].endswith(
        "died with SIGTERM; all workers were stopped")
    run.assert_no_leftovers()


@needs_proc
@pytest.mark.slow
def test_a_sigkilled_worker_ends_the_cli_job_nonzero_within_60s_leaving_no_process(case):
    write_solver("kill.prototxt", max_iter=100000, prefix="kill", display=10)
    start = time.monotonic()
    run = Run("train", "kill.prototxt", "--gpus", "cpu:2",
              env={"VGGPROTO_FAULT_INJECT": "kill:1:5", "VGGPROTO_COLLECTIVE_TIMEOUT_S": "30"})
    assert run.finish(timeout=90) == 1
    assert time.monotonic() - start < 60
    error = [line for line in run.lines if line.startswith("vggproto: error:")]
    assert error == ["vggproto: error: training worker 1 failed: died with SIGKILL; all workers were stopped"]
    run.assert_no_leftovers()


# ------------------------------------------------------------------------------------------------------------------
# Warnings, progress bar
# ------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("old, new, says", [
    ("base_lr: 0.05", "base_lr: -0.01", "base_lr: -0.01 is negative"),
    ("stepvalue: 6", "stepvalue: 2", "stepvalue: 2 does not increase (it follows 3)")])
def test_values_caffe_accepts_but_nobody_means_are_refused_at_their_line(case, old, new, says):
    path = write_solver("a.prototxt")
    text = Path(path).read_text()
    assert old in text
    Path(path).write_text(text.replace(old, new))
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.strip() == old)
    with pytest.raises(SolverError) as error:
        train(path)
    assert str(error.value).startswith(f"{path}:{line}: {says}")
    assert "Caffe would have accepted it" in str(error.value)


def test_a_run_shorter_than_display_logs_its_last_iteration(case, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    train(write_solver("a.prototxt", max_iter=3, display=20))
    iterations = [m for m in caplog.messages if re.match(r"Iteration \d+(,| \()", m) and "loss" in m]
    assert [m.split()[1].rstrip(",") for m in iterations] == ["0", "3"], iterations


def test_progress_bar_shows_the_real_image_rate(case, monkeypatch):
    seen = []
    real_close = tl.Progress.close

    def close(self):
        seen.append((self.images_per_iter, self.bar.postfix if self.bar is not None else None))
        real_close(self)
    monkeypatch.setattr(tl.Progress, "close", close)
    s = Solver(write_solver("a.prototxt", max_iter=30, prefix="a"), TrainOptions(progress=True))
    s.solve()
    images, postfix = seen[0]
    assert images == 8  # batch 8 × iter_size 1 × 1 process, read after the first forward
    assert "img/s=" in postfix and float(postfix.split("img/s=")[1]) > 0


# ------------------------------------------------------------------------------------------------------------------
# Multi-node without a cluster: two torchrun "nodes" on localhost
# ------------------------------------------------------------------------------------------------------------------

def _free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun(node: int, port: int, *args: str, nnodes: int = 2, extra=()) -> Run:
    return Run(f"--nnodes={nnodes}", "--nproc-per-node=2", f"--node-rank={node}", "--rdzv-backend=c10d",
               f"--rdzv-endpoint=127.0.0.1:{port}", *extra, "-m", "vggproto", *args,
               module=("-m", "torch.distributed.run"))


@needs_proc
@pytest.mark.slow
def test_two_torchrun_nodes_of_two_workers_equal_one_process(case):
    one = write_solver("one.prototxt", prefix="one", extra="clip_gradients: 2.0\n")
    four = write_solver("four.prototxt", prefix="four", extra="clip_gradients: 2.0\n")
    train(one, weights=("init.caffemodel",))
    port = _free_port()
    args = ("train", four, "--gpus", "cpu:4", "--weights", "init.caffemodel")
    nodes = [_torchrun(node, port, *args) for node in (0, 1)]
    codes = [node.finish(timeout=180) for node in nodes]
    assert codes == [0, 0], "\n".join(nodes[0].lines + nodes[1].lines)
    a, b = read_weights("one_iter_6.caffemodel"), read_weights("four_iter_6.caffemodel")
    for layer in a:
        for x, y in zip(a[layer], b[layer], strict=True):
            np.testing.assert_allclose(x, y, rtol=0, atol=1e-6)
    for node in nodes:
        node.assert_no_leftovers()


@needs_proc
@pytest.mark.slow
def test_a_torchrun_node_whose_partner_never_arrives_fails_within_the_timeout(case):
    start = time.monotonic()
    run = _torchrun(0, _free_port(), "train", write_solver("a.prototxt", prefix="a"), "--gpus", "cpu:4",
                    extra=("--rdzv-conf=join_timeout=5",))
    assert run.finish(timeout=120) != 0
    assert time.monotonic() - start < 60
    # torchrun's agent gives up before any worker starts; its last line names the cause
    assert run.lines and run.lines[-1].endswith("RendezvousTimeoutError"), "\n".join(run.lines)
    run.assert_no_leftovers()


@needs_proc
def test_a_torchrun_worker_whose_peers_never_join_fails_with_one_line(case):
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()), "VGGPROTO_COLLECTIVE_TIMEOUT_S": "5"}
    start = time.monotonic()
    run = Run("train", write_solver("a.prototxt", prefix="a"), env=env)
    assert run.finish(timeout=90) == 1
    assert time.monotonic() - start < 45
    error = [line for line in run.lines if line.startswith("vggproto: error:")]
    assert len(error) == 1 and "rank 0 of 2" in error[0] and "5 s" in error[0], "\n".join(run.lines)
