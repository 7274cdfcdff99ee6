"""SSD's layers (Normalize, Permute, PriorBox, DetectionOutput), two re-created SSD deploy nets and ``detect``.

Every layer is checked against two independent references: OpenCV's dnn (``cv2.dnn.readNetFromCaffe``) on a
one-layer net, and a hand-written numpy version or a literal example worked out by hand.  The deploy nets
(tests/data/forks) run with random weights written by vggproto and every blob OpenCV exposes is compared.
OpenCV's DetectionOutput lists its rows by descending score and pads them with zeros up to keep_top_k (SSD lists
them by label, then score, and has exactly num_kept rows), so its rows are compared after sorting by score.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import random_weights

from vggproto.caffe.prototxt import read_net
from vggproto.cli import main
from vggproto.errors import VGGProtoError
from vggproto.evaluation.detect import label_names, parse_size
from vggproto.net import Net
from vggproto.weights.caffemodel import write_weights

FORKS = Path(__file__).parent / "data" / "forks"
RTOL = 1e-4


def _net_text(inputs: dict[str, tuple[int, ...]], layer: str) -> str:
    text = "".join(f'input: "{name}"\ninput_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                   for name, shape in inputs.items())
    return f'name: "t"\n{text}{layer}\n'


def _run_both(tmp: Path, inputs: dict[str, np.ndarray], layer: str, weights: dict | None = None,
              dialect: str | None = None, cv_weights: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The top 'out' of a one-layer net from vggproto and from OpenCV's dnn (given ``cv_weights`` if they differ)."""
    path = tmp / "net.prototxt"
    path.write_text(_net_text({k: v.shape for k, v in inputs.items()}, layer))
    models = {}
    for who, blobs in (("ours", weights), ("cv", cv_weights or weights)):
        if blobs is not None:
            models[who] = str(tmp / f"{who}.caffemodel")
            write_weights(models[who], blobs, read_net(str(path)))
    ours = Net(str(path), models.get("ours"), dialect=dialect).forward(**inputs)["out"].detach().numpy()
    cv_net = cv2.dnn.readNetFromCaffe(str(path), *([models["cv"]] if "cv" in models else []))
    for name, value in inputs.items():
        cv_net.setInput(value, name)
    return ours, cv_net.forward("out")


def _ours(tmp: Path, inputs: dict[str, np.ndarray], layer: str, dialect: str | None = None) -> np.ndarray:
    path = tmp / "ours.prototxt"
    path.write_text(_net_text({k: v.shape for k, v in inputs.items()}, layer))
    return Net(str(path), dialect=dialect).forward(**inputs)["out"].detach().numpy()


