"""Outputs: ``--force`` on every command that writes, and databases that appear whole or not at all.

Without ``--force`` an existing output of another kind (or an existing database) is refused before any work;
with it the output is replaced, but an output that is also an input is refused even so.  ``convert-imageset``
builds its database under a temporary name, so a failed run leaves neither half a database nor a temporary.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import vggproto.cli
from vggproto.caffe.proto import caffe_pb2

INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
FC = 'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 2 } }\n'
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(40)

#: every command that writes a file or a database, with the flag that names its output
WRITERS = ["convert", "draw", "plot", "upgrade", "generate", "evaluate", "extract", "detect", "localize",
           "convert-imageset", "compute-mean", "convert_imageset", "compute_image_mean", "upgrade_net_proto_text",
           "upgrade_net_proto_binary", "upgrade_solver_proto_text", "make-official-like", "svm"]


def run(*args: str):
    return CliRunner().invoke(vggproto.cli.main, list(args))


def images(folder: Path, count: int, missing: int | None = None) -> str:
    """``count`` 4x4 PNGs and a list naming them (line ``missing`` names a file that does not exist)."""
    import cv2
    lines = []
    for i in range(count):
        name = f"img{i}.png"
        if i != missing:
            cv2.imwrite(str(folder / name), np.full((4, 4, 3), i % 250, np.uint8))
        else:
            (folder / name).unlink(missing_ok=True)
        lines.append(f"{name} {i % 2}\n")
    (folder / "list.txt").write_text("".join(lines))
    return str(folder / "list.txt")


def keys(db: Path) -> list[bytes]:
    import lmdb
    with lmdb.open(str(db), readonly=True, lock=False) as env, env.begin() as txn:
        return [key for key, _ in txn.cursor()]


@pytest.mark.parametrize("command", WRITERS)
def test_every_writing_command_has_force(command):
    result = run(*command.split(), "--help")
    assert result.exit_code == 0 and "--force" in result.output


def test_force_replaces_a_file_of_another_kind(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(INPUT + FC)
    out = tmp_path / "old.prototxt"
    out.write_bytes(caffe_pb2.NetParameter(name="binary").SerializeToString() + b"\x00\x01")
    refused = run("upgrade", str(net), str(out))
    assert refused.exit_code == 1 and "pass --force" in refused.output and b"binary" in out.read_bytes()
    assert run("upgrade", str(net), str(out), "--force").exit_code == 0
    assert 'name: "fc"' in out.read_text()


def test_force_never_writes_over_an_input(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(INPUT + FC)
    result = run("draw", str(net), str(net), "--force")
    assert result.exit_code == 1 and "is also an input" in result.output and net.read_text() == INPUT + FC


def test_convert_imageset_replaces_a_database_only_with_force(tmp_path):
    listing = images(tmp_path, 3)
    db = tmp_path / "db"
    assert run("convert-imageset", f"{tmp_path}/", listing, str(db)).exit_code == 0
    refused = run("convert-imageset", f"{tmp_path}/", listing, str(db))
    assert refused.exit_code == 1 and "--force" in refused.output and len(keys(db)) == 3
    images(tmp_path, 2)
    assert run("convert-imageset", f"{tmp_path}/", listing, str(db), "--force").exit_code == 0
    assert keys(db) == [b"00000000_img0.png", b"00000001_img1.png"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_failed_convert_imageset_leaves_no_database(tmp_path):
    listing = images(tmp_path, 2500, missing=2200)   # fails after two commits of 1000 records
    result = run("convert-imageset", f"{tmp_path}/", listing, str(tmp_path / "db"))
    assert result.exit_code == 1 and "list.txt:2201" in result.output
    assert not (tmp_path / "db").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_failed_replacement_keeps_the_old_database(tmp_path):
    listing = images(tmp_path, 3)
    db = tmp_path / "db"
    assert run("convert-imageset", f"{tmp_path}/", listing, str(db)).exit_code == 0
    images(tmp_path, 3, missing=1)
    result = run("convert-imageset", f"{tmp_path}/", listing, str(db), "--force")
    assert result.exit_code == 1 and len(keys(db)) == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_interrupted_convert_imageset_leaves_nothing(tmp_path, monkeypatch):
    from vggproto.data import convert
    listing = images(tmp_path, 5)
    real = convert._datum_for
    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(convert, "_datum_for", interrupt)
    with pytest.raises(KeyboardInterrupt):
        convert.convert_imageset(f"{tmp_path}/", listing, str(tmp_path / "db"), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".png")) == ["list.txt"]


def test_generate_force_replaces_a_file_of_another_kind(tmp_path):
    args = ["generate", "--config", "A", "--out-dir", str(tmp_path)]
    assert run(*args).exit_code == 0
    (tmp_path / "nets" / "A_dense.prototxt").write_bytes(JPEG)
    assert run(*args).exit_code == 1
    assert run(*args, "--force").exit_code == 0
    assert "fc8-conv" in (tmp_path / "nets" / "A_dense.prototxt").read_text()


def test_stdout_and_stderr_keep_their_order_in_one_log(tmp_path):
    """Results (stdout) and log lines (stderr) sent to one file arrive in the order they were written."""
    import subprocess
    import sys
    net = tmp_path / "net.prototxt"
    net.write_text(INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
                           'convolution_param { num_output: 2 kernel_size: 20 } }\n')
    run = subprocess.run([sys.executable, "-m", "vggproto", "draw", str(net), str(tmp_path / "n.dot")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    lines = run.stdout.splitlines()
    assert run.returncode == 0 and lines[-1].startswith("Drawing net to"), lines
    assert any("drawing without blob shapes" in line for line in lines[:-1]), lines


def test_an_lmdb_write_error_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """A full disk (LMDB's own error when the last commit syncs) is one line naming the database, and no half
    database stays."""
    import lmdb

    from vggproto.data import db as dbmod
    listing = images(tmp_path, 3)

    def full_disk(self):
        with self._errors():
            raise lmdb.DiskError("mdb_env_sync: No space left on device")
    monkeypatch.setattr(dbmod.LMDBWriter, "close", full_disk)
    result = run("convert-imageset", f"{tmp_path}/", listing, str(tmp_path / "db"))
    assert result.exit_code == 1 and "cannot write: mdb_env_sync: No space left on device" in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (tmp_path / "db").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
