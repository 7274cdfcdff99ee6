"""Test-time view geometry: rescaling, crop grids, flips (Sect. 3.2 of the paper)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from vggproto.evaluation.evaluate import EvalOptions, _views
from vggproto.evaluation.views import center_crop, crop_boxes, flipped, grid_crops, grid_offsets, preprocess, with_flips


@pytest.mark.parametrize("size,crop,g", [(256, 224, 5), (384, 224, 5), (341, 224, 5), (300, 224, 4),
                                         (224, 224, 3), (512, 224, 2)])
def test_grid_offsets_touch_both_ends_and_are_even(size, crop, g):
    offsets = grid_offsets(size, crop, g)
    assert len(offsets) == g
    assert offsets[0] == 0 and offsets[-1] == size - crop        # corners touch the image corners
    steps = np.diff(offsets)
    assert np.all(steps >= 0) and steps.max() - steps.min() <= 1  # a regular grid (floored)
    if g % 2:
        assert offsets[g // 2] == (size - crop) // 2              # the centre crop is one of the views


def test_single_crop_is_the_centre_crop_and_oversize_crop_fails():
    assert grid_offsets(301, 224, 1) == [(301 - 224) // 2]
    with pytest.raises(ValueError):
        grid_offsets(200, 224, 3)


def test_grid_crops_are_the_slices_and_cover_the_corners():
    image = torch.arange(3 * 300 * 400, dtype=torch.float32).reshape(3, 300, 400)
    crops = grid_crops(image, 224, 5)
    assert crops.shape == (25, 3, 224, 224)
    boxes = crop_boxes(300, 400, 224, 5)
    assert boxes[0] == (0, 0) and boxes[-1] == (300 - 224, 400 - 224)
    for k, (y, x) in enumerate(boxes):
        assert torch.equal(crops[k], image[:, y:y + 224, x:x + 224])
    assert crops[0][0, 0, 0] == image[0, 0, 0]               # top-left pixel of the image
    assert crops[-1][0, -1, -1] == image[0, -1, -1]          # bottom-right pixel of the image
    assert torch.equal(crops[4][:, 0, -1], image[:, 0, -1])  # top-right corner
    assert torch.equal(crops[20][:, -1, 0], image[:, -1, 0])  # bottom-left corner
    assert torch.equal(crops[12], center_crop(image, 224)[0])  # centre of the 5x5 grid = centre crop


def test_views_per_scale_and_flips():
    image = torch.randn(3, 256, 320)
    options = EvalOptions(mode="crops", grid=5)
    views = _views(image, "crops", options, 224)
    assert views.shape == (50, 3, 224, 224)                  # 2 g^2 views per scale
    assert torch.equal(views[25:], torch.flip(views[:25], dims=[-1]))
    dense = _views(image, "dense", options, 224)
    assert dense.shape == (2, 3, 256, 320) and torch.equal(dense[1], image.flip(-1))
    centre = _views(image, "center", EvalOptions(mode="center"), 224)
    assert centre.shape == (1, 3, 224, 224)                   # center: no flip unless asked
    assert _views(image, "center", EvalOptions(mode="center", flip=True), 224).shape[0] == 2
    assert _views(image, "crops", EvalOptions(mode="crops", grid=3, flip=False), 224).shape[0] == 9
    assert torch.equal(with_flips(views[:2], False), views[:2]) and torch.equal(flipped(views[:1])[0],
                                                                                 views[0].flip(-1))


@pytest.mark.parametrize("shape,q,expected", [((300, 400), 256, (256, 341)), ((400, 300), 384, (512, 384)),
                                              ((256, 256), 256, (256, 256))])
def test_preprocess_rescales_smallest_side_and_removes_mean(shape, q, expected):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(*shape, 3)).astype(np.uint8)
    mean = (103.939, 116.779, 123.68)
    out = preprocess(img, q, mean)
    assert out.shape == (3, *expected) and out.dtype == np.float32
    reference = img if shape == expected else cv2.resize(img, expected[::-1], interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, reference.astype(np.float32).transpose(2, 0, 1)
                               - np.float32(mean)[:, None, None], atol=1e-4)


def test_input_scale_multiplies_after_the_mean_like_caffe():
    img = np.full((230, 240, 3), 200, dtype=np.uint8)
    out = preprocess(img, 0, (100.0, 50.0, 0.0), scale=0.5)
    np.testing.assert_allclose(out[:, 0, 0], [50.0, 75.0, 100.0])
