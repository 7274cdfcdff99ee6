"""Data layers against golden BVLC Caffe outputs and hand-written numpy references (TEST-phase exactness,
HDF5Data order/wrap-around/shuffle/sharding, cursor persistence)."""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.data.options import DataOptions
from vggproto.errors import DataError
from vggproto.layers.registry import LayerSpec, build_layer

GOLDEN = Path(__file__).parent / "data" / "golden" / "data"


def layer_from_text(text: str, phase=caffe_pb2.TEST, **options):
    net = read_net(text)
    return build_layer(LayerSpec(net.layer[0], [], phase, "net.prototxt", 1, options=DataOptions(**options)))


@pytest.fixture
def in_golden(monkeypatch):
    monkeypatch.chdir(GOLDEN)  # Caffe resolves sources against the working directory


@pytest.mark.parametrize("case", ["data_noxform", "data_mean_value"])
def test_data_layer_matches_caffe_exactly(in_golden, case):
    net = read_net(f"{case}.prototxt")
    layer = build_layer(LayerSpec(net.layer[0], [], caffe_pb2.TEST, f"{case}.prototxt", 2))
    ref = np.load(f"{case}.npz")
    assert layer.top_shapes == [ref["blob:data"].shape, ref["blob:label"].shape]
    data, label = layer()
    assert data.dtype == label.dtype == __import__("torch").float32
    np.testing.assert_array_equal(data.numpy(), ref["blob:data"])
    np.testing.assert_array_equal(label.numpy(), ref["blob:label"])


def raw_golden() -> np.ndarray:
    return np.load(GOLDEN / "data_noxform.npz")["blob:data"]


def test_data_layer_mean_file_crop_scale_order(in_golden):
    # mean_file indexed at the UNCROPPED position, mean before scale, centre crop in TEST
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" top: "label" '
                            'data_param { source: "raw_lmdb" backend: LMDB batch_size: 4 } '
                            'transform_param { crop_size: 50 mean_file: "mean.binaryproto" scale: 0.25 } }')
    raw = raw_golden()
    mean = raw.mean(axis=0, dtype=np.float64).astype(np.float32)
    off = (64 - 50) // 2
    expect = (raw[:4, :, off:off + 50, off:off + 50] - mean[:, off:off + 50, off:off + 50]) * np.float32(0.25)
    data, label = layer()
    np.testing.assert_allclose(data.numpy(), expect, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(label.numpy(), [0, 1, 2, 3])


def test_data_layer_wraps_and_cursor_persists(in_golden):
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" top: "label" '
                            'data_param { source: "raw_lmdb" backend: LMDB batch_size: 4 } }')
    raw = raw_golden()
    _, l1 = layer()
    d2, l2 = layer()
    np.testing.assert_array_equal(l1.numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(l2.numpy(), [4, 5, 0, 1])
    np.testing.assert_array_equal(d2.numpy()[2], raw[0])
    assert layer.cursor() == 8
    layer.set_cursor(2)
    np.testing.assert_array_equal(layer()[1].numpy(), [2, 3, 4, 5])


def test_data_layer_mirror_and_mean_value_reference(in_golden):
    # mirror is random in TEST too; each output is either the plain or the flipped reference
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "raw_lmdb" '
                            'backend: LMDB batch_size: 6 } transform_param { mirror: true mean_value: 100 } }',
                            seed=3)
    raw = raw_golden()
    flips = []
    for _ in range(3):
        (data,) = layer()
        for i in range(6):
            plain = raw[i] - 100
            if np.array_equal(data[i].numpy(), plain):
                flips.append(False)
            else:
                np.testing.assert_array_equal(data[i].numpy(), plain[:, :, ::-1])
                flips.append(True)
    assert 0 < sum(flips) < 18   # both outcomes occur over 18 draws


