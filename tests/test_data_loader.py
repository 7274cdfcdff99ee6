"""The batch feed and the device (GPU) path: worker processes give exactly the batches of the synchronous path, in
order, and resume at a saved cursor."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.data.options import DataOptions
from vggproto.layers.registry import LayerSpec, build_layer

GOLDEN = Path(__file__).parent / "data" / "golden" / "data"
TRAIN_NET = ('layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "raw_lmdb" '
             'backend: LMDB batch_size: 4 } transform_param { crop_size: 48 mirror: true mean_value: 110 '
             'vgg_augmentation_param { scale_min: 48 scale_max: 80 color_shift_std: 0.1 } } }')


def build(**options):
    return build_layer(LayerSpec(read_net(TRAIN_NET).layer[0], [], caffe_pb2.TRAIN, options=DataOptions(**options)))


@pytest.fixture
def in_golden(monkeypatch):
    monkeypatch.chdir(GOLDEN)


def test_workers_reproduce_synchronous_batches_and_resume(in_golden):
    sync = build(seed=5)
    expected = [[t.numpy().copy() for t in sync()] for _ in range(4)]
    par = build(seed=5, data_workers=2, prefetch=2)
    for ref in expected[:2]:
        got = par()
        for a, b in zip(got, ref):
            np.testing.assert_array_equal(a.numpy(), b)
    assert par.cursor() == 8
    par.set_cursor(12)   # resume in the middle (restarts the workers)
    for a, b in zip(par(), expected[3]):
        np.testing.assert_array_equal(a.numpy(), b)
    par.feed.close()


def test_seed_changes_augmentation(in_golden):
    a, b = build(seed=1)(), build(seed=2)()
    assert not np.array_equal(a[0].numpy(), b[0].numpy())
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())   # same records, different augmentation


def test_tensor_transform_matches_numpy_transformer():
    # the GPU path's tensor ops (run here on the CPU) make the same draws and compute the same values
    import torch

    from vggproto.caffe.prototxt import read_message
    from vggproto.data.gpu import TensorTransform
    from vggproto.data.transform import DataTransformer
    img = np.random.default_rng(0).integers(0, 256, (37, 45, 3), dtype=np.uint8)
    exact = ("crop_size: 20 mirror: true mean_value: 1 mean_value: 2 mean_value: 3 scale: 0.5 "
             "vgg_augmentation_param { color_shift_std: 0.1 }")
    rescaled = exact.replace("{", "{ scale_min: 24 scale_max: 60")
    for text, tol in ((exact, 0), (rescaled, 0.5 * 1 + 1e-4)):   # rescale: OpenCV fixed-point rounding, 1 level
        t = DataTransformer(read_message(text, caffe_pb2.TransformationParameter()), True, "t")
        ops = TensorTransform(t)
        for j in range(20):
            ref = t(img, np.random.default_rng([1, j]))
            got = ops(torch.from_numpy(img).permute(2, 0, 1), np.random.default_rng([1, j])).numpy()
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=0, atol=tol + 1e-5)


def test_device_batch_maker_on_cpu_matches_cpu_pipeline(in_golden):
    # the gpu_decode plumbing with device "cpu" (torchvision's libjpeg-turbo decode): same records, same draws
    text = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
            'batch_size: 6 new_height: 70 new_width: 70 } transform_param { crop_size: 64 mirror: true '
            'mean_value: 100 } }')
    param = read_net(text).layer[0]
    cpu = build_layer(LayerSpec(param, [], caffe_pb2.TRAIN, options=DataOptions(seed=4)))
    dev = build_layer(LayerSpec(param, [], caffe_pb2.TRAIN, options=DataOptions(seed=4, gpu_decode=True, device="cpu")))
    from vggproto.data.gpu import DeviceBatchMaker
    assert isinstance(dev.feed.maker, DeviceBatchMaker)
    (a, la), (b, lb) = cpu(), dev()
    np.testing.assert_array_equal(la.numpy(), lb.numpy())
    # decode is identical (libjpeg-turbo); resize differs from OpenCV's fixed point by at most one level
    assert float((a - b).abs().max()) <= 1.0
    assert float((a - b).abs().mean()) < 0.2   # measured 0.11-0.12 on these photos


@pytest.fixture
def mixed_jpegs(tmp_path, monkeypatch):
    """JPEGs of two sizes in a list file: batches of one take each image's own shape (Caffe's load_batch)."""
    import cv2
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(1)
    for name, (h, w) in zip("abc", [(16, 24), (20, 12), (16, 24)]):
        smooth = cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (w, h))
        cv2.imwrite(f"{name}.jpg", smooth)
    Path("list.txt").write_text("a.jpg 0\nb.jpg 1\nc.jpg 2\n")
    return [(16, 24), (20, 12), (16, 24)]


def mixed_layer(batch: int, **options):
    text = ('layer { name: "d" type: "ImageData" top: "data" top: "label" image_data_param { source: "list.txt" '
            f'batch_size: {batch} }} transform_param {{ mirror: true mean_value: 10 }} }}')
    return build_layer(LayerSpec(read_net(text).layer[0], [], caffe_pb2.TRAIN, options=DataOptions(**options)))


def test_workers_deliver_batches_of_changing_shape_in_order(mixed_jpegs):
    sync = mixed_layer(1, seed=3)
    expected = [[t.numpy().copy() for t in sync()] for _ in range(4)]
    assert [e[0].shape[2:] for e in expected] == [mixed_jpegs[k % 3] for k in range(4)]
    par = mixed_layer(1, seed=3, data_workers=2, prefetch=2)
    for ref in expected:
        for a, b in zip(par(), ref):
            np.testing.assert_array_equal(a.numpy(), b)
    par.feed.close()


def test_device_batch_maker_takes_each_batch_shape_and_names_a_misfit(mixed_jpegs):
    from vggproto.errors import DataError
    cpu, dev = mixed_layer(1, seed=2), mixed_layer(1, seed=2, gpu_decode=True, device="cpu")
    for k in range(3):
        (a, la), (b, lb) = cpu(), dev()
        assert tuple(b.shape) == (1, 3, *mixed_jpegs[k]) == tuple(a.shape)
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
        assert float((a - b).abs().max()) <= 1.0   # OpenCV's and torchvision's JPEG decoders may differ by 1
    with pytest.raises(DataError, match=r"^list.txt:2: transformed image is 3x20x12 but the batch is 3x16x24, "
                                        r"the shape of its first record \(list.txt:1\)"):
        mixed_layer(2, gpu_decode=True, device="cpu")()
