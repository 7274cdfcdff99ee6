"""vggproto.weights.caffemodel: caffemodel / HDF5 reading and writing, checked against protobuf, golden Caffe files and
OpenCV's independent Caffe importer."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.caffe.wire import encode_tag, encode_varint
from vggproto.errors import WeightsError
from vggproto.weights.caffemodel import (
    array_to_blob,
    blob_to_array,
    read_caffemodel,
    read_weights,
    upgrade_caffemodel,
    write_weights,
)
from vggproto.weights.fit import fit_blob

GOLDEN = Path(__file__).parent / "data" / "golden" / "upgrade"
V1_SMALL = GOLDEN / "v1_small.caffemodel"


def _protobuf_arrays(path: Path) -> dict[str, list[np.ndarray]]:
    """Independent reference: protobuf's own parser plus the legacy-dims rule written out."""
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    out = {}
    for layer in list(net.layers) + list(net.layer):
        if layer.blobs:
            out[layer.name] = [np.array(b.data, np.float32).reshape(b.num, b.channels, b.height, b.width)
                               for b in layer.blobs]
    return out


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, np.float32).view(np.uint32)


# --- reading legacy files ---------------------------------------------------------------------------------------

def test_v1_legacy_caffemodel_matches_protobuf_and_golden_params():
    weights = read_weights(V1_SMALL)
    reference = _protobuf_arrays(V1_SMALL)
    assert list(weights) == ["conv1", "fc6", "fc8"]
    assert [a.shape for a in weights["fc6"]] == [(1, 1, 6, 120), (1, 1, 1, 6)]
    for name, arrays in reference.items():
        for mine, ref in zip(weights[name], arrays, strict=True):
            assert mine.dtype == np.float32 and np.array_equal(_bits(mine), _bits(ref))
    golden = np.load(GOLDEN / "v1_small_forward.npz")
    for name, arrays in weights.items():
        for index, array in enumerate(arrays):
            expected = golden[f"param:{name}:{index}"]  # the blobs as Caffe's Net held them after loading
            fitted = fit_blob(array, expected.shape)
            assert fitted is not None and np.array_equal(fitted, expected)


def test_caffe_upgraded_binary_reads_like_the_v1_original():
    original, upgraded = read_weights(V1_SMALL), read_weights(GOLDEN / "v1_small_upgraded.caffemodel")
    assert list(original) == list(upgraded)
    for name in original:
        for a, b in zip(original[name], upgraded[name], strict=True):
            assert a.shape == b.shape and np.array_equal(_bits(a), _bits(b))


def test_read_caffemodel_structure_equals_protobuf_upgrade_without_blobs():
    net, weights = read_caffemodel(V1_SMALL)
    reference = read_net(str(V1_SMALL))       # full protobuf decode + the same upgrade
    for layer in reference.layer:
        layer.ClearField("blobs")
    assert net == reference
    assert [layer.type for layer in net.layer][:3] == ["Input", "Convolution", "ReLU"]
    assert set(weights) == {"conv1", "fc6", "fc8"}


def test_upgrade_caffemodel_equals_caffes_upgrade_net_proto_binary(tmp_path):
    out = tmp_path / "up.caffemodel"
    net = upgrade_caffemodel(V1_SMALL, out)
    assert out.read_bytes() == (GOLDEN / "v1_small_upgraded.caffemodel").read_bytes()   # byte for byte
    assert net.layer[0].type == "Input" and not net.layers


def test_upgrade_caffemodel_refuses_hdf5(tmp_path):
    write_weights(tmp_path / "w.h5", {"a": [np.ones(2)]})
    with pytest.raises(WeightsError, match="HDF5 weights hold no net structure"):
        upgrade_caffemodel(tmp_path / "w.h5", tmp_path / "out.caffemodel")