def test_train_crop_is_a_window_of_the_raw_image(in_golden):
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param { '
                            'source: "raw_lmdb" backend: LMDB batch_size: 6 } transform_param { crop_size: 60 } }',
                            caffe_pb2.TRAIN, seed=5)
    raw = raw_golden()
    data, _ = layer()
    offsets = set()
    for i in range(6):
        hits = [(h, w) for h in range(5) for w in range(5)
                if np.array_equal(raw[i, :, h:h + 60, w:w + 60], data[i].numpy())]
        assert hits, f"image {i} is not a crop of the raw datum"
        offsets.add(hits[0])
    assert len(offsets) > 1  # random offsets, not the centre every time


def test_sharding_train_only(in_golden):
    text = ('layer { name: "d" type: "Data" top: "data" top: "label" '
            'data_param { source: "raw_lmdb" backend: LMDB batch_size: 4 } }')
    got = {}
    for rank in range(2):
        layer = layer_from_text(text, caffe_pb2.TRAIN, rank=rank, world_size=2, seed=rank)
        assert layer.top_shapes[0][0] == 2  # global batch 4 split over 2 ranks
        got[rank] = np.concatenate([layer()[1].numpy() for _ in range(3)])
    # Caffe's rule: global offset k kept by rank k % 2; the offset keeps counting across wrap-around
    np.testing.assert_array_equal(got[0], [0, 2, 4, 0, 2, 4])
    np.testing.assert_array_equal(got[1], [1, 3, 5, 1, 3, 5])
    per_gpu = layer_from_text(text, caffe_pb2.TRAIN, rank=1, world_size=2, per_gpu_batch=True)
    assert per_gpu.top_shapes[0][0] == 4
    test = layer_from_text(text, caffe_pb2.TEST, rank=1, world_size=2)
    np.testing.assert_array_equal(test()[1].numpy(), [0, 1, 2, 3])
    with pytest.raises(DataError, match="not divisible"):
        layer_from_text(text, caffe_pb2.TRAIN, rank=0, world_size=3)


def test_dry_run_shapes_without_sources(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = layer_from_text('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "nope" '
                           'batch_size: 5 } transform_param { crop_size: 7 mean_file: "absent.binaryproto" } }',
                           caffe_pb2.TRAIN, dry_run=True)
    assert data.top_shapes == [(5, 3, 7, 7), (5,)]
    img = layer_from_text('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { '
                          'source: "nope.txt" batch_size: 2 new_height: 9 new_width: 11 is_color: false } }',
                          dry_run=True)
    assert img.top_shapes == [(2, 1, 9, 11), (2,)]
    unknown = layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "nope" '
                              'batch_size: 5 } }', dry_run=True)
    assert unknown.top_shapes == [None]
    assert "data shape unknown: without transform_param.crop_size" in unknown.shapes_unknown
    with pytest.raises(DataError, match="does not exist"):
        layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "nope" batch_size: 5 '
                        'backend: LMDB } }')


# ---------------------------------------------------------------------------------------------------- HDF5

def write_h5(path, rows: int, start: int = 0):
    data = np.arange(start * 12, (start + rows) * 12, dtype=np.float32).reshape(rows, 3, 2, 2)
    label = np.arange(start, start + rows, dtype=np.int64)   # int datasets are read as float
    with h5py.File(path, "w") as h5:
        h5["data"], h5["label"] = data, label
    return data, label.astype(np.float32)


H5_LAYER = ('layer {{ name: "d" type: "HDF5Data" top: "data" top: "label" '
            'hdf5_data_param {{ source: "list.txt" batch_size: {b} {extra} }} }}')


def test_hdf5_data_order_wraparound_and_cursor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data, label = write_h5("a.h5", 10)
    Path("list.txt").write_text("a.h5\n")
    layer = layer_from_text(H5_LAYER.format(b=4, extra=""), caffe_pb2.TRAIN)
    assert layer.top_shapes == [(4, 3, 2, 2), (4,)]
    seen = [layer() for _ in range(3)]
    np.testing.assert_array_equal(seen[2][0].numpy(), data[[8, 9, 0, 1]])   # wraps around the 10 rows
    np.testing.assert_array_equal(seen[2][1].numpy(), label[[8, 9, 0, 1]])
    assert layer.cursor() == 12
    layer.set_cursor(0)
    np.testing.assert_array_equal(layer()[0].numpy(), data[:4])


