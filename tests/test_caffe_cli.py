"""Caffe's own command lines (`vggproto caffe train`, `convert_imageset`, ... in gflags spellings), `doctor`,
one-line usage errors and progress (a bar on a terminal, periodic lines in a log)."""
from __future__ import annotations

import io
import logging
import sys
import types
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import vggproto
import vggproto.train.run as train_run
from vggproto.caffe.proto import caffe_pb2
from vggproto.cli import main
from vggproto.commands.data import convert_imageset_cmd as convert_imageset_tool
from vggproto.commands.gflags import gflags_args
from vggproto.data.convert import convert_imageset
from vggproto.data.db import DBReader
from vggproto.data.progress import Progress
from vggproto.net import doctor

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data" / "golden" / "data"
UPGRADE = Path(__file__).parent / "data" / "golden" / "upgrade"
ROOT = str(DATA) + "/"


@pytest.fixture
def case(solver_workdir):
    folder = solver_workdir(extra=("sgd_step_solver.prototxt",))
    text = (folder / "sgd_step_solver.prototxt").read_text().replace("max_iter: 20", "max_iter: 2")
    (folder / "sgd_step_solver.prototxt").write_text(text)
    return folder


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# ------------------------------------------------------------------------------------------ the gflags normaliser

@pytest.mark.parametrize("args", [
    ["-resize_width", "8", "-gray"], ["-resize_width=8", "-gray=true"], ["--resize_width=8", "--gray"],
    ["--resize-width", "8", "-gray=1"], ["-resize-width=8", "--gray=yes"],
])
def test_gflags_spellings_become_click_long_options(args):
    out = gflags_args(convert_imageset_tool, args)
    assert out in (["--resize-width", "8", "--gray"], ["--resize-width=8", "--gray"])


def test_gflags_booleans_values_and_passthrough():
    cmd = convert_imageset_tool
    assert gflags_args(cmd, ["-nogray", "-gray=false", "-shuffle=0"]) == []
    assert gflags_args(cmd, ["-encode_type", "-x", "-h", "a/", "--", "-gray"]) == ["--encode-type", "-x", "-h", "a/",
                                                                                   "--", "-gray"]
    with pytest.raises(click.UsageError, match="boolean"):
        gflags_args(cmd, ["-gray=maybe"])
    with pytest.raises(click.NoSuchOption, match="-grey"):
        gflags_args(cmd, ["-grey"])


# ------------------------------------------------------------------- each tool defined once, Caffe's spellings

ALIASES = [(("caffe", "train"), ("train",)), (("caffe", "test"), ("test",)), (("caffe", "time"), ("time",)),
           (("caffe", "device_query"), ("device_query",)), (("convert_imageset",), ("convert-imageset",)),
           (("compute_image_mean",), ("compute-mean",)), (("upgrade_net_proto_text",), ("upgrade",)),
           (("upgrade_net_proto_binary",), ("upgrade",)), (("upgrade_solver_proto_text",), ("upgrade",))]


def _command(path: tuple[str, ...]) -> click.Command:
    command = main
    for name in path:
        command = command.get_command(click.Context(command), name)
    return command


def _defaults(command: click.Command) -> dict:
    return {p.name: p.default for p in command.params}


@pytest.mark.parametrize("caffe, ours", ALIASES)
def test_every_caffe_spelling_is_the_vggproto_command(caffe, ours):
    alias, command = _command(caffe), _command(ours)
    assert alias.callback is command.callback and type(alias) is type(command)
    assert [p.name for p in alias.params] == [p.name for p in command.params]
    differ = {k for k, v in _defaults(alias).items() if _defaults(command)[k] != v}
    # the only declared differences: the level `vggproto train` keeps from the solver, the upgrade tools' kind
    assert differ == {"train": {"level"}, "upgrade": {"kind"}}.get(ours[0], set())


@pytest.mark.parametrize("tool, kind", [("upgrade_net_proto_text", "net"), ("upgrade_net_proto_binary", "net"),
                                        ("upgrade_solver_proto_text", "solver")])
def test_upgrade_tools_read_their_kind(tool, kind):
    assert _defaults(_command((tool,)))["kind"] == kind and _defaults(_command(("upgrade",)))["kind"] == "auto"


