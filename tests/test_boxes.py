"""Box geometry (IoU, encodings, boxes under rescale/crop/flip), the greedy merge, box list files and the BoxData
layer's image/box consistency — against hand-computed values and against the pixels of drawn rectangles."""
from __future__ import annotations

import numpy as np
import pytest

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.box_geometry import (
    corners_to_target,
    iou,
    iou_matrix,
    target_to_corners,
    transform_boxes,
    window_to_image,
)
from vggproto.data.boxes import parse_box_list, transformed_record
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError
from vggproto.localize.boxes import greedy_merge, match_score

# ------------------------------------------------------------------------------------------------ IoU, encodings

def test_iou_hand_values():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [10, 0, 20, 10]) == 0.0          # touching edges: no overlap
    assert iou([0, 0, 4, 4], [1, 1, 3, 3]) == pytest.approx(4 / 16)
    assert iou([0, 0, 0, 5], [0, 0, 0, 5]) == 0.0               # degenerate boxes: no division by zero
    m = iou_matrix([[0, 0, 2, 2], [1, 1, 3, 3]], [[0, 0, 2, 2], [2, 2, 3, 3], [0, 0, 1, 1]])
    assert m.shape == (2, 3)
    assert m[0].tolist() == pytest.approx([1, 0, 0.25]) and m[1].tolist() == pytest.approx([1 / 7, 0.25, 0])


def test_target_encoding_round_trip():
    corners = np.array([[0, 0, 224, 224], [10, 20, 50, 120]], dtype=float)
    target = corners_to_target(corners, 224)
    assert target[0].tolist() == [0.5, 0.5, 1, 1]
    assert target[1].tolist() == pytest.approx([30 / 224, 70 / 224, 40 / 224, 100 / 224])
    assert np.allclose(target_to_corners(target, 224), corners)
    assert target_to_corners([0.5, 0.5, -0.2, 0.4], 10).tolist() == [[4, 3, 6, 7]]   # |w| for negative sizes


def test_transform_boxes_rescale_crop_flip():
    box = [[20, 10, 60, 50]]
    # rescale 100x200 -> 50x100 (factor 1/2), crop 40x40 at (h0, w0) = (5, 10), no flip
    assert transform_boxes(box, (100, 200), (50, 100), (5, 10), (40, 40), False).tolist() == [[0, 0, 20, 20]]
    # the same with a flip: x -> 40 - x
    assert transform_boxes(box, (100, 200), (50, 100), (5, 10), (40, 40), True).tolist() == [[20, 0, 40, 20]]
    # a crop cuts the box: clipped at the crop's border
    assert transform_boxes([[0, 0, 100, 100]], (100, 100), (100, 100), (30, 50), (40, 40), False).tolist() == [
        [0, 0, 40, 40]]
    # window_to_image undoes rescale + crop
    moved = transform_boxes(box, (100, 200), (50, 100), (5, 10), (40, 40), False)
    assert window_to_image(moved, (10, 5), (0.5, 0.5)).tolist() == [[20, 10, 60, 50]]


@pytest.mark.parametrize("mirror_on", [False, True])
@pytest.mark.parametrize("train,scale", [(True, (40, 56)), (False, (48, 48))])
def test_boxdata_box_follows_the_pixels(mirror_on, train, scale):
    """Draw a red rectangle, run the real transformer (rescale, random crop, mirror), find the red pixels: the
    box target must frame them (up to the one-pixel blur of the linear resize)."""
    rng = np.random.default_rng(5)
    param = caffe_pb2.TransformationParameter(crop_size=32, mirror=mirror_on)
    aug = param.vgg_augmentation_param
    if train:
        aug.scale_min, aug.scale_max = scale
    else:
        aug.test_scale = scale[0]
    transformer = DataTransformer(param, train, "test")
    flips = set()
    for j in range(12):
        img = rng.integers(0, 120, size=(45, 70, 3)).astype(np.uint8)
        x1, y1 = int(rng.integers(0, 40)), int(rng.integers(0, 20))
        box = np.array([x1, y1, x1 + int(rng.integers(10, 30)), y1 + int(rng.integers(10, 25))], float)
        img[int(box[1]):int(box[3]), int(box[0]):int(box[2])] = (0, 0, 255)
        out, target = transformed_record(transformer, img, box, 11, j, "test")
        decision = transformer.draw(45, 70, 3, np.random.default_rng([11, j]))
        flips.add(decision.mirror)
        red = (out[2] > 200) & (out[1] < 60) & (out[0] < 60)
        expected = target_to_corners(target, 32)[0]
        if not red.any():
            assert expected[2] - expected[0] < 1.5 or expected[3] - expected[1] < 1.5   # cropped away
            continue
        ys, xs = np.nonzero(red)
        found = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert np.abs(np.array(found) - expected).max() <= 1.5, (j, found, expected)
        assert np.all((target >= 0) & (target <= 1))
    assert flips == ({False, True} if mirror_on else {False})


