"""The one ``--gpus`` parser (vggproto.net.devices), its click option, and the one TEST scoring loop."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.net.devices import CPU, DeviceError, Devices, parse_devices


@pytest.fixture
def no_torch_calls(monkeypatch):
    """Fail if the parser asks torch about CUDA (syntax errors and the CPU forms must not)."""
    def refuse(*args):
        raise AssertionError("torch.cuda was asked")
    monkeypatch.setattr(torch.cuda, "device_count", refuse)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")


def test_cpu_forms_never_ask_torch(no_torch_calls):
    assert parse_devices(None) is CPU and parse_devices("") == CPU and parse_devices(" CPU ") == CPU
    assert parse_devices("cpu:3") == Devices("cpu", (0, 1, 2))
    assert parse_devices("cpu:2").device == "cpu" and CPU.device == "cpu"


@pytest.mark.parametrize("spec,needle", [
    ("abc", "--gpus abc: expected GPU ids like 0 or 0,1"), ("0,x", "expected GPU ids"), ("-1", "expected GPU ids"),
    (",", "expected GPU ids"), ("cpu:0", "expected cpu:N with N >= 1"), ("cpu:x", "expected cpu:N"),
    ("1,1", "GPU 1 is given more than once"),
])
def test_syntax_errors_are_one_line_and_never_ask_torch(no_torch_calls, spec, needle):
    with pytest.raises(DeviceError, match=needle) as info:
        parse_devices(spec)
    assert "\n" not in str(info.value)


def test_single_device_commands_refuse_lists_before_asking_torch(no_torch_calls):
    for spec in ("0,1", "all", "cpu:2"):
        with pytest.raises(DeviceError, match=f"--gpu {spec}: test runs on one device"):
            parse_devices(spec, "--gpu", single="test")


def test_ids_are_checked_against_what_torch_sees(monkeypatch, two_gpus):
    assert parse_devices("1,0") == Devices("cuda", (1, 0)) and parse_devices("1").device == "cuda:1"
    assert parse_devices("all") == Devices("cuda", (0, 1))
    with pytest.raises(DeviceError, match=r"--gpus 2: no such CUDA device \(GPU 2 does not exist\); torch sees 2 "
                                          r"CUDA devices: 0 \(Fake GPU 0\), 1 \(Fake GPU 1\)"):
        parse_devices("2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    for spec in ("0", "all"):
        with pytest.raises(DeviceError, match=r"no CUDA device is visible to torch \(torch.cuda.device_count\(\) "
                                              r"== 0\)"):
            parse_devices(spec)


@pytest.mark.parametrize("args,needle", [
    (["test", "--gpus", "abc"], "--gpus abc: expected GPU ids"),
    (["test", "--gpu", "0,1"], "--gpus 0,1: test runs on one device"),
    (["evaluate", "--gpus", "cpu:2", "--list", "train_h5.txt"], "--gpus cpu:2: evaluate runs on one device"),
    (["time", "--gpus", "x"], "--gpu x: expected GPU ids"),
    (["train", "sgd_step_solver.prototxt", "--gpus", "0,,x"], "--gpus 0,,x: expected GPU ids"),
])
def test_cli_device_errors_are_one_clean_line(solver_workdir, args, needle):
    solver_workdir(extra=("sgd_step_solver.prototxt",))
    model = ["--model", "train_val.prototxt", "--weights", "init.caffemodel"] if args[0] in ("test", "evaluate") \
        else ["train_val.prototxt"] if args[0] == "time" else []
    result = CliRunner().invoke(main, [*args, *model])
    assert result.exit_code == 2, result.output   # a bad option value is a usage error, as click's own types'
    assert result.output.count("\n") == 1 and result.output.startswith("vggproto: usage error: ")
    assert needle in result.output and "Traceback" not in result.output


def test_solver_test_and_caffe_test_share_one_loop(solver_workdir):
    from vggproto.train.scoring import caffe_test
    from vggproto.train.solver import Solver, TrainOptions
    solver_workdir(extra=("sgd_step_solver.prototxt",))
    text = Path("sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 1")
    Path("t.prototxt").write_text(text + "test_iter: 2\ntest_interval: 100\n")
    solver = Solver("t.prototxt", TrainOptions(weights=("init.caffemodel",), progress=False))
    scores = caffe_test("train_val.prototxt", "init.caffemodel", iterations=2)
    assert solver.test(0) == scores.outputs
    assert dict((name, values) for name, values, _ in scores.outputs)["accuracy"] == [0.25]
    assert scores.loss == pytest.approx(1.76763, abs=1e-5)


def test_usable_cpus_follows_affinity_quota_and_load(monkeypatch):
    import os

    from vggproto.net import devices
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    busy = {"now": 0.0}
    monkeypatch.setattr(devices, "busy_cpus", lambda mask, window_s=0.3: busy["now"])
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/sys/fs/cgroup/cpu.max":
            import io
            return io.StringIO("200000 100000\n")
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr("builtins.open", fake_open)
    assert devices.usable_cpus() == 2                       # the quota caps the 4 CPUs of the mask
    busy["now"] = 1.6
    assert devices.usable_cpus() == 1                       # other work keeps most of them busy
    busy["now"] = 9.0
    assert devices.usable_cpus() == 1                       # never fewer than one


def test_busy_cpus_samples_proc_stat_now_not_the_load_average(monkeypatch):
    """Two /proc/stat samples: cpu0 busy 3/4 of the window, cpu1 idle, cpu2 (outside the mask) ignored."""
    import io
    import os

    from vggproto.net import devices
    samples = iter(["cpu  0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\ncpu2 0 0 0 0 0 0 0 0\n",
                    "cpu  0 0 0 0 0 0 0 0\ncpu0 160 0 15 125 0 0 0 0\ncpu1 0 0 0 300 0 0 0 0\ncpu2 99 0 0 0 0 0 0 0\n"])
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(next(samples)) if path == "/proc/stat"
                        else real_open(path, *a, **k))
    monkeypatch.setattr(os, "getloadavg", lambda: (7.0, 7.0, 7.0))   # a lagging load average is not consulted
    assert devices.busy_cpus([0, 1], window_s=0.0) == pytest.approx(2 * 75 / 200)