def test_arrays_are_writable_copies_on_write_of_the_file(tmp_path):
    path = tmp_path / "m.caffemodel"
    path.write_bytes(V1_SMALL.read_bytes())
    weights = read_weights(path)
    weights["conv1"][0][...] = 42.0
    assert path.read_bytes() == V1_SMALL.read_bytes()
    assert not np.any(read_weights(path)["conv1"][0] == 42.0)


def test_copy_option_returns_owned_aligned_arrays():
    views, copies = read_weights(V1_SMALL), read_weights(V1_SMALL, copy=True)
    for name in views:
        for view, owned in zip(views[name], copies[name], strict=True):
            assert owned.flags.owndata and owned.flags.aligned and not np.shares_memory(view, owned)
            assert np.array_equal(_bits(view), _bits(owned))


# --- encodings --------------------------------------------------------------------------------------------------

def _blob_bytes(values: np.ndarray, encoding: str, dims=(2, 3)) -> bytes:
    body = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=dims)).SerializeToString()
    if encoding == "packed":
        raw = values.astype("<f4").tobytes()
        body += encode_tag(5, 2) + encode_varint(len(raw)) + raw
    elif encoding == "unpacked":
        body += b"".join(encode_tag(5, 5) + v.tobytes() for v in values.astype("<f4"))
    elif encoding == "two_packed_chunks":
        for chunk in (values[:2], values[2:]):
            raw = chunk.astype("<f4").tobytes()
            body += encode_tag(5, 2) + encode_varint(len(raw)) + raw
    elif encoding == "double":
        raw = values.astype("<f8").tobytes()
        body += encode_tag(8, 2) + encode_varint(len(raw)) + raw
    elif encoding == "double_unpacked":
        body += b"".join(encode_tag(8, 1) + v.tobytes() for v in values.astype("<f8"))
    elif encoding == "diff_only":
        body += b"".join(encode_tag(6, 5) + v.tobytes() for v in values.astype("<f4"))
    return body


def _net_file(tmp_path, blob_bodies: list[bytes], name="L", v1=False) -> Path:
    layer = caffe_pb2.V1LayerParameter(name=name) if v1 else caffe_pb2.LayerParameter(name=name)
    body = layer.SerializeToString() + b"".join(
        encode_tag(6 if v1 else 7, 2) + encode_varint(len(b)) + b for b in blob_bodies)
    data = caffe_pb2.NetParameter(name="n").SerializeToString()
    data += encode_tag(2 if v1 else 100, 2) + encode_varint(len(body)) + body
    path = tmp_path / f"{name}.caffemodel"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("encoding", ["unpacked", "two_packed_chunks", "double", "double_unpacked"])
def test_float_encodings_read_equal(tmp_path, encoding):
    values = np.array([0.5, -1.25, 3e-39, 7.0, -0.0, 1e30], np.float32)   # exact in float32 and float64
    packed = read_weights(_net_file(tmp_path, [_blob_bytes(values, "packed")], "packed"))["packed"][0]
    other = read_weights(_net_file(tmp_path, [_blob_bytes(values, encoding)], "other"))["other"][0]
    assert packed.shape == other.shape == (2, 3) and other.dtype == np.float32
    assert np.array_equal(_bits(packed), _bits(other))
    # protobuf agrees with the decoding
    blob = caffe_pb2.BlobProto.FromString(_blob_bytes(values, encoding))
    assert np.array_equal(_bits(blob_to_array(blob)), _bits(packed))


def test_legacy_dims_take_precedence_over_shape(tmp_path):
    body = caffe_pb2.BlobProto(num=1, channels=1, height=2, width=3, data=[1, 2, 3, 4, 5, 6],
                               shape=caffe_pb2.BlobShape(dim=[6])).SerializeToString()
    assert read_weights(_net_file(tmp_path, [body], v1=True))["L"][0].shape == (1, 1, 2, 3)