# ------------------------------------------------------------------------------------------------ greedy merge

def test_greedy_merge_clusters_and_scores():
    boxes = [[0, 0, 10, 10], [1, 0, 11, 10], [0, 1, 10, 11],          # one cluster near the origin
             [50, 50, 70, 70], [51, 50, 71, 70],                      # a second one
             [100, 0, 104, 4]]                                       # a lone box
    scores = [0.2, 0.3, 0.1, 0.5, 0.4, 0.05]
    merged = greedy_merge(boxes, scores, threshold=0.5)
    assert [m.count for m in merged] == [2, 3, 1]
    assert merged[0].score == pytest.approx(0.9) and merged[1].score == pytest.approx(0.6)
    assert merged[0].box.tolist() == pytest.approx([50.5, 50, 70.5, 70])          # plain mean of coordinates
    assert merged[1].box.tolist() == pytest.approx([1 / 3, 1 / 3, 31 / 3, 31 / 3])
    assert sorted(merged[1].members) == [0, 1, 2]
    assert greedy_merge(boxes, scores, threshold=0.0)[0].count == 1               # no merging at all
    assert len(greedy_merge(boxes, scores, threshold=100.0)) == 1                 # everything merges


def test_merged_box_is_the_mean_of_all_members_not_of_pairs():
    """Merging three boxes one after the other averages all three (count-weighted), not pairwise halves."""
    merged = greedy_merge([[0, 0, 10, 10], [0, 0, 10, 10], [3, 0, 13, 10]], [1, 1, 1], threshold=1.0)
    assert len(merged) == 1 and merged[0].box.tolist() == pytest.approx([1, 0, 11, 10])


def test_match_score():
    assert match_score(np.array([0, 0, 10, 10.]), np.array([0, 0, 10, 10.])) == 0
    # shifted by 2 of a side of 10: distance 0.2, IoU 8/12
    assert match_score(np.array([0, 0, 10, 10.]), np.array([2, 0, 12, 10.])) == pytest.approx(0.2 + 1 - 8 / 12)


# ------------------------------------------------------------------------------------------------ list files

def test_box_list_parsing(tmp_path):
    path = tmp_path / "boxes.txt"
    path.write_text("# comment\na.jpg 3 0 0 10 10\n\nb.jpg 1 0 0 5 5 6 6 9 9\nc.jpg\n")
    with pytest.raises(DataError, match="boxes.txt:5"):
        parse_box_list(str(path))
    entries = parse_box_list(str(path), need_boxes=False)
    assert [(e.path, e.label, len(e.boxes), e.line) for e in entries] == [
        ("a.jpg", 3, 1, 2), ("b.jpg", 1, 2, 4), ("c.jpg", None, 0, 5)]
    for text, match in (("a.jpg 1 0 0 10\n", "fields"), ("a.jpg x 0 0 1 1\n", "integer"),
                        ("a.jpg 1 5 0 1 1\n", "x2 <= x1"), ("a.jpg -1 0 0 1 1\n", "negative")):
        path.write_text(text)
        with pytest.raises(DataError, match=match):
            parse_box_list(str(path))


# ------------------------------------------------------------------------------------------------ BoxData layer

def test_boxdata_layer_tops_and_errors(tmp_path):
    from vggproto.data.options import DataOptions
    from vggproto.errors import NetError
    from vggproto.localize.synthetic import make_synthetic_set
    from vggproto.net.interpreter import Net
    train, _ = make_synthetic_set(tmp_path, 3, 1, height=40, width=50, seed=1)
    layer = f"""layer {{ name: "data" type: "BoxData" top: "data" top: "label" top: "box"
      image_data_param {{ source: "{train}" batch_size: 4 }}
      transform_param {{ crop_size: 40 mean_value: 128 vgg_augmentation_param {{ test_scale: 40 }} }} }}"""
    net = Net(layer.encode(), phase="TEST", options=DataOptions(seed=0))
    assert net.blob_shapes == {"data": (4, 3, 40, 40), "label": (4,), "box": (4, 4)}
    net.forward()
    entries = parse_box_list(str(train))
    # TEST phase: centre crop of the 40x50 image at x0 = 5; the 4th record wraps around to the first image
    for i, entry in enumerate(entries + entries[:1]):
        expected = corners_to_target(transform_boxes(entry.boxes, (40, 50), (40, 50), (0, 5), (40, 40), False), 40)
        assert net.blobs["label"][i] == entry.label
        assert np.allclose(net.blobs["box"][i].numpy(), expected[0], atol=1e-6)
    with pytest.raises((NetError, DataError), match="crop_size"):
        Net(layer.replace("crop_size: 40 ", "").encode(), phase="TEST")
    with pytest.raises(DataError, match="fields"):
        (tmp_path / "bad.txt").write_text("a.png 1 2 3\n")
        Net(layer.replace(str(train), str(tmp_path / "bad.txt")).encode(), phase="TEST")
