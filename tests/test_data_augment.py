"""ImageData layer against an OpenCV/numpy reference, and statistics of the VGG augmentation over many seeded
draws (scale jitter range, crop coverage, flip rate, colour-shift covariance)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_message, read_net
from vggproto.data.augment import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS, VGGAugmentation, rescale_smallest_side
from vggproto.data.options import DataOptions
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError
from vggproto.layers.registry import LayerSpec, build_layer

GOLDEN = Path(__file__).parent / "data" / "golden" / "data"
NAMES = [line.split()[0] for line in (GOLDEN / "list.txt").read_text().splitlines()]


def image_layer(params: str, transform: str = "", phase=caffe_pb2.TEST, **options):
    text = (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ {params} }} '
            f'transform_param {{ {transform} }} }}')
    return build_layer(LayerSpec(read_net(text).layer[0], [], phase, "net.prototxt", 1, options=DataOptions(**options)))


@pytest.fixture
def in_golden(monkeypatch):
    monkeypatch.chdir(GOLDEN)


def test_image_data_resize_equals_caffe_raw_lmdb(in_golden):
    layer = image_layer('source: "list.txt" batch_size: 6 new_height: 64 new_width: 64')
    data, label = layer()
    np.testing.assert_array_equal(data.numpy(), np.load("data_noxform.npz")["blob:data"])
    np.testing.assert_array_equal(label.numpy(), np.arange(6))


def test_image_data_crop_mean_scale_gray_reference(in_golden):
    layer = image_layer('source: "list.txt" batch_size: 3 is_color: false root_folder: "./"',
                        'crop_size: 100 mean_value: 90 scale: 0.125')
    assert layer.top_shapes == [(3, 1, 100, 100), (3,)]
    data, _ = layer()
    for i in range(3):
        img = cv2.imread(NAMES[i], cv2.IMREAD_GRAYSCALE).astype(np.float32)
        h0, w0 = (img.shape[0] - 100) // 2, (img.shape[1] - 100) // 2
        np.testing.assert_array_equal(data[i, 0].numpy(), (img[h0:h0 + 100, w0:w0 + 100] - 90) * np.float32(0.125))


def test_image_data_shuffle_is_seeded_per_epoch_and_rand_skip(in_golden):
    params = 'source: "list.txt" batch_size: 6 new_height: 8 new_width: 8 shuffle: true'
    a = image_layer(params, phase=caffe_pb2.TRAIN, seed=7)
    b = image_layer(params, phase=caffe_pb2.TRAIN, seed=7)
    epochs = [a()[1].numpy() for _ in range(4)]
    np.testing.assert_array_equal(b()[1].numpy(), epochs[0])
    assert all(sorted(e) == list(range(6)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1
    skipped = image_layer('source: "list.txt" batch_size: 2 new_height: 8 new_width: 8 rand_skip: 6', seed=1)
    first = skipped()[1].numpy()
    assert first[1] == (first[0] + 1) % 6


def test_image_data_mixed_sizes_need_resize(in_golden):
    layer = image_layer('source: "list.txt" batch_size: 6')
    with pytest.raises(DataError, match="list.txt:2: transformed image is 3x160x240 but the batch is 3x160x241"):
        layer()


def test_image_data_skip_bad(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    img = np.full((10, 12, 3), 7, np.uint8)
    cv2.imwrite("a.png", img)
    Path("list.txt").write_text("a.png 0\nmissing.png 1\na.png 2\n")
    strict = image_layer('source: "list.txt" batch_size: 3')
    with pytest.raises(DataError, match="list.txt:2: file does not exist"):
        strict()
    lenient = image_layer('source: "list.txt" batch_size: 3', skip_bad=True)
    data, label = lenient()
    np.testing.assert_array_equal(label.numpy(), [0, 2, 2])   # the bad record is replaced by the next good one
    assert lenient.bad_records == 1 and float(data.min()) == 7.0


# ------------------------------------------------------------------------------------------ VGG augmentation

def transformer(text: str, train: bool = True) -> DataTransformer:
    return DataTransformer(read_message(text, caffe_pb2.TransformationParameter()), train, "test")


def test_scale_jitter_is_uniform_over_the_range():
    aug = VGGAugmentation(read_message("scale_min: 256 scale_max: 512", caffe_pb2.VGGAugmentationParameter()),
                          224, "t")
    rng = np.random.default_rng(0)
    draws = np.array([aug.draw_scale(True, rng) for _ in range(20000)])
    assert draws.min() == 256 and draws.max() == 512
    counts = np.bincount(draws - 256, minlength=257)
    expected = len(draws) / 257
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 257 + 5 * np.sqrt(2 * 257)                   # consistent with uniform (df = 256)
    assert aug.draw_scale(False, rng) == 0                     # no test_scale: keep size


def test_rescale_smallest_side_is_isotropic():
    img = np.random.default_rng(1).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    out = rescale_smallest_side(img, 32)
    assert out.shape == (32, 48, 3)
    np.testing.assert_array_equal(out, cv2.resize(img, (48, 32), interpolation=cv2.INTER_LINEAR))
    tall = rescale_smallest_side(img.transpose(1, 0, 2), 20)
    assert tall.shape == (30, 20, 3)


def test_test_phase_rescales_to_q_then_centre_crops():
    t = transformer("crop_size: 24 mean_value: 10 mean_value: 20 mean_value: 30 scale: 0.5 "
                    "vgg_augmentation_param { scale_min: 24 scale_max: 48 test_scale: 32 }", train=False)
    img = np.random.default_rng(2).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    out = t(img, np.random.default_rng(0))
    ref = cv2.resize(img, (45, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32)   # 70*32/50 = 44.8
    ref = (ref[4:28, 10:34] - np.array([10, 20, 30], np.float32)) * np.float32(0.5)
    np.testing.assert_array_equal(out, ref.transpose(2, 0, 1))


def test_train_crop_positions_cover_the_range_and_flip_rate_is_half():
    t = transformer("crop_size: 4 mirror: true")
    h, w = 9, 11
    img = (np.arange(h * w, dtype=np.float32).reshape(h, w, 1) * 2)   # value encodes the source position
    starts, flips = [], 0
    for j in range(4000):
        out = t(img, np.random.default_rng([3, j]))[0]
        flipped = out[0, 1] < out[0, 0]
        flips += flipped
        top_left = out[0, -1] if flipped else out[0, 0]
        starts.append(divmod(int(top_left) // 2, w))
    rows, cols = zip(*starts)
    assert set(rows) == set(range(h - 4 + 1)) and set(cols) == set(range(w - 4 + 1))
    assert abs(np.mean(rows) - 2.5) < 0.15 and abs(np.mean(cols) - 3.5) < 0.15
    assert abs(flips / 4000 - 0.5) < 0.03


def test_colour_shift_covariance_matches_pca_model():
    sigma = 0.1
    t = transformer(f"crop_size: 2 vgg_augmentation_param {{ color_shift_std: {sigma} }}")
    img = np.full((3, 3, 3), 128, np.uint8)
    shifts = np.array([t(img, np.random.default_rng([5, j]))[:, 0, 0] - 128 for j in range(5000)])
    rgb = shifts[:, ::-1].astype(np.float64)                        # net order is BGR
    expected = sum(IMAGENET_EIGENVALUES[i] ** 2 * sigma ** 2 * np.outer(IMAGENET_EIGENVECTORS[i],
                                                                          IMAGENET_EIGENVECTORS[i])
                   for i in range(3))
    cov = np.cov(rgb.T)
    assert np.abs(rgb.mean(axis=0)).max() < 0.1
    assert np.linalg.norm(cov - expected) / np.linalg.norm(expected) < 0.06
    # per eigen-direction: the coefficient on p_i is alpha_i * lambda_i, so its std is sigma * lambda_i
    coeff = rgb @ IMAGENET_EIGENVECTORS.T
    np.testing.assert_allclose(coeff.std(axis=0) / IMAGENET_EIGENVALUES, sigma, rtol=0.05)
    assert np.abs(np.corrcoef(coeff.T) - np.eye(3)).max() < 0.06
    # each image gets one shift for all its pixels
    out = t(img, np.random.default_rng(9))
    assert np.ptp(out.reshape(3, -1), axis=1).max() == 0
    # TEST phase: no colour shift
    test = transformer(f"crop_size: 2 vgg_augmentation_param {{ color_shift_std: {sigma} }}", train=False)
    assert float(np.abs(test(img, np.random.default_rng(1)) - 128).max()) == 0


def test_augmentation_settings_are_validated():
    with pytest.raises(DataError, match="needs transform_param.crop_size"):
        transformer("vgg_augmentation_param { scale_min: 256 }")
    with pytest.raises(DataError, match="smaller than crop_size"):
        transformer("crop_size: 224 vgg_augmentation_param { scale_min: 200 }")
    with pytest.raises(DataError, match="3 eigenvalue"):
        transformer("vgg_augmentation_param { color_shift_std: 0.1 eigenvalue: 1 }")


def test_image_data_train_with_vgg_augmentation(in_golden):
    layer = image_layer('source: "list.txt" batch_size: 6',
                        'crop_size: 96 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 '
                        'vgg_augmentation_param { scale_min: 100 scale_max: 140 color_shift_std: 0.1 }',
                        caffe_pb2.TRAIN, seed=3)
    assert layer.top_shapes == [(6, 3, 96, 96), (6,)]
    data, _ = layer()
    assert np.isfinite(data.numpy()).all() and data.abs().max() < 260
    again = image_layer('source: "list.txt" batch_size: 6',
                        'crop_size: 96 mirror: true mean_value: 104 mean_value: 117 mean_value: 123 '
                        'vgg_augmentation_param { scale_min: 100 scale_max: 140 color_shift_std: 0.1 }',
                        caffe_pb2.TRAIN, seed=3)
    np.testing.assert_array_equal(again()[0].numpy(), data.numpy())   # seeded: reproducible


def test_image_data_dry_run_reads_no_image(in_golden):
    dry = image_layer('source: "list.txt" batch_size: 2', dry_run=True)   # shapes-only builds read no data
    assert dry.top_shapes == [None, None] and "it is the first image's of 'list.txt'" in dry.shapes_unknown
    layer = image_layer('source: "list.txt" batch_size: 2')
    assert layer.top_shapes == [(2, 3, 160, 241), (2,)]   # chelsea.jpg, 241x160