def test_v0_layer_embedded_in_v1_is_read(tmp_path):
    v1 = caffe_pb2.V1LayerParameter()
    v1.layer.name = "old"
    v1.layer.type = "conv"
    v1.layer.blobs.add(num=1, channels=1, height=1, width=2, data=[3.0, 4.0])
    net = caffe_pb2.NetParameter(layers=[v1])
    path = tmp_path / "v0.caffemodel"
    path.write_bytes(net.SerializeToString())
    assert read_weights(path)["old"][0].tolist() == [[[[3.0, 4.0]]]]


# --- writing ----------------------------------------------------------------------------------------------------

def _special_values(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(int(np.prod(shape))).astype(np.float32)
    values[:4] = [np.inf, -0.0, 1e-45, np.nan]
    return values.reshape(shape)


@pytest.mark.parametrize("suffix", [".caffemodel", ".h5"])
def test_write_read_round_trip_is_bit_exact(tmp_path, suffix):
    weights = {"conv1": [_special_values((4, 3, 3, 3)), _special_values((4,), 1)],
               "fc/6": [_special_values((5, 12), 2)], "scalar": [np.float32(2.5) * np.ones(())]}
    path = tmp_path / f"w{suffix}"
    write_weights(path, weights)
    back = read_weights(path)
    assert sorted(back) == sorted(weights)
    for name, arrays in weights.items():
        for a, b in zip(arrays, back[name], strict=True):
            assert b.shape == a.shape and b.dtype == np.float32 and np.array_equal(_bits(a), _bits(b))
    assert not list(tmp_path.glob(".*tmp"))


@pytest.mark.parametrize("name", ["same.caffemodel", "same.caffemodel.h5"])
def test_overwriting_the_file_being_viewed_is_safe(tmp_path, name):
    path = tmp_path / name
    original = {"a": [_special_values((3, 4)), _special_values((4,), 1)]}
    write_weights(path, original)
    views = read_weights(path)                    # zero-copy views of the file
    write_weights(path, views)                    # temp file + rename: the mapped inode stays intact
    for a, b in zip(original["a"], read_weights(path)["a"], strict=True):
        assert np.array_equal(_bits(a), _bits(b))


def test_written_caffemodel_equals_protobuf_serialization_with_net_param(tmp_path):
    net, weights = read_caffemodel(V1_SMALL)
    weights["fc8"][1] = weights["fc8"][1].astype(np.float64)      # converted to float32 on write
    path = tmp_path / "re.caffemodel"
    write_weights(path, weights, net)
    expected = caffe_pb2.NetParameter()
    expected.CopyFrom(net)
    for layer in expected.layer:
        for array in weights.get(layer.name, []):
            layer.blobs.add(data=array.ravel().tolist(), shape=caffe_pb2.BlobShape(dim=array.shape))
    assert path.read_bytes() == expected.SerializeToString()
    net_back, _ = read_caffemodel(path)
    assert [layer.name for layer in net_back.layer] == [layer.name for layer in net.layer]


def test_write_with_v1_net_param_upgrades_and_appends_unknown_layers(tmp_path):
    v1 = read_net(str(GOLDEN / "v1_small_deploy.prototxt"), upgrade=False)
    assert v1.layers
    path = tmp_path / "x.caffemodel"
    write_weights(path, {"conv1": [np.ones((4, 3, 3, 3))], "extra": [np.zeros(2)]}, v1)
    written = caffe_pb2.NetParameter.FromString(path.read_bytes())
    assert not written.layers and written.layer[1].type == "Convolution"
    assert written.layer[-1].name == "extra" and list(written.layer[-1].blobs[0].shape.dim) == [2]


def test_opencv_caffe_importer_loads_our_caffemodel(tmp_path):
    cv2 = pytest.importorskip("cv2")
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    prototxt = tmp_path / "net.prototxt"
    prototxt.write_text(
        'name: "tiny"\nlayer { name: "data" type: "Input" top: "data" '
        'input_param { shape { dim: 1 dim: 3 dim: 7 dim: 9 } } }\n'
        'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
        'convolution_param { num_output: 5 kernel_size: 3 pad: 1 stride: 2 } }\n'
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n')
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    model = tmp_path / "net.caffemodel"
    write_weights(model, {"conv1": [weight, bias]}, read_net(str(prototxt)))
    cv_net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
    cv_net.setInput(x)
    got = cv_net.forward()
    expected = F.relu(F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias),
                               stride=2, padding=1)).numpy()
    assert got.shape == expected.shape == (1, 5, 4, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_torch_tensors_with_grad_are_written(tmp_path):
    torch = pytest.importorskip("torch")
    weight = torch.randn(2, 3, requires_grad=True)
    write_weights(tmp_path / "t.caffemodel", {"ip": [weight]})
    assert np.array_equal(read_weights(tmp_path / "t.caffemodel")["ip"][0], weight.detach().numpy())


def test_array_blob_helpers_round_trip():
    array = _special_values((3, 2, 2))
    blob = array_to_blob(array)
    assert list(blob.shape.dim) == [3, 2, 2] and len(blob.data) == 12
    back = blob_to_array(blob)
    assert back.flags.writeable and np.array_equal(_bits(back), _bits(array))
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=1, data=[1, 2])
    assert blob_to_array(legacy).shape == (1, 2, 1, 1)