@pytest.mark.parametrize("args, level", [(["caffe", "train", "-solver", "sgd_step_solver.prototxt"], 0),
                                         (["train", "sgd_step_solver.prototxt"], None),
                                         (["train", "sgd_step_solver.prototxt", "-level", "0"], 0)])
def test_level_default_per_spelling(case, monkeypatch, args, level):
    """Caffe's tools/caffe.cpp overwrites train_state.level with -level (0); `vggproto train` keeps the solver's."""
    seen = {}
    monkeypatch.setattr(train_run, "train", lambda solver, options, snapshot=None, gpus=None: seen.update(
        level=options.level))
    assert invoke(*args).exit_code == 0 and seen == {"level": level}


@pytest.mark.parametrize("args", [["train"], ["caffe", "train"], ["train", "-gpu", "cpu"]])
def test_a_missing_solver_is_a_usage_error_in_both_spellings(args):
    result = invoke(*args)
    assert result.exit_code == 2 and "--solver SOLVER" in result.output


@pytest.mark.parametrize("name", ["compute-mean", "compute_image_mean"])
def test_compute_mean_without_output_only_reports_in_both_spellings(tmp_path, name):
    db = tmp_path / "db"
    assert invoke("convert-imageset", "--resize-height=8", "--resize-width=8", ROOT, str(DATA / "list.txt"),
                  str(db)).exit_code == 0
    result = invoke(name, str(db))
    assert result.exit_code == 0 and "Number of channels: 3" in result.output and list(tmp_path.iterdir()) == [db]


# ---------------------------------------------------------------------------------------------- caffe train/test

TRAIN_SPELLINGS = [
    ["-solver", "sgd_step_solver.prototxt", "-gpu", "cpu:2", "-weights", "init.caffemodel", "-sigint_effect",
     "snapshot", "-sighup_effect", "stop", "-level", "1", "-stage", "a,b"],
    ["-solver=sgd_step_solver.prototxt", "-gpu=cpu:2", "-weights=init.caffemodel", "-sigint_effect=snapshot",
     "-sighup_effect=stop", "-level=1", "-stage=a,b"],
    ["--solver=sgd_step_solver.prototxt", "--gpu=cpu:2", "--weights=init.caffemodel", "--sigint-effect=snapshot",
     "--sighup_effect=stop", "--level=1", "--stage=a,b"],
    ["--solver", "sgd_step_solver.prototxt", "--gpu", "cpu:2", "--weights", "init.caffemodel", "--sigint-effect",
     "snapshot", "-sighup-effect", "stop", "--level", "1", "--stage", "a,b"],
]


@pytest.mark.parametrize("args", TRAIN_SPELLINGS)
def test_caffe_train_flags_in_every_spelling(case, monkeypatch, args):
    seen = {}
    monkeypatch.setattr(train_run, "train", lambda solver, options, snapshot=None, gpus=None: seen.update(
        solver=solver, options=options, snapshot=snapshot, gpus=gpus))
    result = invoke("caffe", "train", *args)
    assert result.exit_code == 0, result.output
    options = seen["options"]
    assert seen["solver"] == "sgd_step_solver.prototxt" and seen["gpus"].ids == (0, 1)
    assert options.weights == ("init.caffemodel",) and options.level == 1 and options.stages == ("a", "b")
    assert (options.sigint_effect, options.sighup_effect) == ("snapshot", "stop") and seen["snapshot"] is None


def test_vggproto_train_and_test_read_caffe_spellings_too(case, monkeypatch, caplog):
    seen = {}
    monkeypatch.setattr(train_run, "train", lambda solver, options, snapshot=None, gpus=None: seen.update(
        solver=solver, level=options.level, gpus=gpus))
    result = invoke("train", "-solver=sgd_step_solver.prototxt", "-gpu", "cpu:2", "-level", "-1")
    assert result.exit_code == 0, result.output
    assert (seen["solver"], seen["level"], seen["gpus"].ids) == ("sgd_step_solver.prototxt", -1, (0, 1))
    caplog.set_level(logging.INFO, logger="vggproto")
    result = invoke("test", "-model", "train_val.prototxt", "-weights=init.caffemodel", "-iterations", "2")
    assert result.exit_code == 0, result.output
    assert "Loss: 1.76763" in caplog.messages