def test_hdf5_data_multi_file_shuffle_and_sharding(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5("a.h5", 5)
    write_h5("b.h5", 7, start=5)
    Path("list.txt").write_text("a.h5\nb.h5\n")
    plain = layer_from_text(H5_LAYER.format(b=6, extra=""), caffe_pb2.TRAIN)
    np.testing.assert_array_equal(np.concatenate([plain()[1].numpy() for _ in range(2)]), np.arange(12))
    shuffled = layer_from_text(H5_LAYER.format(b=12, extra="shuffle: true"), caffe_pb2.TRAIN, seed=11)
    epochs = [shuffled()[1].numpy() for _ in range(3)]
    for epoch in epochs:   # every epoch is a permutation; files stay contiguous blocks (Caffe loads one file)
        assert sorted(epoch) == list(range(12))
        assert set(epoch[:5]) == set(range(5)) or set(epoch[:7]) == set(range(5, 12))
    assert any(not np.array_equal(epochs[0], e) for e in epochs[1:])
    ranks = [layer_from_text(H5_LAYER.format(b=4, extra=""), caffe_pb2.TRAIN, rank=r, world_size=2)
             for r in range(2)]
    np.testing.assert_array_equal(ranks[0]()[1].numpy(), [0, 2])
    np.testing.assert_array_equal(ranks[1]()[1].numpy(), [1, 3])


def test_hdf5_errors(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5("a.h5", 3)
    Path("list.txt").write_text("a.h5\n")
    with pytest.raises(DataError, match="no dataset 'target'"):
        layer_from_text('layer { name: "d" type: "HDF5Data" top: "data" top: "target" '
                        'hdf5_data_param { source: "list.txt" batch_size: 2 } }')
    Path("list2.txt").write_text("missing.h5\n")
    with pytest.raises(DataError, match="list2.txt:1"):
        layer_from_text('layer { name: "d" type: "HDF5Data" top: "data" '
                        'hdf5_data_param { source: "list2.txt" batch_size: 2 } }')


def test_hdf5_output_appends_batches(tmp_path, monkeypatch):
    import torch
    monkeypatch.chdir(tmp_path)
    net = read_net('layer { name: "o" type: "HDF5Output" bottom: "data" bottom: "label" '
                   'hdf5_output_param { file_name: "out.h5" } }')
    layer = build_layer(LayerSpec(net.layer[0], [(2, 3), (2,)]))
    a, b = torch.randn(2, 3), torch.randn(2, 3)
    assert layer(a, torch.tensor([1.0, 2.0])) == ()
    layer(b, torch.tensor([3.0, 4.0]))
    with h5py.File("out.h5", "r") as h5:
        np.testing.assert_array_equal(h5["data"][:], torch.cat([a, b]).numpy())
        np.testing.assert_array_equal(h5["label"][:], [1, 2, 3, 4])


def test_golden_solver_hdf5_net_reads_rows_in_caffe_order(tmp_path, monkeypatch):
    # the golden solver net: HDF5Data TRAIN batch 8 over 64 rows, TEST batch 16, cursor persists (README sect. 2)
    monkeypatch.chdir(tmp_path)
    data, label = write_h5("train.h5", 64)
    Path("train_h5.txt").write_text("train.h5\n")
    text = ('layer { name: "data" type: "HDF5Data" top: "data" top: "label" include { phase: TEST } '
            'hdf5_data_param { source: "train_h5.txt" batch_size: 16 shuffle: false } }')
    test = layer_from_text(text)
    rows = [test()[1].numpy() for _ in range(5)]
    np.testing.assert_array_equal(rows[1], label[16:32])
    np.testing.assert_array_equal(rows[4], label[0:16])
    assert os.path.exists("train.h5")


def test_transform_param_errors(in_golden):
    base = ('layer {{ name: "d" type: "Data" top: "data" data_param {{ source: "raw_lmdb" backend: LMDB '
            'batch_size: 2 }} transform_param {{ {} }} }}')
    with pytest.raises(DataError, match="both mean_file and mean_value"):
        layer_from_text(base.format('mean_file: "mean.binaryproto" mean_value: 1'))
    with pytest.raises(DataError, match="2 mean_value entries; need 1 or one per channel \\(3\\)"):
        layer_from_text(base.format("mean_value: 1 mean_value: 2"))()
    with pytest.raises(DataError, match="smaller than crop_size 65"):
        layer_from_text(base.format("crop_size: 65"))
    with pytest.raises(DataError, match="mean file 'missing.binaryproto'"):
        layer_from_text(base.format('mean_file: "missing.binaryproto"'))


def test_mean_file_must_match_the_uncropped_image(tmp_path, monkeypatch):
    from vggproto.data.convert import write_mean
    write_mean(np.zeros((3, 32, 32), np.float32), str(tmp_path / "small.binaryproto"))
    monkeypatch.chdir(GOLDEN)
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "raw_lmdb" '
                            f'backend: LMDB batch_size: 2 }} transform_param {{ crop_size: 32 mean_file: '
                            f'"{tmp_path / "small.binaryproto"}" }} }}')
    with pytest.raises(DataError, match="is 3x32x32 but the image is 3x64x64"):
        layer()


def test_leveldb_needs_plyvel_and_lmdb_is_detected(tmp_path, monkeypatch):
    pytest.importorskip("lmdb")
    try:
        import plyvel  # noqa: F401
        pytest.skip("plyvel installed")
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ldb").mkdir()
    with pytest.raises(DataError, match="plyvel"):
        layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "ldb" batch_size: 1 } }')
    # the default backend is LEVELDB; an LMDB directory is still read (with a warning)
    monkeypatch.chdir(GOLDEN)
    layer = layer_from_text('layer { name: "d" type: "Data" top: "data" data_param { source: "raw_lmdb" '
                            'batch_size: 1 } }')
    np.testing.assert_array_equal(layer()[0].numpy()[0], raw_golden()[0])


