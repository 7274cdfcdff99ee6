"""The input guards behind tests/test_bad_inputs.py: the blob-size limit, write errors, protobuf runtimes.

The supported protobuf runtimes (4.21 to 7.x) are each installed into a temporary ``--target`` folder and must
read a prototxt and write a caffemodel; the CLI-level fuzzing is in ``test_bad_inputs.py``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vggproto.cli

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
FC = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n'


def write(folder: Path, name: str, content: str) -> str:
    path = folder / name
    path.write_text(content)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------

def test_blob_limit_is_overridable(tmp_path, monkeypatch):
    path = write(tmp_path, "net.prototxt", INPUT + FC)
    monkeypatch.setenv("VGGPROTO_MAX_BLOB_BYTES", "100")
    result = CliRunner().invoke(vggproto.cli.main, ["info", path])
    assert result.exit_code == 1 and "VGGPROTO_MAX_BLOB_BYTES" in result.output and "768 B" in result.output


def test_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    import errno

    from vggproto.caffe import files
    from vggproto.errors import VGGProtoError

    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(VGGProtoError, match=r"out.prototxt: cannot write: No space left on device"):
        files.atomic_write_bytes(tmp_path / "out.prototxt", b"x")
    assert list(tmp_path.iterdir()) == []


def test_hdf5_write_into_a_vanished_folder_is_one_error(tmp_path):
    from vggproto.caffe.files import OutputError, atomic_path
    gone = tmp_path / "gone"
    with pytest.raises(OutputError, match="gone"):
        import h5py
        with atomic_path(gone / "x.h5") as tmp, h5py.File(tmp, "w") as handle:
            handle["a"] = np.zeros(2)


def test_unsupported_protobuf_is_one_line():
    from vggproto.caffe.proto import ProtobufVersionError, check_runtime
    for version in ("3.20.3", "4.20.0", "8.0.0"):
        with pytest.raises(ProtobufVersionError, match=rf"protobuf {version} is installed; .*>=4.21,<8"):
            check_runtime(version)
    check_runtime("4.21.12")
    check_runtime("7.35.1")


PB_VERSIONS = ("4.21.12", "5.29.5", "6.33.0")
ROUND_TRIP = """
import sys
import google.protobuf, vggproto
from vggproto.caffe.proto import caffe_pb2
net = vggproto.read_net(sys.argv[1])
vggproto.write_net(net, sys.argv[2])
again = caffe_pb2.NetParameter.FromString(open(sys.argv[2], "rb").read())
assert again.layer[1].inner_product_param.num_output == 2 and caffe_pb2.TRAIN == 0, again
print(google.protobuf.__version__)
"""


@pytest.mark.slow
@pytest.mark.parametrize("version", PB_VERSIONS)
def test_every_supported_protobuf_runtime_reads_and_writes(version, tmp_path):
    target = Path(f"/tmp/vggproto-pb{version}")
    if not (target / "google" / "protobuf").is_dir():
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                              f"protobuf=={version}"], capture_output=True, text=True, timeout=300)
        if pip.returncode != 0:
            pytest.skip(f"cannot install protobuf {version} (PyPI unreachable?): {pip.stderr.strip()[-200:]}")
    net = write(tmp_path, "net.prototxt", INPUT + FC)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(Path(__file__).parents[1])])}
    run = subprocess.run([sys.executable, "-c", ROUND_TRIP, net, str(tmp_path / "out.caffemodel")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == version


def test_read_only_folder_is_refused_before_work(tmp_path, monkeypatch):
    from vggproto.caffe import files
    net = write(tmp_path, "net.prototxt", INPUT + FC)
    monkeypatch.setattr(files.os, "access", lambda path, mode: not mode & os.W_OK)  # root ignores chmod
    result = CliRunner().invoke(vggproto.cli.main, ["upgrade", net, str(tmp_path / "out.prototxt")])
    assert result.exit_code == 1 and "out.prototxt: the output directory" in result.output
    assert "is not writable" in result.output and not (tmp_path / "out.prototxt").exists()


def test_generate_checks_every_output_before_writing_any(tmp_path):
    args = ["generate", "--config", "A", "--out-dir", str(tmp_path)]
    assert CliRunner().invoke(vggproto.cli.main, args).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.prototxt")}
    (tmp_path / "nets" / "A_dense.prototxt").write_bytes(b"\xff\xd8\xff\xe0" + bytes(20))
    before[tmp_path / "nets" / "A_dense.prototxt"] = (tmp_path / "nets" / "A_dense.prototxt").stat().st_mtime_ns
    result = CliRunner().invoke(vggproto.cli.main, args)
    assert result.exit_code == 1 and "A_dense.prototxt: exists and is a JPEG image" in result.output
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.prototxt")} == before


def test_output_error_is_also_an_oserror():
    from vggproto.caffe.files import OutputError
    from vggproto.errors import VGGProtoError
    error = OutputError("x.h5: cannot write: No space left on device", 28, "No space left on device", "x.h5")
    assert isinstance(error, VGGProtoError) and isinstance(error, OSError) and error.errno == 28
    assert str(error) == "x.h5: cannot write: No space left on device"


def test_info_and_draw_build_on_meta_and_allocate_nothing(tmp_path):
    big = INPUT + FC.replace("num_output: 2", "num_output: 2147483648")  # 1.5 TiB of weights
    net = write(tmp_path, "big.prototxt", big)
    env = {**os.environ, "VGGPROTO_MAX_BLOB_BYTES": "1e16"}
    for args in (["info", net], ["draw", net, str(tmp_path / "big.svg")]):
        run = subprocess.run([sys.executable, "-m", "vggproto", *args], env=env, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
    assert "414,464,344,064" in subprocess.run([sys.executable, "-m", "vggproto", "info", net], env=env,
                                               capture_output=True, text=True, timeout=120).stdout


def test_a_bad_limit_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VGGPROTO_MAX_BLOB_BYTES", "lots")
    result = CliRunner().invoke(vggproto.cli.main, ["info", write(tmp_path, "n.prototxt", INPUT + FC)])
    assert result.exit_code == 1 and result.output.strip() == \
        "vggproto: error: $VGGPROTO_MAX_BLOB_BYTES must be a number of bytes, got 'lots'"