# --- fit_blob (Caffe ShapeEquals) -------------------------------------------------------------------------------

@pytest.mark.parametrize("stored, target, fits", [
    ((1, 1, 4096, 25088), (4096, 25088), True),
    ((1, 1, 1, 64), (64,), True),
    ((64, 3, 3, 3), (64, 3, 3, 3), True),
    ((1, 1, 6, 120), (1, 1, 6, 120), True),
    ((1, 64, 3, 3), (64, 3, 3), True),
    ((64, 1, 1, 1), (64,), False),        # not right-aligned
    ((1, 1, 1, 64), (1, 64, 1), False),
    ((1, 1, 4096, 25088), (25088, 4096), False),
    ((1, 1, 1, 64), (1, 1, 1, 1, 64), False),  # more than 4 axes never match legacy dims
    ((4096, 25088), (1, 1, 4096, 25088), False),  # only stored 4-D (legacy) arrays are reshaped
    ((64,), (1, 64), False),
])
def test_fit_blob(stored, target, fits):
    array = np.zeros(stored, np.float32)
    result = fit_blob(array, target)
    if fits:
        assert result is not None and result.shape == target and np.shares_memory(result, array)
    else:
        assert result is None


# --- HDF5 -------------------------------------------------------------------------------------------------------

def test_hdf5_detected_by_content_not_extension(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "snapshot_iter_1.caffemodel"       # misleading extension
    with h5py.File(path, "w") as handle:
        handle.create_dataset("data/conv1/1", data=np.arange(3, dtype=np.float64))
        handle.create_dataset("data/conv1/0", data=np.ones((3, 2), np.float32))
        handle.create_group("data/relu1")
    weights = read_weights(path)
    assert list(weights) == ["conv1"]
    assert weights["conv1"][0].shape == (3, 2) and weights["conv1"][1].dtype == np.float32
    assert weights["conv1"][1].tolist() == [0.0, 1.0, 2.0]
    assert not weights["conv1"][0].flags.owndata          # contiguous float32: a view of the file mapping
    net, _ = read_caffemodel(path)
    assert [layer.name for layer in net.layer] == ["conv1"]


# --- errors -----------------------------------------------------------------------------------------------------

def _valid_bytes() -> bytes:
    return V1_SMALL.read_bytes()


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x00" * 64, "this is a JPEG image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "this is a PNG image"),
    (b'name: "x"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n', "text prototxt"),
    (b"# a comment\ninput: \"data\"\n", "text prototxt"),
    (_valid_bytes()[:-1000], r"truncated: field 2 needs \d+ bytes but only \d+ remain at byte offset \d+"),
    (_valid_bytes()[:100], "truncated"),
    (caffe_pb2.BlobProto(num=1, data=[1.0]).SerializeToString(), "no 'layer'/'layers' entries"),
    (bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8)), "not a"),
])
def test_bad_files_raise_one_line_weights_error(tmp_path, content, message):
    path = tmp_path / "bad.caffemodel"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=message) as info:
        read_weights(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_blob_length_is_located(tmp_path):
    data = bytearray(_valid_bytes())
    net = caffe_pb2.NetParameter.FromString(bytes(data))
    # corrupt the length of conv1's first data run to claim more bytes than its blob holds
    payload = np.array(net.layers[0].blobs[0].data, np.float32).tobytes()
    where = bytes(data).index(payload)
    data[where - 1] = 0x7f      # one-byte length 108 -> 127
    path = tmp_path / "corrupt.caffemodel"
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"layer 'conv1' blob 0: .*byte offset \d+"):
        read_weights(path)