def test_hdf5_dry_run_reads_no_file_even_when_they_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_h5("a.h5", 3)
    Path("list.txt").write_text("a.h5\n")
    dry = layer_from_text(H5_LAYER.format(b=2, extra=""), dry_run=True)   # shapes-only builds read no data
    assert dry.top_shapes == [None, None] and "HDF5 files listed in 'list.txt'" in dry.shapes_unknown
    layer = layer_from_text(H5_LAYER.format(b=2, extra=""))
    assert layer.top_shapes == [(2, 3, 2, 2), (2,)]


# ------------------------------------------------------------------------ per-batch reshape (Caffe's load_batch)

SIZES = [(5, 6), (7, 9), (5, 6)]   # the HxW of a.png, b.png, c.png


@pytest.fixture
def mixed_images(tmp_path, monkeypatch):
    """Three PNGs of two sizes, their list file and an encoded LMDB of them (convert_imageset --encoded)."""
    import cv2

    from vggproto.data.convert import convert_imageset
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    images = []
    for name, (h, w) in zip("abc", SIZES):
        images.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(f"{name}.png", images[-1])
    Path("list.txt").write_text("a.png 0\nb.png 1\nc.png 2\n")
    convert_imageset("", "list.txt", "enc_lmdb", encoded=True, progress=False)
    return [img.transpose(2, 0, 1).astype(np.float32) for img in images]   # the CHW float the layers give


DATA_LAYER = ('layer {{ name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "enc_lmdb" '
              'backend: LMDB batch_size: {b} }} }}')
