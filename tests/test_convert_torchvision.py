"""Official Caffe VGG <-> torchvision VGG: names, shapes and functional equivalence on real photos.

Caffe's reference logits come from torchvision's VGG-16 module holding the *unfolded* Caffe weights and fed
Caffe's input (BGR, 0-255, minus the mean pixel) — the same network function, independent of the fold — and, for
the reverse direction, from OpenCV's Caffe importer reading the converted caffemodel.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from vggproto.convert.convert import convert
from vggproto.errors import WeightsError
from vggproto.weights.caffemodel import read_weights
from vggproto.weights.torch_files import input_format, save_torch_state
from vggproto.weights.torchvision import (
    CAFFE_MEAN_BGR,
    TORCHVISION_MEAN_RGB,
    TORCHVISION_STD_RGB,
    caffe_to_torchvision,
    torchvision_to_caffe,
)

DATA = Path(__file__).resolve().parent / "data" / "golden" / "upgrade"
CONVS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
# Measured on these photos (docs/notes/convert.md): ~1e-4 of the largest logit, from conv1_1's border only.
LOGIT_TOLERANCE = 2e-3


def _caffe_vgg(depth: int, make, divisor: int = 1) -> dict[str, list[np.ndarray]]:
    """Weights named and shaped as in the official release (fc weights 1x1xNxK, biases 1x1x1xN)."""
    weights, inputs = {}, 3
    for block, (count, width) in enumerate(zip(CONVS[depth], WIDTHS), 1):
        width //= divisor
        for i in range(1, count + 1):
            weights[f"conv{block}_{i}"] = [make((width, inputs, 3, 3), (2 / (9 * inputs)) ** 0.5),
                                           make((1, 1, 1, width), 0.1)]
            inputs = width
    hidden = 4096 // divisor
    for name, (outputs, fan_in) in {"fc6": (hidden, inputs * 49), "fc7": (hidden, hidden),
                                    "fc8": (1000, hidden)}.items():
        weights[name] = [make((1, 1, outputs, fan_in), (2 / fan_in) ** 0.5), make((1, 1, 1, outputs), 0.1)]
    return weights


def _zeros(shape, std):
    return np.zeros(shape, np.float32)


def _tv_model(depth: int, state: dict[str, np.ndarray]) -> torch.nn.Module:
    with torch.device("meta"):
        model = getattr(torchvision.models, f"vgg{depth}")()
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, assign=True)
    return model.eval()


def _photos() -> np.ndarray:
    import cv2
    import skimage.data
    images = [skimage.data.astronaut()]  # tools/bench_convert.py --equivalence measures all six photos
    return np.stack([cv2.resize(im, (224, 224), interpolation=cv2.INTER_AREA) for im in images])  # RGB uint8


def _caffe_input(rgb: np.ndarray) -> torch.Tensor:
    bgr = rgb[..., ::-1].astype(np.float32) - np.array(CAFFE_MEAN_BGR, np.float32)
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(0, 3, 1, 2)))


def _torchvision_input(rgb: np.ndarray) -> torch.Tensor:
    x = (rgb.astype(np.float32) / 255 - np.array(TORCHVISION_MEAN_RGB, np.float32)) / np.array(
        TORCHVISION_STD_RGB, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _raw_state(weights) -> dict[str, np.ndarray]:
    """The Caffe weights under torchvision's keys without any folding (the Caffe-input reference network)."""
    folded = caffe_to_torchvision(weights)
    raw = dict(folded)
    raw["features.0.weight"] = weights["conv1_1"][0]
    raw["features.0.bias"] = weights["conv1_1"][1].reshape(-1)
    return raw


def _random(generator):
    def make(shape, std):  # uniform with the given std (cheaper to draw than normal for 138M values)
        return torch.rand(shape, generator=generator).sub_(0.5).mul_(std * 12 ** 0.5).numpy()
    return make


@pytest.mark.parametrize("depth", sorted(CONVS))
def test_names_and_shapes_match_torchvision(depth):
    weights = _caffe_vgg(depth, _zeros)
    state = caffe_to_torchvision(weights)
    with torch.device("meta"):
        expected = getattr(torchvision.models, f"vgg{depth}")().state_dict()
    assert list(state) == list(expected)
    assert all(tuple(state[k].shape) == tuple(v.shape) for k, v in expected.items())
    back = torchvision_to_caffe(state)
    assert list(back) == list(weights)
    assert back["fc6"][0].shape == (4096, 25088) and back["conv5_1"][1].shape == (512,)


