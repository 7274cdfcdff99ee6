"""Snapshots: bitwise resume, Caffe-style resume without the sidecar, atomic writes, signals, NaN, errors."""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from vggproto.errors import SolverError
from vggproto.train import snapshot as snap
from vggproto.train.solver import Solver, TrainOptions

torch.set_num_threads(1)
GOLDEN = Path(__file__).parent / "data" / "golden" / "solver"

SOLVER = """net: "train_val.prototxt"
max_iter: {max_iter}
display: 1
snapshot: {snapshot}
snapshot_prefix: "{prefix}"
random_seed: 1
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "multistep"
stepvalue: 3
stepvalue: 6
gamma: 0.1
{extra}"""


@pytest.fixture
def case(solver_workdir):
    return solver_workdir("run")


def write_solver(name: str, max_iter=10, snapshot=0, prefix="snap", extra="") -> str:
    Path(name).write_text(SOLVER.format(max_iter=max_iter, snapshot=snapshot, prefix=prefix, extra=extra))
    return name


def train(solver: str, resume=None, **opts) -> Solver:
    s = Solver(solver, TrainOptions(progress=False, **opts))
    s.solve(resume)
    return s


def test_resume_after_snapshot_equals_straight_run_bitwise(case):
    # break at iteration 5: not an epoch boundary (5 x 8 = 40 of 64 rows), multistep state in current_step
    train(write_solver("a.prototxt", snapshot=5, prefix="a"), weights=("init.caffemodel",))
    os.makedirs("b")
    train(write_solver("b.prototxt", prefix="b/b"), resume="a_iter_5.solverstate")
    assert Path("a_iter_10.caffemodel").read_bytes()[-2000:] == Path("b/b_iter_10.caffemodel").read_bytes()[-2000:]
    a, b = snap.read_solverstate("a_iter_10.solverstate"), snap.read_solverstate("b/b_iter_10.solverstate")
    assert (a.iter, a.current_step) == (b.iter, b.current_step) == (10, 2)
    for x, y in zip(a.history, b.history, strict=True):
        np.testing.assert_array_equal(x, y)


def test_without_sidecar_data_restarts_at_zero_like_caffe(case):
    train(write_solver("a.prototxt", snapshot=5, prefix="a"), weights=("init.caffemodel",))
    os.remove("a_iter_5.solverstate" + snap.SIDECAR_SUFFIX)
    s = train(write_solver("b.prototxt", prefix="b"), resume="a_iter_5.solverstate")
    # 5 iterations after the restart consumed rows 0..39 (+1 display batch): cursor 48; the straight run: 88
    cursor = list(snap.read_sidecar("b_iter_10.solverstate").train_cursors[0].values())[0]
    assert cursor == 40
    a = snap.read_solverstate("a_iter_10.solverstate")
    b = snap.read_solverstate("b_iter_10.solverstate")
    assert not all(np.array_equal(x, y) for x, y in zip(a.history, b.history))
    assert s.iter == 10