def test_count_mismatch_and_diff_only_blobs_name_the_layer(tmp_path):
    values = np.arange(5, dtype=np.float32)
    with pytest.raises(WeightsError, match=r"layer 'L' blob 0 .*holds 5 values but its shape 2x3 needs 6"):
        read_weights(_net_file(tmp_path, [_blob_bytes(values, "packed")]))
    with pytest.raises(WeightsError, match=r"layer 'D' blob 0 .*only 'diff' values"):
        read_weights(_net_file(tmp_path, [_blob_bytes(np.ones(6), "diff_only")], "D"))
    empty = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[3])).SerializeToString()
    with pytest.raises(WeightsError, match=r"layer 'E' blob 0 .*shape 3 \(3 values\) but no data"):
        read_weights(_net_file(tmp_path, [empty], "E"))


def test_hdf5_without_data_group(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "x.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("iter", data=[3])
    with pytest.raises(WeightsError, match=r"x\.h5: HDF5 file without a /data group.*iter"):
        read_weights(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(WeightsError, match="no such file"):
        read_weights(tmp_path / "nope.caffemodel")
    with pytest.raises(WeightsError, match="is a directory"):
        read_weights(tmp_path)


# --- large files ------------------------------------------------------------------------------------------------

def test_file_over_2gb_uses_64_bit_offsets(tmp_path):
    """A sparse 2.2 GB file: one huge blob, then a small layer whose offset is past 2**31."""
    count = 550_000_000                       # 2.2e9 bytes of float data (zeros; never touched)
    head = caffe_pb2.BlobProto(shape=caffe_pb2.BlobShape(dim=[count])).SerializeToString()
    data_hdr = encode_tag(5, 2) + encode_varint(4 * count)
    blob_len = len(head) + len(data_hdr) + 4 * count
    layer_head = caffe_pb2.LayerParameter(name="big").SerializeToString() + encode_tag(7, 2) + \
        encode_varint(blob_len)
    layer_len = len(layer_head) + blob_len
    tail_layer = caffe_pb2.NetParameter(layer=[caffe_pb2.LayerParameter(
        name="after", blobs=[caffe_pb2.BlobProto(data=[1.5, 2.5], shape=caffe_pb2.BlobShape(dim=[2]))])])
    path = tmp_path / "big.caffemodel"
    with open(path, "wb") as handle:
        handle.write(encode_tag(100, 2) + encode_varint(layer_len) + layer_head + head + data_hdr)
        handle.seek(4 * count, os.SEEK_CUR)
        handle.write(tail_layer.SerializeToString())
    if os.stat(path).st_blocks * 512 > 1 << 30:
        pytest.skip("filesystem without sparse files")
    weights = read_weights(path)
    assert weights["big"][0].shape == (count,)
    assert weights["big"][0][-1] == 0.0
    assert weights["after"][0].tolist() == [1.5, 2.5]