def test_caffe_train_snapshot_flag_and_caffe_checks(case, monkeypatch):
    seen = {}
    monkeypatch.setattr(train_run, "train", lambda solver, options, snapshot=None, gpus=None: seen.update(
        snapshot=snapshot, gpus=gpus))
    assert invoke("caffe", "train", "-solver", "sgd_step_solver.prototxt", "-snapshot", "x.solverstate").exit_code == 0
    assert seen == {"snapshot": "x.solverstate", "gpus": None}
    monkeypatch.undo()   # Caffe's resume-or-finetune check is train.run.train's, for both spellings
    both = invoke("caffe", "train", "-solver", "s", "-weights", "w", "-snapshot", "x")
    assert both.exit_code == 1 and "not both" in both.output
    missing = invoke("caffe", "train", "-gpu", "cpu")
    assert missing.exit_code == 2 and "-solver" in missing.output


def test_caffe_train_really_trains(case):
    result = invoke("caffe", "train", "-solver", "sgd_step_solver.prototxt", "-weights", "init.caffemodel")
    assert result.exit_code == 0, result.output
    assert (case / "sgd_step_iter_2.caffemodel").exists() and (case / "sgd_step_iter_2.solverstate").exists()


@pytest.mark.parametrize("args", [
    ["-model", "train_val.prototxt", "-weights", "init.caffemodel", "-iterations", "2", "-gpu", "cpu"],
    ["-model=train_val.prototxt", "-weights=init.caffemodel", "-iterations=2"],
    ["--model=train_val.prototxt", "--weights=init.caffemodel", "--iterations=2", "--gpu=cpu"],
    ["--model", "train_val.prototxt", "--weights", "init.caffemodel", "--iterations", "2", "-level", "0"],
])
def test_caffe_test_scores_the_golden_case(case, caplog, args):
    caplog.set_level(logging.INFO, logger="vggproto")
    result = invoke("caffe", "test", *args)
    assert result.exit_code == 0, result.output
    assert "Loss: 1.76763" in caplog.messages and "accuracy = 0.25" in caplog.messages


# ------------------------------------------------------------------------------------------------- time and devices

