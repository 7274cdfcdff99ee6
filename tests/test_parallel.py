"""Multi-process training on gloo CPU workers: equivalence with one process, sharding, failure propagation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vggproto.errors import SolverError
from vggproto.net.devices import Devices
from vggproto.net.devices import parse_devices as parse_gpus
from vggproto.train.distributed import FAULT_ENV, launch
from vggproto.train.solver import TrainOptions
from vggproto.weights.caffemodel import read_weights

SOLVER = """net: "train_val.prototxt"
max_iter: 5
display: 1
snapshot_prefix: "{prefix}"
random_seed: 1
base_lr: 0.05
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
clip_gradients: 2.0
"""


@pytest.fixture
def case(solver_workdir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return solver_workdir()


def solver(prefix: str) -> str:
    Path(f"{prefix}.prototxt").write_text(SOLVER.format(prefix=prefix))
    return f"{prefix}.prototxt"


def test_two_gloo_workers_equal_one_process_on_the_same_global_batch(case):
    opts = TrainOptions(weights=("init.caffemodel",), progress=False)
    launch(solver("one"), opts)
    launch(solver("two"), opts, gpus=parse_gpus("cpu:2"))
    one, two = read_weights("one_iter_5.caffemodel"), read_weights("two_iter_5.caffemodel")
    init = read_weights("init.caffemodel")
    for layer in one:
        for a, b, c in zip(one[layer], two[layer], init[layer]):
            assert not np.allclose(a, c)
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # rank 0 alone wrote the snapshot and the CSV
    assert sorted(p.name for p in case.glob("two_*")) == ["two_iter_5.caffemodel", "two_iter_5.solverstate",
                                                          "two_iter_5.solverstate.vggproto.json", "two_log.csv"]


def test_per_gpu_batch_gives_bvlc_semantics(case):
    # BVLC: each worker takes the prototxt batch (8) → 16 rows per step; equal to 1 process with batch 16
    Path("train16.prototxt").write_text(Path("train_val.prototxt").read_text().replace("batch_size: 8",
                                                                                       "batch_size: 16"))
    Path("one.prototxt").write_text(SOLVER.format(prefix="one").replace("train_val", "train16"))
    launch("one.prototxt", TrainOptions(weights=("init.caffemodel",), progress=False))
    launch(solver("two"), TrainOptions(weights=("init.caffemodel",), progress=False, per_gpu_batch=True),
           gpus=parse_gpus("cpu:2"))
    one, two = read_weights("one_iter_5.caffemodel"), read_weights("two_iter_5.caffemodel")
    for layer in one:
        for a, b in zip(one[layer], two[layer]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_indivisible_global_batch_is_a_clear_error(case):
    with pytest.raises(SolverError, match="worker .* failed: .*not divisible by 3"):
        launch(solver("three"), TrainOptions(progress=False), gpus=parse_gpus("cpu:3"))


def test_killed_worker_ends_the_job_nonzero_without_hanging(case, monkeypatch):
    import faulthandler
    Path("kill.prototxt").write_text(SOLVER.format(prefix="kill").replace("max_iter: 5", "max_iter: 1000"))
    monkeypatch.setenv(FAULT_ENV, "kill:1:3")
    monkeypatch.setenv("VGGPROTO_COLLECTIVE_TIMEOUT_S", "60")
    faulthandler.dump_traceback_later(240, exit=True)  # a hang fails the run instead of blocking it
    try:
        with pytest.raises(SolverError, match="training worker 1 failed: died with SIGKILL"):
            launch("kill.prototxt", TrainOptions(progress=False), gpus=parse_gpus("cpu:2"))
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert not Path("kill_iter_1000.caffemodel").exists()


def test_parse_gpus():
    assert parse_gpus(None) == Devices("cpu", (0,))
    assert parse_gpus("cpu:3") == Devices("cpu", (0, 1, 2))
    with pytest.raises(SolverError, match="cpu:N"):
        parse_gpus("cpu:x")
    import torch
    if torch.cuda.device_count() == 0:
        with pytest.raises(SolverError, match="does not exist"):
            parse_gpus("0,1")


@pytest.mark.parametrize("layer_wise_reduce", ["true", "false"])
def test_overlapped_buckets_with_iter_size_equal_one_process(case, monkeypatch, layer_wise_reduce):
    # tiny buckets (several per iteration) and iter_size 2: only the last backward all-reduces; with
    # layer_wise_reduce: false (Caffe's NCCL option) one all-reduce after backward gives the same weights
    monkeypatch.setenv("VGGPROTO_BUCKET_MB", "0.0005")
    opts = TrainOptions(weights=("init.caffemodel",), progress=False)
    for prefix in ("one", "two"):
        Path(f"{prefix}.prototxt").write_text(SOLVER.format(prefix=prefix) + "iter_size: 2\n"
                                              f"layer_wise_reduce: {layer_wise_reduce}\n")
    launch("one.prototxt", opts)
    launch("two.prototxt", opts, gpus=parse_gpus("cpu:2"))
    one, two = read_weights("one_iter_5.caffemodel"), read_weights("two_iter_5.caffemodel")
    for layer in one:
        for a, b in zip(one[layer], two[layer]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)


def test_grad_sync_buckets_cover_every_param_in_reverse_order():
    import torch

    from vggproto.train.distributed import GradSync
    params = [torch.zeros(n, requires_grad=True) for n in (100, 10, 300, 5)]
    sync = GradSync(params, bucket_bytes=4 * 320)
    assert sync.buckets == [[3, 2, 1], [0]]  # 20 + 1200 + 40 bytes fit in 1280; 400 does not
    assert sorted(i for b in sync.buckets for i in b) == [0, 1, 2, 3]


def test_joins_a_torchrun_job_from_the_environment(case, monkeypatch):
    # a one-process torchrun job: the launcher must join it (gloo, Comm path) instead of training alone
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    import torch.distributed as dist

    import vggproto.train.distributed as parallel
    joined, real = [], parallel._run

    def spy(*args):
        joined.append(dist.get_world_size())
        return real(*args)
    monkeypatch.setattr(parallel, "_run", spy)
    launch(solver("tr"), TrainOptions(weights=("init.caffemodel",), progress=False))
    assert joined == [1]
    assert not dist.is_initialized()  # the job's process group was torn down
    monkeypatch.delenv("RANK")
    launch(solver("one"), TrainOptions(weights=("init.caffemodel",), progress=False))
    a, b = read_weights("tr_iter_5.caffemodel"), read_weights("one_iter_5.caffemodel")
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_array_equal(x, y)