def _close(ours: np.ndarray, ref: np.ndarray, rtol: float = RTOL) -> float:
    """Max |difference| relative to the reference's largest magnitude; asserts shapes and the tolerance."""
    assert ours.shape == ref.shape
    diff = float(np.abs(ours.astype(np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))
    assert diff <= rtol, diff
    return diff


# ------------------------------------------------------------------------------------------------- Normalize

def _normalize_ref(x: np.ndarray, scale: np.ndarray, across: bool, eps: float) -> np.ndarray:
    x = x.astype(np.float64)
    axes = (1, 2, 3) if across else (1,)
    return x / np.sqrt((x * x).sum(axis=axes, keepdims=True) + eps) * scale.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("across", [True, False])
@pytest.mark.parametrize("shared", [True, False])
def test_normalize_matches_opencv_and_numpy(tmp_path, across, shared):
    """OpenCV reads no 0-axis blob (SSD's shared scale; given to it as [1]) and refuses a per-channel scale with
    across_spatial, so that one case is checked against numpy only."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    scale = rng.uniform(0.5, 3, () if shared else (5,)).astype(np.float32)
    layer = (f'layer {{ name: "out" type: "Normalize" bottom: "x" top: "out" norm_param {{ across_spatial: '
             f'{str(across).lower()} channel_shared: {str(shared).lower()} eps: 0.25 }} }}')
    if across and not shared:
        path = tmp_path / "n.prototxt"
        path.write_text(_net_text({"x": x.shape}, layer))
        write_weights(str(tmp_path / "n.caffemodel"), {"out": [scale]}, read_net(str(path)))
        ours = Net(str(path), str(tmp_path / "n.caffemodel")).forward(x=x)["out"].detach().numpy()
    else:
        ours, theirs = _run_both(tmp_path, {"x": x}, layer, {"out": [scale]}, cv_weights={"out": [scale.reshape(-1)]})
        _close(ours, theirs)
    _close(ours, _normalize_ref(x, scale, across, 0.25))   # eps inside the square root, in both modes


def test_normalize_default_and_filler_scales(tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 3, 2, 2)).astype(np.float32)
    plain = _ours(tmp_path, {"x": x}, 'layer { name: "out" type: "Normalize" bottom: "x" top: "out" }')
    _close(plain, _normalize_ref(x, np.ones(1), True, 1e-10))
    path = tmp_path / "f.prototxt"
    path.write_text(_net_text({"x": x.shape}, 'layer { name: "out" type: "Normalize" bottom: "x" top: "out" '
                              'norm_param { channel_shared: false scale_filler { type: "constant" value: 20 } } }'))
    net = Net(str(path))
    assert tuple(net.params["out"][0].shape) == (3,) and torch.all(net.params["out"][0] == 20)


# --------------------------------------------------------------------------------------------------- Permute

@pytest.mark.parametrize("order,full", [((0, 2, 3, 1), (0, 2, 3, 1)), ((0, 3), (0, 3, 1, 2)), ((), (0, 1, 2, 3)),
                                        ((1,), (1, 0, 2, 3))])
def test_permute_matches_opencv_and_numpy(tmp_path, order, full):
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    fields = " ".join(f"order: {o}" for o in order)
    layer = f'layer {{ name: "out" type: "Permute" bottom: "x" top: "out" permute_param {{ {fields} }} }}'
    ours = _ours(tmp_path, {"x": x}, layer)
    np.testing.assert_array_equal(ours, x.transpose(full))   # axes left out follow in increasing order
    if len(order) in (0, 4):   # OpenCV's Permute needs every axis listed
        _, theirs = _run_both(tmp_path, {"x": x}, layer)
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("fields,message", [("order: 0 order: 0", "lists axis 0 twice"),
                                            ("order: 4", "order 4 is out of range")])
def test_permute_errors(tmp_path, fields, message):
    layer = f'layer {{ name: "out" type: "Permute" bottom: "x" top: "out" permute_param {{ {fields} }} }}'
    with pytest.raises(VGGProtoError, match=message):
        _ours(tmp_path, {"x": np.zeros((1, 2, 3, 4), np.float32)}, layer)


# -------------------------------------------------------------------------------------------------- PriorBox

def _prior_inputs(feature: tuple[int, int], image: tuple[int, int]) -> dict[str, np.ndarray]:
    return {"feat": np.zeros((1, 2, *feature), np.float32), "data": np.zeros((1, 3, *image), np.float32)}


def _prior_layer(fields: str) -> str:
    return ('layer { name: "out" type: "PriorBox" bottom: "feat" bottom: "data" top: "out" '
            f'prior_box_param {{ {fields} }} }}')


def test_prior_box_literal_example(tmp_path):
    """2x2 map on a 20x20 image: step 10, cell (0,0) centred at (5,5); min 4, max 9 (side sqrt(36) = 6), ratio 2
    flipped (w, h = 4·√2, 4/√2 and the transpose), 4 variances; cell (0,1) is the same shifted by 10 px in x."""
    fields = ("min_size: 4 max_size: 9 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1 variance: 0.2 "
              "variance: 0.2")
    out = _ours(tmp_path, _prior_inputs((2, 2), (20, 20)), _prior_layer(fields))
    assert out.shape == (1, 2, 2 * 2 * 4 * 4)
    r, s = 2 * 2 ** 0.5, 2 ** 0.5   # half-width and half-height of the ratio-2 box
    cell = np.array([[3, 3, 7, 7], [2, 2, 8, 8], [5 - r, 5 - s, 5 + r, 5 + s], [5 - s, 5 - r, 5 + s, 5 + r]]) / 20
    np.testing.assert_allclose(out[0, 0, :16].reshape(4, 4), cell, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, 16:32].reshape(4, 4), cell + [0.5, 0, 0.5, 0], rtol=1e-6)   # cell (0,1)
    np.testing.assert_allclose(out[0, 0, 48:52], cell[0] + 0.5, rtol=1e-6)                         # cell (1,1)
    np.testing.assert_array_equal(out[0, 1].reshape(-1, 4), np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (16, 1)))
    # SSD truncates min_size/max_size to int: 4.9 and 9.9 give the same boxes; no clip by default (negatives kept)
    np.testing.assert_array_equal(_ours(tmp_path, _prior_inputs((2, 2), (20, 20)), _prior_layer(
        fields.replace("min_size: 4 max_size: 9", "min_size: 4.9 max_size: 9.9"))), out)
    wide = _ours(tmp_path, _prior_inputs((2, 2), (20, 20)), _prior_layer("min_size: 16"))
    assert wide.min() == pytest.approx(-0.15) and np.all(wide[0, 1] == np.float32(0.1))   # default variance 0.1


def test_prior_box_image_size_step_and_offset_by_hand(tmp_path):
    """img_size overrides bottom 1's size; step_h/step_w override image/feature; offset moves the centres."""
    inputs = _prior_inputs((2, 3), (20, 30))
    out = _ours(tmp_path, inputs, _prior_layer("min_size: 2 img_size: 40 offset: 0.25 variance: 1"))
    # step 40/3 in x, 40/2 in y; centre of cell (1, 2) = ((2 + .25)·40/3, (1 + .25)·20) = (30, 25)
    np.testing.assert_allclose(out[0, 0, -4:], np.array([29, 24, 31, 26]) / 40, rtol=1e-6)
    out = _ours(tmp_path, inputs, _prior_layer("min_size: 2 img_h: 10 img_w: 20 step_h: 3 step_w: 4 variance: 1"))
    np.testing.assert_allclose(out[0, 0, -4:], np.array([(2.5 * 4 - 1) / 20, (1.5 * 3 - 1) / 10,
                                                         (2.5 * 4 + 1) / 20, (1.5 * 3 + 1) / 10]), rtol=1e-6)


SSD_PRIORS = [
    "min_size: 4 max_size: 9 aspect_ratio: 2 aspect_ratio: 3 flip: true clip: false variance: 0.1",
    "min_size: 3 min_size: 6 max_size: 5 max_size: 11 aspect_ratio: 2 aspect_ratio: 0.5 aspect_ratio: 2 "
    "clip: true variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
    "min_size: 5 aspect_ratio: 3 flip: false clip: false step: 3 offset: 0.2 variance: 0.3",
    "min_size: 5 aspect_ratio: 1.5 clip: false step_h: 4 step_w: 2.5 variance: 0.3",
]


@pytest.mark.parametrize("fields", SSD_PRIORS)
def test_prior_box_matches_opencv(tmp_path, fields):
    ours, theirs = _run_both(tmp_path, _prior_inputs((3, 4), (12, 17)), _prior_layer(fields))
    _close(ours, theirs, 1e-6)


OPENCV_PRIORS = [
    "min_size: 4.5 max_size: 9.5 aspect_ratio: 2 variance: 0.1",   # fractional sizes kept, clip by default
    "min_size: 5 img_size: 40 clip: false variance: 0.2",           # OpenCV takes the image size from bottom 1
    "width: 4 width: 6 height: 5 height: 3 offset_h: 0.25 offset_h: 0.75 offset_w: 0.5 offset_w: 0.1 "
    "clip: false step: 4 variance: 0.1 variance: 0.2 variance: 0.3 variance: 0.4",
]


@pytest.mark.parametrize("fields", OPENCV_PRIORS)
def test_prior_box_opencv_dialect_matches_opencv(tmp_path, fields):
    ours, theirs = _run_both(tmp_path, _prior_inputs((3, 4), (12, 16)), _prior_layer(fields), dialect="opencv")
    _close(ours, theirs, 1e-6)
    if "clip" not in fields:   # read as SSD, the same text neither clips nor keeps the fractions
        assert _ours(tmp_path, _prior_inputs((3, 4), (12, 16)), _prior_layer(fields)).min() < 0
    if "img_size" in fields:   # read as SSD, img_size sets the image size
        assert not np.allclose(_ours(tmp_path, _prior_inputs((3, 4), (12, 16)), _prior_layer(fields)), ours)


@pytest.mark.parametrize("fields,message,dialect", [
    ("max_size: 4", "min_size is required", None),
    ("min_size: 4 max_size: 3", "must be positive and below its max_size", None),
    ("min_size: 4 variance: 0.1 variance: 0.2", "takes 1 or 4 positive values", None),
    ("min_size: 4 step_h: 3", "step_h and step_w must both be set", None),
    ("min_size: 4 step: 3 step_w: 2", "either step or step_h and step_w", None),
    ("min_size: 4", "variance is required by OpenCV", "opencv"),
    ("width: 4 height: 5 min_size: 3 variance: 1", "exclude min_size", "opencv"),
])
def test_prior_box_errors(tmp_path, fields, message, dialect):
    with pytest.raises(VGGProtoError, match=message):
        _ours(tmp_path, _prior_inputs((2, 2), (8, 8)), _prior_layer(fields), dialect)


# ------------------------------------------------------------------------------------------- DetectionOutput

def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Jaccard overlap of ``box`` with each row of ``others``: 0 unless they meet; invalid boxes have size 0."""
    def size(b):
        return np.where((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]), 0.0,
                        (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]))
    w = np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0])
    h = np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    return np.divide(inter, size(box) + size(others) - inter, out=np.zeros_like(inter), where=inter > 0)


def _decode(loc: np.ndarray, prior: np.ndarray, var: np.ndarray, code: str, in_target: bool) -> np.ndarray:
    d = loc if in_target else loc * var
    pw, ph = prior[:, 2] - prior[:, 0], prior[:, 3] - prior[:, 1]
    if code == "CORNER":
        return prior + d
    if code == "CORNER_SIZE":
        return prior + d * np.stack([pw, ph, pw, ph], 1)
    cx, cy = d[:, 0] * pw + (prior[:, 0] + prior[:, 2]) / 2, d[:, 1] * ph + (prior[:, 1] + prior[:, 3]) / 2
    w, h = np.exp(d[:, 2]) * pw, np.exp(d[:, 3]) * ph
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, nms: float, top_k: int, eta: float) -> list[int]:
    order = [j for j in sorted(range(len(scores)), key=lambda j: -scores[j]) if scores[j] > threshold]
    keep = []
    for j in order[:top_k] if top_k > -1 else order:
        if not keep or _iou(boxes[j], boxes[keep]).max() <= nms:
            keep.append(j)
            nms = nms * eta if eta < 1 and nms > 0.5 else nms
    return keep


def _detection_ref(loc, conf, prior, classes, share=True, background=0, nms=0.45, top_k=-1, keep_top_k=-1,
                   threshold=-np.inf, code="CENTER_SIZE", in_target=False, eta=1.0) -> np.ndarray:
    """SSD's DetectionOutput written out plainly in numpy (float64)."""
    n, priors = loc.shape[0], prior.shape[2] // 4
    locs = 1 if share else classes
    loc, conf = loc.reshape(n, priors, locs, 4).astype(np.float64), conf.reshape(n, priors, classes)
    box, var = prior[0, 0].reshape(priors, 4).astype(np.float64), prior[0, -1].reshape(priors, 4)
    rows = []
    for i in range(n):
        decoded = [_decode(loc[i, :, c], box, var, code, in_target) for c in range(locs)]
        kept = {c: _nms(decoded[0 if share else c], conf[i, :, c], threshold, nms, top_k, eta)
                for c in range(classes) if c != background}
        pairs = [(conf[i, j, c], c, j) for c in sorted(kept) for j in kept[c]]
        if -1 < keep_top_k < len(pairs):
            kept = {}
            for _, c, j in sorted(pairs, key=lambda t: -t[0])[:keep_top_k]:
                kept.setdefault(c, []).append(j)
        rows += [[i, c, conf[i, j, c], *decoded[0 if share else c][j]] for c in sorted(kept) for j in kept[c]]
    rows = rows or [[i] + [-1] * 6 for i in range(n)]
    return np.array(rows, np.float64).reshape(1, 1, -1, 7)


def _det_layer(classes: int, fields: str, nms: str = "nms_threshold: 0.45") -> str:
    return (f'layer {{ name: "out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "out" '
            f'detection_output_param {{ num_classes: {classes} nms_param {{ {nms} }} {fields} }} }}')


# Four priors A, B, C, D: B overlaps A (IoU 0.82), C overlaps A a little (0.14) and B (0.18), D only C (0.04);
# scores per prior [background, class 1, class 2].
HAND_PRIORS = np.float32([[.1, .1, .5, .5], [.12, .12, .52, .52], [.3, .3, .7, .7], [.6, .6, .9, .9]])
HAND_CONF = np.float32([[0, .9, .1], [0, .8, .6], [0, .7, .2], [0, .05, .75]])


def _hand_inputs(priors: np.ndarray, conf: np.ndarray, batch: int = 1) -> dict[str, np.ndarray]:
    prior = np.stack([priors.reshape(-1), np.full(priors.size, 0.1, np.float32)])[None]
    return {"loc": np.zeros((batch, priors.size), np.float32), "conf": np.tile(conf.reshape(1, -1), (batch, 1)),
            "prior": prior.astype(np.float32)}


def test_detection_output_hand_example(tmp_path):
    """Class 1: A .9 kept, B .8 suppressed by A (0.82 > 0.45), C .7 kept, D .05 under the threshold 0.1.
    Class 2: A's .1 is not above 0.1; D .75, B .6, C .2 all kept (overlaps 0, 0.04, 0.18).  Five kept, keep_top_k 4
    drops the lowest (C .2); rows go by label, then by score: A .9, C .7 | D .75, B .6."""
    layer = _det_layer(3, "share_location: true background_label_id: 0 code_type: CORNER keep_top_k: 4 "
                          "confidence_threshold: 0.1")
    out, theirs = _run_both(tmp_path, _hand_inputs(HAND_PRIORS, HAND_CONF), layer)
    a, b, c, d = HAND_PRIORS
    expected = np.float32([[0, 1, .9, *a], [0, 1, .7, *c], [0, 2, .75, *d], [0, 2, .6, *b]])
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(theirs[0, 0], expected[np.argsort(-expected[:, 2])], rtol=1e-6)   # OpenCV: by score
    # nms_param.top_k 1: only the best box of each class enters NMS
    top1 = _ours(tmp_path, _hand_inputs(HAND_PRIORS, HAND_CONF),
                 _det_layer(3, "code_type: CORNER", "nms_threshold: 0.45 top_k: 1"))
    np.testing.assert_allclose(top1[0, 0], np.float32([[0, 1, .9, *a], [0, 2, .75, *d]]), rtol=1e-6)


def test_detection_output_adaptive_eta(tmp_path):
    """A .9 and G .8 overlap 0.4545: kept both at nms 0.6; with eta 0.5 the threshold drops to 0.3 after A."""
    g = [.25, .1, .65, .5]
    priors, conf = np.float32([HAND_PRIORS[0], g]), np.float32([[0, .9], [0, .8]])
    plain = _ours(tmp_path, _hand_inputs(priors, conf), _det_layer(2, "code_type: CORNER", "nms_threshold: 0.6"))
    adaptive = _ours(tmp_path, _hand_inputs(priors, conf),
                     _det_layer(2, "code_type: CORNER", "nms_threshold: 0.6 eta: 0.5"))
    assert plain.shape == (1, 1, 2, 7) and adaptive.shape == (1, 1, 1, 7) and adaptive[0, 0, 0, 2] == np.float32(.9)
    ignored = _ours(tmp_path, _hand_inputs(priors, conf),   # OpenCV's NMS always runs with eta 1
                    _det_layer(2, "code_type: CORNER", "nms_threshold: 0.6 eta: 0.5"), dialect="opencv")
    np.testing.assert_array_equal(ignored, plain)


def test_detection_output_nothing_detected_gives_minus_one_rows(tmp_path):
    out = _ours(tmp_path, _hand_inputs(HAND_PRIORS, HAND_CONF, batch=2),
                _det_layer(3, "code_type: CORNER confidence_threshold: 0.95"))
    np.testing.assert_array_equal(out, np.float32([[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]]))


def _random_case(rng, priors: int, classes: int, share: bool, batch: int = 2, pixels: float = 1.0,
                 variances: bool = True) -> dict:
    centre = rng.uniform(0.1, 0.9, (priors, 2))
    half = rng.uniform(0.03, 0.25, (priors, 2))
    boxes = (np.concatenate([centre - half, centre + half], 1) * pixels).astype(np.float32)
    var = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), priors)
    logits = rng.standard_normal((batch, priors, classes)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    loc = rng.standard_normal((batch, priors * (1 if share else classes) * 4)) * 0.5
    return {"loc": loc.astype(np.float32), "conf": conf.reshape(batch, -1).astype(np.float32),
            "prior": np.stack([boxes.reshape(-1), var][:2 if variances else 1])[None].astype(np.float32)}


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    """Rows by image, label and box corner: an order that does not depend on how near-equal scores sort."""
    return rows[np.lexsort((rows[:, 4], rows[:, 3], rows[:, 1], rows[:, 0]))]


@pytest.mark.parametrize("code,share,in_target,background", [
    ("CENTER_SIZE", True, False, 0), ("CORNER", True, False, 0), ("CENTER_SIZE", False, True, 0),
    ("CORNER", False, False, -1), ("CENTER_SIZE", True, True, 2)])
def test_detection_output_matches_numpy_and_opencv(tmp_path, code, share, in_target, background):
    rng = np.random.default_rng(7)
    inputs = _random_case(rng, 60, 4, share, variances=not in_target)   # OpenCV: no variances when in target
    fields = (f"share_location: {str(share).lower()} background_label_id: {background} code_type: {code} "
              f"variance_encoded_in_target: {str(in_target).lower()} keep_top_k: 25 confidence_threshold: 0.2")
    layer = _det_layer(4, fields, "nms_threshold: 0.4 top_k: 30")
    ours, theirs = _run_both(tmp_path, inputs, layer)
    ref = _detection_ref(inputs["loc"], inputs["conf"], inputs["prior"], 4, share, background, 0.4, 30, 25, 0.2,
                         code, in_target)
    _close(ours, ref, 1e-5)   # the same rows in the same order (by image, label, score)
    kept = ours.shape[2]
    assert 25 < kept <= 50 and np.all(theirs[0, 0, kept:] == 0)   # OpenCV pads to keep_top_k x N with zeros
    _close(_sorted_rows(ours[0, 0]), _sorted_rows(theirs[0, 0, :kept]), 1e-5)


def test_detection_output_corner_size_and_eta_match_numpy(tmp_path):
    rng = np.random.default_rng(8)
    inputs = _random_case(rng, 40, 3, True, batch=1)
    layer = _det_layer(3, "code_type: CORNER_SIZE", "nms_threshold: 0.7 eta: 0.8")
    ref = _detection_ref(inputs["loc"], inputs["conf"], inputs["prior"], 3, code="CORNER_SIZE", nms=0.7, eta=0.8)
    _close(_ours(tmp_path, inputs, layer), ref, 1e-5)


def test_detection_output_opencv_pixel_boxes_match_opencv(tmp_path):
    """OpenCV's normalized_bbox false (dialect opencv): pixel priors, +1 in widths, areas and overlaps."""
    inputs = _random_case(np.random.default_rng(9), 50, 3, True, batch=1, pixels=100)
    for code in ("CENTER_SIZE", "CORNER"):
        layer = _det_layer(3, f"share_location: true background_label_id: 0 code_type: {code} keep_top_k: 30 "
                              "confidence_threshold: 0.1 normalized_bbox: false", "nms_threshold: 0.3")
        ours, theirs = _run_both(tmp_path, inputs, layer)
        kept = ours.shape[2]
        assert kept > 5
        _close(_sorted_rows(ours[0, 0]), _sorted_rows(theirs[0, 0, :kept]), 1e-5)
        if code == "CENTER_SIZE":   # the +1 moves the decoded boxes
            normalized = _ours(tmp_path, inputs, layer.replace("false", "true"), dialect="opencv")
            assert normalized.shape != ours.shape or not np.allclose(normalized, ours)


@pytest.mark.parametrize("fields,message,dialect", [
    ("", "num_classes is required", None),
    ("num_classes: 5", "conf bottom .* needs 4 priors x num_classes 5", None),
    ("num_classes: 3 share_location: false", "loc bottom .* needs 4 priors x 3 location classes", None),
    ("num_classes: 3 code_type: CORNER_SIZE normalized_bbox: true", "CORNER_SIZE is SSD only", "opencv"),
])
def test_detection_output_errors(tmp_path, fields, message, dialect):
    layer = ('layer { name: "out" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "out" '
             f'detection_output_param {{ {fields} }} }}')
    with pytest.raises(VGGProtoError, match=message):
        _ours(tmp_path, _hand_inputs(HAND_PRIORS, HAND_CONF), layer, dialect)


# ------------------------------------------------------------------------------------------ whole deploy nets

def _ssd_weights(path: Path, tmp: Path, seed: int, conf_gain: float) -> Path:
    """Random weights (He-scaled); the mbox_conf heads times ``conf_gain`` so some scores pass the threshold."""
    net_param = read_net(str(path))
    weights = random_weights(net_param, seed)
    for name, blobs in weights.items():
        if name.endswith("mbox_conf"):
            blobs[0] *= conf_gain
    out = tmp / f"{path.stem}.caffemodel"
    write_weights(str(out), weights, net_param)
    return out


@pytest.mark.parametrize("name,kept", [("mobilenet_ssd_deploy", 100), ("vgg_ssd300_deploy", 200)])
def test_published_ssd_nets_match_opencv(tmp_path, name, kept):
    path = FORKS / f"{name}.prototxt"
    weights = _ssd_weights(path, tmp_path, 1, 8.0)
    image = np.random.default_rng(4).uniform(-1, 1, (1, 3, 300, 300)).astype(np.float32)
    net = Net(str(path), str(weights))
    assert net.dialect == "ssd"
    with torch.no_grad():
        net.forward(data=image)
    cv_net = cv2.dnn.readNetFromCaffe(str(path), str(weights))
    cv_net.setInput(image)
    producer = {top: layer.name for layer in net.net_param.layer for top in layer.top}   # the last writer
    names = [n for n in dict.fromkeys(producer.values()) if n in cv_net.getLayerNames()]
    theirs = dict(zip(names, cv_net.forward(names)))
    compared = {blob: _close(net.blobs[blob].numpy(), theirs[layer]) for blob, layer in producer.items()
                if layer in theirs and blob != "detection_out"}
    assert len(compared) == len(net.blobs) - 2   # every blob but the input and detection_out
    prob = net.blobs["mbox_conf_softmax"]   # Reshape [0, -1, 21] + Softmax over axis 2, Flatten axis 1
    assert prob.shape[2] == 21 and torch.allclose(prob.sum(2), torch.ones(1))
    assert tuple(net.blobs["mbox_conf_flatten"].shape) == (1, prob.shape[1] * 21)
    det = net.blobs["detection_out"].numpy()
    assert det.shape == (1, 1, kept, 7)   # keep_top_k reached
    _close(_sorted_rows(det[0, 0]), _sorted_rows(theirs["detection_out"][0, 0, :kept]))
    labels, scores = det[0, 0, :, 1], det[0, 0, :, 2]
    assert np.all(np.diff(labels) >= 0) and all(np.all(np.diff(scores[labels == c]) <= 0) for c in set(labels))
    p = net.net_param.layer[-1].detection_output_param
    ref = _detection_ref(net.blobs["mbox_loc"].numpy(), net.blobs["mbox_conf_flatten"].numpy(),
                         net.blobs["mbox_priorbox"].numpy(), 21, nms=p.nms_param.nms_threshold,
                         top_k=p.nms_param.top_k, keep_top_k=p.keep_top_k, threshold=p.confidence_threshold)
    _close(det, ref, 1e-5)


# ------------------------------------------------------------------------------------------------ vggproto detect

@pytest.fixture(scope="module")
def street(tmp_path_factory) -> Path:
    """A real photo (skimage's astronaut, 512 x 512) with a drawn 'car' on it, as a PNG."""
    import skimage.data
    img = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)
    cv2.rectangle(img, (300, 380), (480, 470), (40, 40, 200), -1)
    cv2.circle(img, (340, 470), 22, (20, 20, 20), -1)
    cv2.circle(img, (440, 470), 22, (20, 20, 20), -1)
    path = tmp_path_factory.mktemp("photo") / "street.png"
    cv2.imwrite(str(path), img)
    return path