@pytest.mark.slow
def test_full_size_vgg16_is_equivalent_both_ways_on_a_photo(tmp_path):
    """One test (one set of full-size weights and forwards, also under pytest-xdist) checks both directions."""
    weights = _caffe_vgg(16, _random(torch.Generator().manual_seed(0)))
    photos = _photos()
    caffe_x, tv_x = _caffe_input(photos), _torchvision_input(photos)
    with torch.no_grad():
        reference = _tv_model(16, _raw_state(weights))
        folded = _tv_model(16, caffe_to_torchvision(weights))
        caffe_logits, tv_logits = reference(caffe_x), folded(tv_x)
        caffe_conv1, tv_conv1 = reference.features[0](caffe_x), folded.features[0](tv_x)

    # conv1_1: exact inside the image (float32 rounding only), different on the one-pixel border
    scale = caffe_conv1.abs().max()
    interior = (caffe_conv1 - tv_conv1)[..., 1:-1, 1:-1].abs().max()
    border = (caffe_conv1 - tv_conv1).abs().max()
    assert interior <= 2e-6 * scale
    assert border > 100 * interior  # zero padding in normalised space != zero in Caffe space
    # ... and bounded by the conv of the padding offset 255*mean - M (at most ~0.5 grey levels per channel)
    offsets = np.array([255 * m for m in TORCHVISION_MEAN_RGB[::-1]]) - np.array(CAFFE_MEAN_BGR)
    assert border <= 1.01 * np.abs(offsets).max() * np.abs(weights["conv1_1"][0]).sum(axis=(1, 2, 3)).max()

    # logits within the documented tolerance, same top-1
    relative = float((caffe_logits - tv_logits).abs().max() / caffe_logits.abs().max())
    assert relative <= LOGIT_TOLERANCE
    assert torch.equal(caffe_logits.argmax(1), tv_logits.argmax(1))

    # reverse: torchvision state dict -> caffemodel, run by OpenCV's Caffe importer on Caffe's input
    cv2 = pytest.importorskip("cv2")
    save_torch_state(tmp_path / "vgg16_tv.pth", caffe_to_torchvision(weights))
    assert input_format(tmp_path / "vgg16_tv.pth") == "torchvision"
    result = convert(tmp_path / "vgg16_tv.pth", tmp_path / "vgg16.caffemodel")
    assert result.source_format == "torchvision" and result.weights["fc6"][0].shape == (4096, 25088)
    net = cv2.dnn.readNetFromCaffe(str(DATA / "vgg16_v1.prototxt"), str(tmp_path / "vgg16.caffemodel"))
    net.setInput(caffe_x.numpy())
    logits = torch.from_numpy(net.forward("fc8"))
    torch.testing.assert_close(logits, caffe_logits, rtol=0, atol=1e-4 * float(logits.abs().max()))
    assert float((logits - tv_logits).abs().max() / logits.abs().max()) <= LOGIT_TOLERANCE


def test_round_trip_through_torchvision():
    weights = _caffe_vgg(16, _random(torch.Generator().manual_seed(1)), divisor=16)
    back = torchvision_to_caffe(caffe_to_torchvision(weights))
    for layer, blobs in weights.items():
        for original, converted in zip(blobs, back[layer]):
            original = original.reshape(converted.shape)
            if layer == "conv1_1":  # folded and unfolded in float64, rounded to float32 twice
                np.testing.assert_allclose(converted, original, rtol=1e-6, atol=1e-6 * np.abs(original).max())
            else:
                assert converted.tobytes() == original.tobytes()


def test_cli_writes_torchvision_state_dicts(tmp_path):
    from vggproto.weights.official_like import write_official_like
    small = tmp_path / "small.caffemodel"
    write_official_like(small, 16, width_divisor=16)
    convert(small, tmp_path / "a.pth", to="torchvision")
    state = torch.load(tmp_path / "a.pth", weights_only=True)
    with torch.device("meta"):
        keys = list(torchvision.models.vgg16().state_dict())
    assert list(state) == keys and input_format(tmp_path / "a.pth") == "torchvision"
    raw = read_weights(small)
    assert np.array_equal(state["classifier.0.weight"].numpy(), raw["fc6"][0].reshape(256, 1568))
    assert np.array_equal(state["features.28.bias"].numpy(), raw["conv5_3"][1].reshape(-1))
    convert(small, tmp_path / "a.safetensors", to="torchvision")
    assert input_format(tmp_path / "a.safetensors") == "torchvision"
    back = convert(tmp_path / "a.safetensors", tmp_path / "b.h5").weights
    assert back["fc6"][0].tobytes() == raw["fc6"][0].tobytes()


def test_non_vgg_layouts_are_refused():
    with pytest.raises(WeightsError, match="no torchvision VGG counterpart"):
        caffe_to_torchvision({"conv1": [np.zeros((4, 3, 3, 3), np.float32), np.zeros(4, np.float32)]})
    weights = _caffe_vgg(16, _zeros)
    del weights["conv3_2"]
    with pytest.raises(WeightsError, match="consecutive"):
        caffe_to_torchvision(weights)
    with pytest.raises(WeightsError, match="batch-norm"):
        torchvision_to_caffe({"features.0.weight": np.zeros(1), "features.1.running_mean": np.zeros(1)})