def test_hdf5_snapshots_resume_bitwise(case):
    extra = "snapshot_format: HDF5\n"
    train(write_solver("a.prototxt", snapshot=4, prefix="a", extra=extra), weights=("init.caffemodel",))
    assert Path("a_iter_4.caffemodel.h5").is_file() and Path("a_iter_4.solverstate.h5").is_file()
    train(write_solver("b.prototxt", prefix="b", extra=extra), resume="a_iter_4.solverstate.h5")
    a, b = snap.read_solverstate("a_iter_10.solverstate.h5"), snap.read_solverstate("b_iter_10.solverstate.h5")
    for x, y in zip(a.history, b.history, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("fmt", ["solverstate", "solverstate.h5"])
def test_crash_mid_write_keeps_previous_snapshot(tmp_path, monkeypatch, fmt):
    path = str(tmp_path / f"x.{fmt}")
    good = snap.SolverStateData(3, "m.caffemodel", 1, [np.arange(6, dtype=np.float32).reshape(2, 3)])
    snap.write_solverstate(path, good)

    def crash(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        snap.write_solverstate(path, snap.SolverStateData(9, "n.caffemodel", 2, [np.zeros((2, 3), np.float32)]))
    monkeypatch.undo()
    back = snap.read_solverstate(path)
    assert (back.iter, back.learned_net, back.current_step) == (3, "m.caffemodel", 1)
    np.testing.assert_array_equal(back.history[0], good.history[0])


def _signal_at(sig, at):
    def callback(solver):
        if solver.iter == at:
            os.kill(os.getpid(), sig)
    return callback


def test_sigint_snapshot_effect_snapshots_and_continues(case):
    s = Solver(write_solver("a.prototxt", max_iter=6, prefix="a"),
               TrainOptions(weights=("init.caffemodel",), sigint_effect="snapshot", progress=False))
    s.callbacks.append(_signal_at(signal.SIGINT, 2))
    s.solve()
    assert Path("a_iter_3.caffemodel").is_file() and Path("a_iter_3.solverstate").is_file()
    assert Path("a_iter_6.caffemodel").is_file() and s.iter == 6


def test_sigint_stop_effect_stops_with_final_snapshot(case, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    s = Solver(write_solver("a.prototxt", max_iter=10, prefix="a"),
               TrainOptions(weights=("init.caffemodel",), progress=False))  # Caffe default: stop
    s.callbacks.append(_signal_at(signal.SIGINT, 2))
    s.solve()
    assert s.iter == 3
    assert Path("a_iter_3.caffemodel").is_file()  # snapshot_after_train still runs, as in Caffe
    assert "Optimization stopped early." in caplog.messages
    assert not any(m.startswith("Optimization Done") for m in caplog.messages)


def test_sighup_none_is_ignored(case):
    s = Solver(write_solver("a.prototxt", max_iter=4, prefix="a"),
               TrainOptions(weights=("init.caffemodel",), sighup_effect="none", progress=False))
    s.callbacks.append(_signal_at(signal.SIGHUP, 1))
    s.solve()
    assert s.iter == 4 and not Path("a_iter_2.caffemodel").exists()


def test_nan_loss_stops_naming_iteration_and_layer_and_keeps_last_snapshot(case):
    s = Solver(write_solver("a.prototxt", max_iter=10, snapshot=2, prefix="a"),
               TrainOptions(weights=("init.caffemodel",), progress=False))

    def poison(solver):
        if solver.iter == 3:
            with torch.no_grad():
                solver.net.params["fc"][0][0, 0] = float("nan")
    s.callbacks.append(poison)
    before = Path("a_iter_2.caffemodel") if False else None
    with pytest.raises(SolverError, match=r"iteration 3: the training loss is nan.*blob 'fc' \(layer 'fc'\)"
                                          r".*last good snapshot is a_iter_2.solverstate"):
        s.solve()
    assert before is None
    assert Path("a_iter_2.caffemodel").is_file() and not Path("a_iter_4.caffemodel").exists()


def test_unwritable_prefix_fails_at_start(case):
    with pytest.raises(SolverError, match="snapshot_prefix 'missing_dir/x'"):
        Solver(write_solver("a.prototxt", prefix="missing_dir/x"), TrainOptions(progress=False))


def test_history_of_another_solver_type_is_refused(case):
    shutil.copy(GOLDEN / "adam_iter_20.solverstate", "adam_iter_20.solverstate")
    s = Solver(write_solver("a.prototxt", max_iter=30, prefix="a"), TrainOptions(progress=False))
    with pytest.raises(SolverError, match="holds 8 history blobs but a SGD solver on this net needs 4"):
        s.solve("adam_iter_20.solverstate")


def test_corrupt_solverstate_is_a_clear_error(case):
    Path("bad.solverstate").write_bytes(b"\xff\xff\xff garbage")
    with pytest.raises(SolverError, match="bad.solverstate"):
        snap.read_solverstate("bad.solverstate")


def test_binary_solverstate_is_a_valid_caffe_message(tmp_path):
    from vggproto.caffe.proto import caffe_pb2
    path = str(tmp_path / "s.solverstate")
    hist = [np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5, np.array([1.5], np.float32)]
    snap.write_solverstate(path, snap.SolverStateData(7, "x_iter_7.caffemodel", 0, hist))
    proto = caffe_pb2.SolverState()
    proto.ParseFromString(Path(path).read_bytes())
    assert (proto.iter, proto.learned_net, proto.current_step) == (7, "x_iter_7.caffemodel", 0)
    assert proto.HasField("current_step")  # Caffe always sets it
    assert [tuple(b.shape.dim) for b in proto.history] == [(3, 4), (1,)]
    np.testing.assert_array_equal(np.array(proto.history[0].data, np.float32).reshape(3, 4), hist[0])
    back = snap.read_solverstate(path)
    for x, y in zip(back.history, hist, strict=True):
        np.testing.assert_array_equal(x, y)


def test_sigint_during_test_interrupts_like_caffe(case, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    extra = "test_iter: 3\ntest_interval: 2\n"
    s = Solver(write_solver("a.prototxt", max_iter=10, prefix="a", extra=extra),
               TrainOptions(weights=("init.caffemodel",), progress=False))
    net = None

    def arm(solver):
        nonlocal net
        if solver.iter == 1:  # the next test (iteration 2) is interrupted on its first batch
            net = solver.test_nets[0]
            original = net.forward

            def forward(**kw):
                os.kill(os.getpid(), signal.SIGINT)
                net.forward = original
                return original(**kw)
            net.forward = forward
    s.callbacks.append(arm)
    s.solve()
    assert "Test interrupted." in caplog.messages and "Optimization stopped early." in caplog.messages
    assert s.iter == 2 and Path("a_iter_2.caffemodel").is_file()


@pytest.mark.parametrize("fmt, suffix", [("BINARYPROTO", ".caffemodel"), ("HDF5", ".caffemodel.h5")])
def test_snapshot_diff_writes_the_last_update_as_each_blob_diff(case, fmt, suffix):
    """Caffe (solver.cpp Snapshot, blob.cpp ToProto/ToHDF5 with write_diff): after ApplyUpdate a blob's diff holds
    the step just taken (data -= diff), so diff at iteration 2 = weights at 1 - weights at 2."""
    from vggproto.weights.caffemodel import read_weights
    extra = f"snapshot_diff: true\nsnapshot_format: {fmt}\n"
    train(write_solver("d.prototxt", max_iter=2, snapshot=1, prefix="d", extra=extra), weights=("init.caffemodel",))
    first, second = read_weights(f"d_iter_1{suffix}"), read_weights(f"d_iter_2{suffix}")
    diffs = _diffs(f"d_iter_2{suffix}")
    assert sorted(diffs) == sorted(second) and sum(len(v) for v in diffs.values()) > 0
    for name, blobs in second.items():
        for w1, w2, diff in zip(first[name], blobs, diffs[name], strict=True):
            assert diff.shape == w2.shape and np.abs(diff).max() > 0
            np.testing.assert_allclose(diff, w1 - w2, atol=1e-6)
    without = train(write_solver("n.prototxt", max_iter=1, snapshot=1, prefix="n",
                                 extra=f"snapshot_format: {fmt}\n"), weights=("init.caffemodel",))
    assert without.iter == 1 and not _diffs(f"n_iter_1{suffix}")


def _diffs(path: str) -> dict[str, list[np.ndarray]]:
    """Blob diffs read independently of vggproto: protobuf for caffemodels, h5py for HDF5."""
    if path.endswith(".h5"):
        import h5py
        with h5py.File(path, "r") as f:
            if "diff" not in f:
                return {}
            return {name: [f["diff"][name][str(i)][()] for i in range(len(f["diff"][name]))]
                    for name in f["diff"] if len(f["diff"][name])}
    from vggproto.caffe.proto import caffe_pb2
    net = caffe_pb2.NetParameter.FromString(Path(path).read_bytes())
    return {layer.name: [np.array(b.diff, np.float32).reshape(tuple(b.shape.dim)) for b in layer.blobs]
            for layer in net.layer if any(len(b.diff) for b in layer.blobs)}


@pytest.mark.parametrize("fmt, suffix", [("BINARYPROTO", ".caffemodel"), ("HDF5", ".caffemodel.h5")])
def test_snapshot_log_lines_name_the_files_written_not_the_temporaries(case, caplog, fmt, suffix):
    caplog.set_level(logging.INFO, logger="vggproto")
    os.makedirs("snaps")
    train(write_solver("a.prototxt", max_iter=2, snapshot=2, prefix="snaps/D", extra=f"snapshot_format: {fmt}\n"))
    assert Path(f"snaps/D_iter_2{suffix}").is_file()
    assert not [m for m in caplog.messages if ".tmp" in m]
    assert any(m.startswith("Snapshotting to") and m.endswith(f"snaps/D_iter_2{suffix}") for m in caplog.messages)
    if fmt == "BINARYPROTO":
        assert any(re.fullmatch(r"Wrote \d+ bytes of weights to snaps/D_iter_2\.caffemodel", m)
                   for m in caplog.messages)


def test_sidecar_reads_older_files_and_refuses_a_changed_process_count(tmp_path, caplog):
    state = tmp_path / "x.solverstate"
    (tmp_path / ("x.solverstate" + snap.SIDECAR_SUFFIX)).write_text('{"iter": 4, "train_cursors": [{"d": 8}], '
                                                                       '"plateau": null, "extra": 1}')
    side = snap.read_sidecar(str(state))
    assert side == snap.Sidecar(iter=4, train_cursors=[{"d": 8}])
    assert side.cursors_of(0, 1) == {"d": 8} and side.cursors_of(0, 2) == {}
    assert "taken with 1 processes, this run has 2" in caplog.text
    (tmp_path / ("x.solverstate" + snap.SIDECAR_SUFFIX)).write_text("[1, 2]")
    with pytest.raises(SolverError, match="unreadable vggproto sidecar"):
        snap.read_sidecar(str(state))