def test_cli_detect_prints_the_nets_boxes_and_draws_them(tmp_path, street):
    path = FORKS / "mobilenet_ssd_deploy.prototxt"
    weights = _ssd_weights(path, tmp_path, 3, 8.0)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
                                 "chair", "cow", "dining table", "dog", "horse", "motorbike", "person",
                                 "potted plant", "sheep", "sofa", "train", "tv monitor"]) + "\n")
    drawn = tmp_path / "out.png"
    result = CliRunner().invoke(main, ["detect", str(street), "--model", str(path), "--weights", str(weights),
                                       "--threshold", "0.6", "--mean-value", "127.5", "--input-scale", "0.007843",
                                       "--labels", str(labels), "--draw", str(drawn)])
    assert result.exit_code == 0, result.output
    printed = [line.split() for line in result.stdout.strip().splitlines()]   # logs go to stderr
    # reference: the README's preprocessing by hand, the net's detection_out rows scoring >= 0.6
    img = cv2.imread(str(street))
    x = (cv2.resize(img, (300, 300)).astype(np.float32) - 127.5) * np.float32(0.007843)
    with torch.no_grad():
        rows = Net(str(path), str(weights)).forward(data=x.transpose(2, 0, 1)[None].copy())["detection_out"][0, 0]
    rows = rows[rows[:, 2] >= 0.6].numpy()
    names = label_names(labels)
    assert 0 < len(rows) == len(printed)
    for words, row in zip(printed, rows):
        assert words[0] == names[int(row[1])].replace(" ", "_") and float(words[1]) == pytest.approx(row[2], abs=1e-4)
        np.testing.assert_allclose([float(w) for w in words[2:]], row[3:] * [512, 512, 512, 512], atol=0.051)
    picture = cv2.imread(str(drawn))
    assert picture.shape == img.shape and not np.array_equal(picture, img)


def test_detect_size_and_label_map_parsing(tmp_path):
    assert parse_size("150x120") == (150, 120)
    with pytest.raises(VGGProtoError, match="WxH"):
        parse_size("150")
    labelmap = tmp_path / "labelmap_voc.prototxt"
    labelmap.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                        'item { name: "aeroplane" label: 1 display_name: "aeroplane" }\n'
                        'item { name: "bicycle" label: 2 }\n')
    assert label_names(labelmap) == {0: "background", 1: "aeroplane", 2: "bicycle"}