IMAGE_LAYER = ('layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ '
               'source: "list.txt" batch_size: {b} }} }}')


@pytest.mark.parametrize("text", [DATA_LAYER, IMAGE_LAYER], ids=["Data", "ImageData"])
def test_batch_size_1_takes_each_images_shape(mixed_images, text):
    # Caffe reshapes every batch to its first datum, so single-image batches of different sizes work
    layer = layer_from_text(text.format(b=1))
    assert layer.top_shapes == [(1, 3, 5, 6), (1,)]   # the setup shape: the first record's
    for k in range(5):   # through the wrap-around
        data, label = layer()
        assert tuple(data.shape) == (1, 3, *SIZES[k % 3]) and tuple(label.shape) == (1,)
        np.testing.assert_array_equal(data[0].numpy(), mixed_images[k % 3])   # PNG: lossless, exact
        assert float(label[0]) == k % 3


@pytest.mark.parametrize("text, where, first", [
    (DATA_LAYER, "database 'enc_lmdb' record 1 (key '00000001_b.png')", "database 'enc_lmdb' record 0 "
                                                                        "(key '00000000_a.png')"),
    (IMAGE_LAYER, "list.txt:2", "list.txt:1")], ids=["Data", "ImageData"])
def test_differing_sizes_within_a_batch_are_one_line_error(mixed_images, text, where, first):
    layer = layer_from_text(text.format(b=2))
    with pytest.raises(DataError) as info:
        layer()
    message = str(info.value)
    assert message.startswith(f"{where}: transformed image is 3x7x9 but the batch is 3x5x6, the shape of its "
                              f"first record ({first})")
    assert "\n" not in message


def test_skip_bad_skips_a_record_that_does_not_fit_its_batch(mixed_images):
    layer = layer_from_text(IMAGE_LAYER.format(b=2), skip_bad=True)
    data, label = layer()
    assert tuple(data.shape) == (2, 3, 5, 6)
    np.testing.assert_array_equal(label.numpy(), [0, 2])   # b.png (7x9) is reported and replaced by c.png
    assert layer.bad_records == 1
    data, label = layer()   # the cursor moves by the batch size: positions 2, 3 are c.png, a.png
    np.testing.assert_array_equal(label.numpy(), [2, 0])
    data, label = layer()   # position 4 is b.png: this batch is 7x9, so c.png and a.png after it are skipped
    assert tuple(data.shape) == (2, 3, 7, 9)
    np.testing.assert_array_equal(label.numpy(), [1, 1])
    assert layer.bad_records == 3


def test_a_net_runs_on_data_whose_shape_changes(mixed_images):
    from vggproto.net.interpreter import Net
    head = DATA_LAYER.format(b=1) + (' layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" '
                                     'convolution_param { num_output: 2 kernel_size: 3 pad: 1 '
                                     'weight_filler { type: "gaussian" } } } '
                                     'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" } ')
    pool = ('layer {{ name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param {{ pool: AVE {p} }} }} '
            'layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ '
            'num_output: 4 weight_filler {{ type: "gaussian" }} }} }}')
    net = Net(head + pool.format(p="global_pooling: true"), seed=1)
    assert net.blob_shapes["data"] == (1, 3, 5, 6)
    for k in range(3):
        net.forward()
        assert tuple(net.blobs["conv"].shape) == (1, 2, *SIZES[k])
        assert tuple(net.blobs["fc"].shape) == (1, 4)
    fixed = Net(head + pool.format(p="kernel_size: 2 stride: 2"), seed=1)
    fixed.forward()   # 5x6 -> 3x3 cells: 18 inputs, what the weights were made for
    with pytest.raises(Exception, match="bottom has 40 inputs per sample .* but the weights expect 18"):
        fixed.forward()   # 7x9 -> 4x5: Caffe's InnerProduct Reshape check fails likewise