@pytest.mark.parametrize("args", [
    ["caffe", "time", "-model", "train_val.prototxt", "-iterations", "1", "-phase", "TRAIN", "-gpu", "cpu"],
    ["caffe", "time", "-model=train_val.prototxt", "-iterations=1", "-weights=init.caffemodel", "-phase=TEST"],
    ["time", "--model", "train_val.prototxt", "--iterations", "1"],
    ["time", "-model=train_val.prototxt", "-iterations", "1"],
    ["time", "train_val.prototxt", "--iterations=1"],
])
def test_time_takes_caffes_model_flag(case, args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "Testing for 1 iterations." in result.output and "Average Forward-Backward" in result.output


@pytest.mark.parametrize("args", [["caffe", "train", "-help"], ["convert_imageset", "--help"], ["time", "-h"],
                                  ["compute_image_mean", "-help"]])
def test_help_in_any_spelling(args):
    result = invoke(*args)
    assert result.exit_code == 0 and "Usage:" in result.output, result.output


def test_time_needs_one_model(case):
    result = invoke("time", "--iterations", "1")
    assert result.exit_code == 1 and "time needs one net" in result.output


def _fake_cuda(monkeypatch, count: int = 2) -> None:
    props = types.SimpleNamespace(name="Fake GPU", total_memory=80 * 2**30, major=9, minor=0,
                                  multi_processor_count=132)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(doctor, "nccl_line", lambda: "NCCL: 2.99.9")


@pytest.mark.parametrize("args", [["device_query"], ["caffe", "device_query"], ["caffe", "device_query", "-gpu", "1"],
                                  ["device_query", "--gpu=1"]])
def test_device_query_lists_devices(monkeypatch, args):
    _fake_cuda(monkeypatch)
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("CUDA: ") and lines[0].endswith("2 device(s)") and lines[-1] == "NCCL: 2.99.9"
    devices = [line for line in lines if line.startswith("  device ")]
    expect = ["  device 1: Fake GPU, 80.0 GiB, compute capability 9.0, 132 SMs"]
    assert devices == (expect if "1" in args[-1] else [expect[0].replace("device 1", "device 0"), *expect])


def test_doctor_reports_versions_devices_and_tools(monkeypatch):
    monkeypatch.setattr(doctor, "PACKAGES", (*doctor.PACKAGES, ("nothing", "vggproto_no_such_module")))
    result = invoke("doctor")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in ("Python", "torch", "protobuf", "OpenCV", "onnx", "onnxruntime", "numpy", "h5py", "lmdb", "CUDA",
                 "NCCL", "graphviz dot"):
        assert any(line.startswith(f"{name}: ") for line in lines), name
    assert f"numpy: {np.__version__}" in lines and "nothing: not installed" in lines
    _fake_cuda(monkeypatch, 1)
    assert "  device 0: Fake GPU, 80.0 GiB, compute capability 9.0, 132 SMs" in invoke("doctor").output


# --------------------------------------------------------------------------------------------- the data tools

@pytest.mark.parametrize("flags", [
    ["-gray", "-shuffle", "-backend", "lmdb", "-resize_width", "8", "-resize_height", "8", "-check_size",
     "-encoded", "-encode_type", "png"],
    ["-gray=true", "-shuffle=true", "-backend=lmdb", "-resize_width=8", "-resize_height=8", "-check_size=true",
     "-encoded=true", "-encode_type=png"],
    ["--gray", "--shuffle", "--backend=lmdb", "--resize_width=8", "--resize-height=8", "--check_size", "--encoded",
     "--encode-type", "png"],
])
def test_convert_imageset_takes_caffes_flags(tmp_path, flags):
    db = tmp_path / "db"
    result = invoke("convert_imageset", *flags, ROOT, str(DATA / "list.txt"), str(db))
    assert result.exit_code == 0, result.output
    reader = DBReader(str(db))
    datum = caffe_pb2.Datum.FromString(reader.get(0))
    assert len(reader) == 6 and datum.encoded and datum.data.startswith(b"\x89PNG")
    reader.close()


def test_convert_imageset_and_compute_image_mean_reproduce_caffe(tmp_path):
    db = tmp_path / "db"
    result = invoke("convert_imageset", "-resize_height=64", "-resize_width", "64", ROOT, str(DATA / "list.txt"),
                    str(db))
    assert result.exit_code == 0, result.output
    assert [bytes(r) for r in _records(db)] == [bytes(r) for r in _records(DATA / "raw_lmdb")]
    result = invoke("compute_image_mean", "-backend", "lmdb", str(db), str(tmp_path / "mean.binaryproto"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mean.binaryproto").read_bytes() == (DATA / "mean.binaryproto").read_bytes()
    only = invoke("compute_image_mean", "--backend=lmdb", str(db))     # no OUTPUT_FILE: only the means
    assert only.exit_code == 0 and "Number of channels: 3" in only.output


def _records(path: Path) -> list[bytes]:
    reader = DBReader(str(path))
    try:
        return [reader.keys[i] + reader.get(i) for i in range(len(reader))]
    finally:
        reader.close()


@pytest.mark.parametrize("args", [["convert-imageset", "--backend", "leveldb"], ["convert_imageset", "-backend",
                                                                                 "leveldb"]])
def test_leveldb_backend_writes_or_says_what_is_missing(tmp_path, args):
    db = tmp_path / "ldb"
    result = invoke(*args, ROOT, str(DATA / "list.txt"), str(db))
    try:
        import plyvel  # noqa: F401
    except ImportError:
        assert result.exit_code == 1
        assert result.output.strip().splitlines()[-1] == (
            "vggproto: error: --backend leveldb needs the 'plyvel' package (pip install 'vggproto[leveldb]'); "
            "or write LMDB (--backend lmdb)")
        return
    assert result.exit_code == 0, result.output
    assert len(DBReader(str(db), "leveldb")) == 6


@pytest.mark.parametrize("tool, src, expect", [
    ("upgrade_net_proto_text", "vgg16_v1.prototxt", "vgg16_v1_upgraded.prototxt"),
    ("upgrade_net_proto_binary", "v1_small.caffemodel", "v1_small_upgraded.caffemodel"),
    ("upgrade_solver_proto_text", "solver_nesterov_v1.prototxt", "solver_nesterov_v1_upgraded.prototxt"),
])
def test_upgrade_tools(tmp_path, tool, src, expect):
    out = tmp_path / expect
    result = invoke(tool, str(UPGRADE / src), str(out))
    assert result.exit_code == 0, result.output and "Wrote upgraded" in result.output
    if tool == "upgrade_solver_proto_text":
        assert out.read_text() == (UPGRADE / expect).read_text()
    else:
        assert vggproto.read_net(out, upgrade=False) == vggproto.read_net(UPGRADE / expect, upgrade=False)


# ------------------------------------------------------------------------------------------------- usage errors

@pytest.mark.parametrize("args, hint", [
    (["caffe", "train", "-solver", "s", "-bogus", "1"], "vggproto caffe train --help"),
    (["time", "--nope"], "vggproto time --help"),
    (["no-such-command"], "vggproto --help"),
    (["caffe", "test", "-model", "m"], "vggproto caffe test --help"),
    (["convert_imageset", "-resize_width", "x", "a/", "b", "c"], "vggproto convert_imageset --help"),
])
def test_usage_errors_are_one_line_and_exit_2(args, hint):
    result = invoke(*args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vggproto: usage error: ") and lines[0].endswith(f"'{hint}')")


def test_a_group_without_a_command_still_prints_its_help():
    result = invoke("caffe")
    assert "Usage:" in result.output and "device_query" in result.output and "usage error" not in result.output


# ------------------------------------------------------------------------------------------------------- progress

class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _list_of(tmp_path: Path, count: int) -> str:
    name = next(line.split()[0] for line in (DATA / "list.txt").read_text().splitlines())
    (tmp_path / "list.txt").write_text("".join(f"{name} 0\n" for _ in range(count)))
    return str(tmp_path / "list.txt")


def test_progress_in_a_log_is_caffes_periodic_lines(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="vggproto")
    result = invoke("convert_imageset", "-resize_width=4", "-resize_height=4", ROOT, _list_of(tmp_path, 1001),
                    str(tmp_path / "db"))
    assert result.exit_code == 0, result.output
    assert [m for m in caplog.messages if m.startswith("Processed")] == ["Processed 1000 files.",
                                                                          "Processed 1001 files."]
    assert "\r" not in result.output


def test_progress_on_a_terminal_is_a_bar_and_quiet_silences_both(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="vggproto")
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    convert_imageset(ROOT, _list_of(tmp_path, 3), str(tmp_path / "db"), 4, 4)
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert [m for m in caplog.messages if m.startswith("Processed")] == ["Processed 3 files."]
    caplog.clear()
    result = invoke("-q", "convert_imageset", "-resize_width=4", "-resize_height=4", ROOT, _list_of(tmp_path, 1001),
                    str(tmp_path / "db2"))
    assert result.exit_code == 0, result.output
    assert not [m for m in caplog.messages if m.startswith("Processed")] and "\r" not in result.output
    assert logging.getLogger("vggproto").level == logging.INFO   # -q lasts only for its command


def test_progress_lines_carry_rate_and_eta(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="vggproto")
    with Progress(10, "evaluate", every=4) as bar:
        for _ in range(10):
            bar.update(1)
    lines = [r.getMessage() for r in caplog.records if r.name == "vggproto.progress"]
    assert [line.split(",")[0] for line in lines] == ["evaluate: 4/10 images", "evaluate: 8/10 images",
                                                      "evaluate: 10/10 images"]
    assert all(" img/s, ETA " in line for line in lines) and lines[-1].endswith("ETA 0:00:00")
    caplog.clear()
    monkeypatch.setattr(sys, "stderr", _Terminal())
    with Progress(10, "extract", every=4, enabled=False) as bar:
        bar.update(10)
    assert bar.mode == "off" and not caplog.records and sys.stderr.getvalue() == ""


def test_device_query_checks_gpu_ids_with_the_one_parser():
    import torch
    from click.testing import CliRunner

    from vggproto.cli import main
    if torch.cuda.device_count() > 5:
        pytest.skip("this machine has a GPU 5")
    result = CliRunner().invoke(main, ["caffe", "device_query", "-gpu", "5"])
    assert result.exit_code == 2 and "-gpu 5: no such CUDA device" in result.output
