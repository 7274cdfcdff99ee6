"""convert-imageset / compute-mean against the golden BVLC Caffe outputs, encoded LMDBs and bad-data errors."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.cli import main
from vggproto.data.convert import compute_mean, convert_imageset
from vggproto.data.datum import read_mean_file
from vggproto.data.db import _shared_lmdb_env
from vggproto.errors import DataError
from vggproto.layers.registry import LayerSpec, build_layer

GOLDEN = Path(__file__).parent / "data" / "golden" / "data"
ROOT = str(GOLDEN) + "/"


def items(path) -> list[tuple[bytes, bytes]]:
    # through the process-wide shared environment: lmdb refuses to open one environment twice in a process
    env = _shared_lmdb_env(str(path))
    with env.begin() as txn:
        return [(bytes(k), bytes(v)) for k, v in txn.cursor()]


def test_convert_imageset_reproduces_caffe_raw_lmdb_and_mean(tmp_path):
    result = CliRunner().invoke(main, ["convert-imageset", ROOT, str(GOLDEN / "list.txt"), str(tmp_path / "db"),
                                       "--resize-height", "64", "--resize-width", "64"])
    assert result.exit_code == 0, result.output
    assert items(tmp_path / "db") == items(GOLDEN / "raw_lmdb")   # keys, Datum fields and bytes
    result = CliRunner().invoke(main, ["compute-mean", str(tmp_path / "db"), str(tmp_path / "mean.binaryproto")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "mean.binaryproto").read_bytes() == (GOLDEN / "mean.binaryproto").read_bytes()
    raw = np.load(GOLDEN / "data_noxform.npz")["blob:data"]
    expect = raw.reshape(6, 3, -1).mean(axis=(0, 2))
    assert f"mean_value channel [2]: {expect[2]:g}" in result.output


def test_compute_mean_matches_numpy():
    mean = compute_mean(str(GOLDEN / "raw_lmdb"), progress=False)
    raw = np.load(GOLDEN / "data_noxform.npz")["blob:data"]
    np.testing.assert_allclose(mean, raw.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(read_mean_file(str(GOLDEN / "mean.binaryproto")), mean)


def test_encoded_lmdb_holds_file_bytes_and_decodes_like_imread(tmp_path, monkeypatch):
    convert_imageset(ROOT, str(GOLDEN / "list.txt"), str(tmp_path / "enc"), encoded=True, progress=False)
    names = [line.split()[0] for line in (GOLDEN / "list.txt").read_text().splitlines()]
    for (key, value), (i, name) in zip(items(tmp_path / "enc"), enumerate(names)):
        datum = caffe_pb2.Datum.FromString(value)
        assert key == f"{i:08d}_{name}".encode()
        assert datum.encoded and datum.label == i and datum.channels == 0
        assert datum.data == (GOLDEN / name).read_bytes()
    monkeypatch.chdir(tmp_path)
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "enc" backend: LMDB '
            'batch_size: 6 } transform_param { crop_size: 150 force_color: true } }')
    layer = build_layer(LayerSpec(read_net(text).layer[0], [], caffe_pb2.TEST))
    data, label = layer()
    for i, name in enumerate(names):   # centre crop of cv2.imread (BGR, gray expanded to 3 channels)
        img = cv2.imread(str(GOLDEN / name), cv2.IMREAD_COLOR)
        h0, w0 = (img.shape[0] - 150) // 2, (img.shape[1] - 150) // 2
        expect = img[h0:h0 + 150, w0:w0 + 150].transpose(2, 0, 1).astype(np.float32)
        np.testing.assert_array_equal(data[i].numpy(), expect)
    # Caffe aborts on the grayscale JPEG without force_color (3 vs 1 channels); vggproto names the record
    native = text.replace(" force_color: true", "")
    layer = build_layer(LayerSpec(read_net(native).layer[0], [], caffe_pb2.TEST))
    with pytest.raises(DataError, match="camera.jpg.*force_color"):
        layer()


def test_reencoded_png_is_lossless(tmp_path):
    convert_imageset(ROOT, str(GOLDEN / "list.txt"), str(tmp_path / "png"), 64, 64, encoded=True,
                     encode_type="png", progress=False)
    raw = items(GOLDEN / "raw_lmdb")
    for (_, value), (_, raw_value) in zip(items(tmp_path / "png"), raw):
        datum, ref = caffe_pb2.Datum.FromString(value), caffe_pb2.Datum.FromString(raw_value)
        assert datum.encoded and datum.data[:4] == b"\x89PNG"
        img = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR)
        assert img.transpose(2, 0, 1).tobytes() == ref.data


def bad_tree(tmp_path) -> Path:
    shutil.copy(GOLDEN / "images" / "chelsea.jpg", tmp_path / "good.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    return tmp_path


@pytest.mark.parametrize("line, message", [
    ("missing.jpg 1", r"list.txt:2: file does not exist: '.*missing.jpg'"),
    ("broken.jpg 1", r"list.txt:2: cannot decode image"),
    ("good.jpg one", r"list.txt:2: label 'one' is not an integer"),
    ("good.jpg", r"list.txt:2: expected '<image path> <integer label>'"),
])
def test_bad_data_errors_name_file_and_line(tmp_path, line, message):
    root = bad_tree(tmp_path)
    (root / "list.txt").write_text(f"good.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=message):
        convert_imageset(str(root) + "/", str(root / "list.txt"), str(root / "db"), progress=False)
    result = CliRunner().invoke(main, ["convert-imageset", str(root) + "/", str(root / "list.txt"),
                                       str(root / "db2")])
    assert result.exit_code == 1 and "list.txt:2" in result.output


def test_skip_bad_counts_and_check_size(tmp_path):
    root = bad_tree(tmp_path)
    shutil.copy(GOLDEN / "images" / "astronaut.jpg", root / "square.jpg")
    (root / "list.txt").write_text("good.jpg 0\nmissing.jpg 1\nbroken.jpg 2\nsquare.jpg 3\n")
    report = convert_imageset(str(root) + "/", str(root / "list.txt"), str(root / "db"), skip_bad=True,
                              progress=False)
    assert report.written == 2 and len(report.bad) == 2
    assert [k for k, _ in items(root / "db")] == [b"00000000_good.jpg", b"00000003_square.jpg"]
    (root / "list2.txt").write_text("good.jpg 0\nsquare.jpg 3\n")
    with pytest.raises(DataError, match="list2.txt:2: 'square.jpg' is 3x160x160, the first image is 3x160x241"):
        convert_imageset(str(root) + "/", str(root / "list2.txt"), str(root / "db2"), check_size=True,
                         progress=False)


def test_missing_lmdb_and_gray_conversion(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = 'layer { name: "d" type: "Data" top: "data" data_param { source: "nope" backend: LMDB batch_size: 1 } }'
    with pytest.raises(DataError, match="net.prototxt:3: layer 'd' \\(Data\\).*'nope' does not exist"):
        build_layer(LayerSpec(read_net(text).layer[0], [], caffe_pb2.TEST, "net.prototxt", 3))
    convert_imageset(ROOT, str(GOLDEN / "list.txt"), "gray", 32, 32, gray=True, shuffle=True, seed=4,
                     progress=False)
    keys = [k.decode() for k, _ in items("gray")]
    assert sorted(k.split("_", 1)[1] for k in keys) == sorted(
        line.split()[0] for line in (GOLDEN / "list.txt").read_text().splitlines())
    datum = caffe_pb2.Datum.FromString(items("gray")[0][1])
    assert (datum.channels, datum.height, datum.width) == (1, 32, 32)


def test_compute_mean_missing_db_is_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["compute-mean", str(tmp_path / "none"), str(tmp_path / "m.binaryproto")])
    assert result.exit_code == 1
    assert "database" in result.output and "does not exist" in result.output
    assert not (tmp_path / "m.binaryproto").exists()


def test_cli_encode_type_png_implies_encoding(tmp_path):
    result = CliRunner().invoke(main, ["convert-imageset", ROOT, str(GOLDEN / "list.txt"), str(tmp_path / "db"),
                                       "--encode-type", "png", "--resize-height", "8", "--resize-width", "8"])
    assert result.exit_code == 0, result.output
    datum = caffe_pb2.Datum.FromString(items(tmp_path / "db")[0][1])
    assert datum.encoded and datum.data[:4] == b"\x89PNG"
