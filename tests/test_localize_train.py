"""End to end on the synthetic set (coloured rectangles on real photographs, :mod:`vggproto.data.synth_boxes`):
a reduced-width VGG-A localisation net from the generator, fed by BoxData, trained by the Caffe-exact solver,
saved, reloaded as a deploy net and run through ``localize_image`` (GT-class protocol, centre crop).

The CI version is short and asserts clear learning progress against the best constant box (the mean of the
held-out targets, a baseline the net cannot see); ``tools/bench_localize.py`` runs the long version (IoU > 0.5 on
most held-out images) and prints the same comparison."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vggproto.boxes import iou_matrix, target_to_corners
from vggproto.data.boxes import parse_box_list
from vggproto.data.sources import read_image
from vggproto.data.synth_boxes import make_synthetic_set, synthetic_nets, synthetic_solver
from vggproto.localize import LocalizeOptions, load_loc_model, localize_image
from vggproto.prototxt import write_net

CROP = 48
ITERATIONS = 150


def _val_targets(solver) -> tuple[np.ndarray, np.ndarray]:
    net = solver.test_nets[0]
    with torch.no_grad():
        net.forward()
    return net.blobs["fc8-loc"].numpy().copy(), net.blobs["box"].numpy().copy()


def _loss(pred: np.ndarray, target: np.ndarray) -> float:
    return float(((pred - target) ** 2).sum() / len(target) / 2)   # Caffe's EuclideanLoss


def _hits(pred: np.ndarray, target: np.ndarray) -> float:
    ious = [iou_matrix(target_to_corners(p, CROP), target_to_corners(t, CROP))[0, 0] for p, t in zip(pred, target)]
    return float(np.mean(np.array(ious) > 0.5))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from vggproto.solver import Solver, TrainOptions
    torch.set_num_threads(2)
    work = tmp_path_factory.mktemp("synthetic")
    train_list, val_list = make_synthetic_set(work, 240, 40, height=CROP, width=CROP * 5 // 4, seed=0)
    train_val, deploy = synthetic_nets(train_list, val_list, crop=CROP)
    write_net(train_val, str(work / "train_val.prototxt"))
    write_net(deploy, str(work / "deploy.prototxt"))
    solver = Solver(synthetic_solver(work / "train_val.prototxt", ITERATIONS), TrainOptions(progress=False, csv=False))
    before = _val_targets(solver)[0]
    solver.step(ITERATIONS)
    solver.net.save_weights(str(work / "loc.caffemodel"))
    return work, val_list, before, *_val_targets(solver)


def test_training_beats_the_best_constant_box(trained):
    _, _, before, pred, target = trained
    constant = np.broadcast_to(target.mean(axis=0), target.shape)
    assert 0.01 < target[:, 2:].min() and target.max() <= 1
    assert _loss(pred, target) < 0.5 * _loss(before, target)
    assert _loss(pred, target) < 0.8 * _loss(constant, target), (_loss(pred, target), _loss(constant, target))
    assert _hits(pred, target) > _hits(constant, target) + 0.1


def test_reloaded_deploy_net_localizes_like_the_test_net(trained):
    """The saved weights in the deploy net, through localize_image's centre crop, give the TEST net's boxes
    mapped back to the original image."""
    work, val_list, _, pred, _ = trained
    loc = load_loc_model(work / "deploy.prototxt", work / "loc.caffemodel")
    options = LocalizeOptions("center", (CROP,), mean=(128.0,), input_scale=1 / 64)
    entries = parse_box_list(str(val_list))[:8]
    for entry, p in zip(entries, pred):
        det = localize_image(read_image(entry.path, True), [loc], [], options, classes=[entry.label])[0]
        expected = target_to_corners(p, CROP)[0] + [(CROP * 5 // 4 - CROP) // 2, 0] * 2   # centre crop x offset
        assert np.allclose(det.box, expected, atol=1e-3), (det.box, expected)
