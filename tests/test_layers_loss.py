"""Softmax, accuracy, argmax and loss layers (vggproto/layers/softmax.py, loss.py) against hand-written numpy.

Losses are scalar 0-axis tops holding the unweighted loss. Gradients are checked against Caffe's backward
formulas written out in numpy (p - onehot over the normaliser, zero at ignored labels, the FLT_MIN and 1e-20
clamps that do not touch the gradient, ContrastiveLoss's dist + 1e-4), and with gradcheck where they coincide.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_text
from vggproto.errors import DataError, NetError
from vggproto.layers.registry import LayerSpec, build_layer

RNG = np.random.RandomState(1)
FLT_MIN = 1.1754943508222875e-38


def make(text: str, *shapes, tops: int = 1, path: str | None = None):
    param = parse_text(text, caffe_pb2.LayerParameter())
    param.name = param.name or "l"
    if not len(param.top):
        param.top.extend(f"t{i}" for i in range(tops))
    return build_layer(LayerSpec(param, [tuple(s) for s in shapes], path=path)).double()


def t(a, grad: bool = True) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def labels(shape, classes, ignore=None, frac=0.25):
    lab = RNG.randint(0, classes, size=shape).astype(np.float64)
    if ignore is not None:
        lab[RNG.rand(*shape) < frac] = ignore
    return lab


# ---------------------------------------------------------------- Softmax

@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax(axis):
    x = 3 * RNG.randn(2, 5, 3, 4)
    layer = make(f'type: "Softmax" softmax_param {{ axis: {axis} }}', x.shape)
    np.testing.assert_allclose(layer(t(x))[0].detach().numpy(), softmax(x, axis), rtol=1e-12)
    assert gradcheck(lambda v: layer(v)[0], (t(RNG.randn(2, 3, 2, 2)),))


# ---------------------------------------------------------------- SoftmaxWithLoss

def _swl_ref(x, lab, ignore, mode):
    """Caffe's SoftmaxWithLoss over axis 1 written out in numpy: (loss, d loss / d x)."""
    n, c = x.shape[:2]
    p = softmax(x, 1).reshape(n, c, -1)
    lab = lab.reshape(n, -1).astype(int)
    valid = lab != ignore if ignore is not None else np.ones(lab.shape, bool)
    safe = np.where(valid, lab, 0)
    pl = np.take_along_axis(p, safe[:, None, :], 1)[:, 0, :]
    total = -(np.log(np.maximum(pl, FLT_MIN)) * valid).sum()
    norm = {"FULL": lab.size, "VALID": valid.sum(), "BATCH_SIZE": n, "NONE": 1}[mode]
    norm = max(1, norm)
    grad = p.copy()
    np.put_along_axis(grad, safe[:, None, :], np.take_along_axis(grad, safe[:, None, :], 1) - 1, 1)
    grad *= valid[:, None, :]
    return total / norm, (grad / norm).reshape(x.shape)


@pytest.mark.parametrize("param,mode", [
    ("loss_param { ignore_label: 255 }", "VALID"),
    ("loss_param { ignore_label: 255 normalization: FULL }", "FULL"),
    ("loss_param { ignore_label: 255 normalization: BATCH_SIZE }", "BATCH_SIZE"),
    ("loss_param { ignore_label: 255 normalization: NONE }", "NONE"),
    ("loss_param { ignore_label: 255 normalize: false }", "BATCH_SIZE"),
    ("loss_param { ignore_label: 255 normalize: false normalization: FULL }", "FULL"),
])
def test_softmax_loss_spatial_with_ignore(param, mode):
    x, lab = 3 * RNG.randn(2, 5, 3, 4), labels((2, 1, 3, 4), 5, ignore=255)
    layer = make(f'type: "SoftmaxWithLoss" {param}', x.shape, lab.shape)
    assert layer.is_loss and layer.top_shapes == [()]
    tx = t(x)
    loss = layer(tx, t(lab, False))[0]
    assert loss.shape == ()
    ref_loss, ref_grad = _swl_ref(x, lab, 255, mode)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    (2 * loss).backward()  # a loss_weight of 2 seeds the top diff with 2
    np.testing.assert_allclose(tx.grad.numpy(), 2 * ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_loss_flat_labels_all_ignored_and_prob_top():
    x, lab = RNG.randn(4, 6), np.full(4, 7.0)
    layer = make('type: "SoftmaxWithLoss" loss_param { ignore_label: 7 }', x.shape, lab.shape, tops=2)
    assert layer.top_shapes == [(), (4, 6)]
    loss, prob = layer(t(x), t(lab, False))
    assert loss.item() == 0.0  # nothing valid: normaliser max(1, 0) = 1, loss 0
    np.testing.assert_allclose(prob.detach().numpy(), softmax(x, 1), rtol=1e-12)


def test_softmax_loss_flt_min_clamp_keeps_gradient():
    x = np.array([[0.0, 200.0, 0.0]])
    layer = make('type: "SoftmaxWithLoss"', x.shape, (1,))
    tx = t(x)
    loss = layer(tx, t([0.0], False))[0]
    assert loss.item() == pytest.approx(-math.log(FLT_MIN), rel=1e-12)  # not 200
    loss.backward()
    p = softmax(x, 1)
    np.testing.assert_allclose(tx.grad.numpy(), p - np.array([[1, 0, 0]]), atol=1e-15)


def test_softmax_loss_errors():
    with pytest.raises(NetError, match=r"label bottom has shape \(2, 3\) \(6 labels\).*needs 24"):
        make('type: "SoftmaxWithLoss"', (2, 5, 3, 4), (2, 3))
    layer = make('type: "SoftmaxWithLoss"', (2, 3), (2,))
    with pytest.raises(DataError, match="label 3 is outside the 3 classes"):
        layer(t(RNG.randn(2, 3)), t([0.0, 3.0], False))


# ---------------------------------------------------------------- Accuracy

def _acc_ref(x, lab, k, ignore):
    n, c = x.shape[:2]
    s = x.reshape(n, c, -1)
    lab = lab.reshape(n, -1).astype(int)
    hits = np.zeros(c)
    seen = np.zeros(c)
    correct = valid = 0
    for i in range(n):
        for j in range(s.shape[2]):
            y = lab[i, j]
            if y == ignore:
                continue
            better = sum(1 for m in range(c) if m != y and s[i, m, j] >= s[i, y, j])
            seen[y] += 1
            valid += 1
            if better < k:
                correct += 1
                hits[y] += 1
    return correct / valid if valid else 0.0, np.where(seen > 0, hits / np.maximum(seen, 1), 0)


@pytest.mark.parametrize("k", [1, 2])
def test_accuracy_spatial_ignore_per_class(k):
    x = np.round(RNG.randn(3, 4, 3, 3), 1)  # rounding makes ties likely
    lab = labels((3, 1, 3, 3), 4, ignore=255)
    layer = make(f'type: "Accuracy" accuracy_param {{ top_k: {k} ignore_label: 255 }}', x.shape, lab.shape, tops=2)
    assert not layer.is_loss and layer.top_shapes == [(), (4,)]
    acc, per_class = layer(t(x), t(lab, False))
    ref_acc, ref_per = _acc_ref(x, lab, k, 255)
    assert acc.item() == pytest.approx(ref_acc, abs=1e-15)
    np.testing.assert_allclose(per_class.numpy(), ref_per, atol=1e-15)
    assert not acc.requires_grad


def test_accuracy_ties_count_against():
    x = np.array([[1.0, 1.0, 0.0], [2.0, 1.0, 1.0]])
    top1 = make('type: "Accuracy"', x.shape, (2,))
    assert top1(t(x), t([0.0, 0.0], False))[0].item() == 0.5  # row 0: class 1 ties with the true class
    top2 = make('type: "Accuracy" accuracy_param { top_k: 2 }', x.shape, (2,))
    assert top2(t(x), t([0.0, 1.0], False))[0].item() == 0.5  # row 1: class 2 ties with class 1
    ignore_all = make('type: "Accuracy" accuracy_param { ignore_label: 0 }', x.shape, (2,))
    assert ignore_all(t(x), t([0.0, 0.0], False))[0].item() == 0.0  # no valid label: 0, not nan
    with pytest.raises(NetError, match="top_k 4 must be between 1 and the number of classes 3"):
        make('type: "Accuracy" accuracy_param { top_k: 4 }', x.shape, (2,))


# ---------------------------------------------------------------- ArgMax

def test_argmax_no_axis_layouts():
    x = RNG.randn(3, 6)
    order = np.argsort(-x, axis=1, kind="stable")[:, :2]
    out = make('type: "ArgMax" argmax_param { top_k: 2 }', x.shape)(t(x))[0]
    assert tuple(out.shape) == (3, 1, 2)
    np.testing.assert_array_equal(out.numpy()[:, 0], order)
    out = make('type: "ArgMax" argmax_param { top_k: 2 out_max_val: true }', x.shape)(t(x))[0]
    assert tuple(out.shape) == (3, 2, 2)
    np.testing.assert_array_equal(out.numpy()[:, 0], order)
    np.testing.assert_array_equal(out.numpy()[:, 1], np.take_along_axis(x, order, 1))
    x4 = RNG.randn(2, 3, 2, 2)
    layer = make('type: "ArgMax" argmax_param { top_k: 3 }', x4.shape)
    assert layer.top_shapes == [(2, 1, 3, 1)]
    out = layer(t(x4))[0]
    np.testing.assert_array_equal(out.numpy()[:, 0, :, 0], np.argsort(-x4.reshape(2, -1), 1)[:, :3])


def test_argmax_axis_values_and_ties():
    x = RNG.randn(2, 5, 3, 4)
    out = make('type: "ArgMax" argmax_param { top_k: 2 axis: 1 out_max_val: true }', x.shape)(t(x))[0]
    np.testing.assert_array_equal(out.numpy(), -np.sort(-x, axis=1)[:, :2])
    out = make('type: "ArgMax" argmax_param { axis: -1 }', x.shape)(t(x))[0]
    np.testing.assert_array_equal(out.numpy()[..., 0], x.argmax(-1))
    ties = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]])
    out = make('type: "ArgMax" argmax_param { top_k: 3 }', ties.shape)(t(ties))[0]
    np.testing.assert_array_equal(out.numpy()[0, 0], [4, 2, 1])  # Caffe: equal values, larger index first
    with pytest.raises(NetError, match="top_k 6 must be between 1 and 5"):
        make('type: "ArgMax" argmax_param { top_k: 6 axis: 1 }', x.shape)


# ---------------------------------------------------------------- EuclideanLoss / SigmoidCrossEntropyLoss

def test_euclidean_loss():
    a, b = RNG.randn(4, 3, 2, 2), RNG.randn(4, 12)
    layer = make('type: "EuclideanLoss"', a.shape, b.shape)
    ta, tb = t(a), t(b)
    loss = layer(ta, tb)[0]
    d = a.reshape(4, -1) - b
    assert loss.item() == pytest.approx((d ** 2).sum() / 8, rel=1e-12)
    loss.backward()
    np.testing.assert_allclose(ta.grad.numpy(), (d / 4).reshape(a.shape), rtol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy(), -d / 4, rtol=1e-12)
    with pytest.raises(NetError, match="same dimension"):
        make('type: "EuclideanLoss"', (4, 3), (4, 2))


@pytest.mark.parametrize("param,norm", [("loss_param { ignore_label: -1 normalization: VALID }", "VALID"),
                                        ("loss_param { ignore_label: -1 }", "BATCH_SIZE"),
                                        ("loss_param { normalization: FULL }", "FULL")])
def test_sigmoid_cross_entropy(param, norm):
    x, target = 3 * RNG.randn(4, 6), labels((4, 6), 2, ignore=-1)
    ignore = -1 if "ignore_label" in param else None
    if ignore is None:
        target = RNG.rand(4, 6)  # soft targets are allowed
    layer = make(f'type: "SigmoidCrossEntropyLoss" {param}', x.shape, target.shape)
    tx = t(x)
    loss = layer(tx, t(target, False))[0]
    valid = target.astype(int) != ignore if ignore is not None else np.ones(x.shape, bool)
    elem = -(x * (target - (x >= 0)) - np.log1p(np.exp(x - 2 * x * (x >= 0))))
    n = {"VALID": valid.sum(), "BATCH_SIZE": 4, "FULL": 24}[norm]
    assert loss.item() == pytest.approx((elem * valid).sum() / n, rel=1e-12)
    loss.backward()
    expected = (1 / (1 + np.exp(-x)) - target) * valid / n
    np.testing.assert_allclose(tx.grad.numpy(), expected, rtol=1e-10, atol=1e-15)


# ---------------------------------------------------------------- HingeLoss / MultinomialLogisticLoss

@pytest.mark.parametrize("norm", ["L1", "L2"])
def test_hinge_loss(norm):
    x, lab = RNG.randn(4, 5), labels((4,), 5)
    layer = make(f'type: "HingeLoss" hinge_loss_param {{ norm: {norm} }}', x.shape, lab.shape)
    sign = np.ones_like(x)
    sign[np.arange(4), lab.astype(int)] = -1
    margin = np.maximum(0, 1 + sign * x)
    ref = (margin if norm == "L1" else margin ** 2).sum() / 4
    assert layer(t(x), t(lab, False))[0].item() == pytest.approx(ref, rel=1e-12)
    assert gradcheck(lambda v: layer(v, t(lab, False))[0], (t(x),))


def test_multinomial_logistic_loss_and_threshold_gradient():
    p = softmax(RNG.randn(3, 4), 1)
    p[2, 1] = 0.0
    lab = np.array([0.0, 3.0, 1.0])
    layer = make('type: "MultinomialLogisticLoss"', p.shape, (3, 1, 1, 1))
    tp = t(p)
    loss = layer(tp, t(lab.reshape(3, 1, 1, 1), False))[0]
    picked = np.maximum(p[np.arange(3), lab.astype(int)], 1e-20)
    assert loss.item() == pytest.approx(-np.log(picked).sum() / 3, rel=1e-12)
    loss.backward()
    expected = np.zeros_like(p)
    expected[np.arange(3), lab.astype(int)] = -1 / (3 * picked)  # Caffe: -scale / max(p, 1e-20), even at p = 0
    np.testing.assert_allclose(tp.grad.numpy(), expected, rtol=1e-12)


# ---------------------------------------------------------------- InfogainLoss

def _infogain_ref(x, lab, h, ignore=None):
    n, c = x.shape[:2]
    p = softmax(x, 1).reshape(n, c, -1)
    lab = lab.reshape(n, -1).astype(int)
    loss, count = 0.0, 0
    grad = np.zeros_like(p)
    for i in range(n):
        for j in range(p.shape[2]):
            y = lab[i, j]
            if y == ignore:
                continue
            loss -= (h[y] * np.log(np.maximum(p[i, :, j], 1e-20))).sum()
            grad[i, :, j] = p[i, :, j] * h[y].sum() - h[y]
            count += 1
    count = max(1, count)
    return loss / count, (grad / count).reshape(x.shape)


def test_infogain_loss_from_bottom_with_ignore():
    x, lab, h = RNG.randn(2, 4, 3), labels((2, 3), 4, ignore=9), RNG.rand(4, 4)
    layer = make('type: "InfogainLoss" loss_param { ignore_label: 9 }', x.shape, lab.shape, h.shape, tops=2)
    tx = t(x)
    loss, prob = layer(tx, t(lab, False), t(h, False))
    ref_loss, ref_grad = _infogain_ref(x, lab, h, ignore=9)
    assert loss.item() == pytest.approx(ref_loss, rel=1e-12)
    np.testing.assert_allclose(prob.detach().numpy(), softmax(x, 1), rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(tx.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_infogain_loss_from_source_file(tmp_path):
    h = RNG.rand(3, 3).astype(np.float32)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend([1, 1, 3, 3])
    blob.data.extend(h.ravel().tolist())
    (tmp_path / "H.binaryproto").write_bytes(blob.SerializeToString())
    x, lab = RNG.randn(5, 3), labels((5,), 3)
    layer = make('type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', x.shape, lab.shape,
                 path=str(tmp_path / "net.prototxt"))
    loss = layer(t(x), t(lab, False))[0]
    assert loss.item() == pytest.approx(_infogain_ref(x, lab, h.astype(np.float64))[0], rel=1e-6)
    with pytest.raises(NetError, match="has 9 values.*must be 4x4"):
        make('type: "InfogainLoss" infogain_loss_param { source: "H.binaryproto" }', (5, 4), (5,),
             path=str(tmp_path / "net.prototxt"))
    with pytest.raises(NetError, match="not found"):
        make('type: "InfogainLoss" infogain_loss_param { source: "missing.binaryproto" }', (5, 3), (5,),
             path=str(tmp_path / "net.prototxt"))


# ---------------------------------------------------------------- ContrastiveLoss

@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_forward_and_caffe_backward(legacy):
    a, b = RNG.randn(6, 3, 1, 1) * 0.5, RNG.randn(6, 3, 1, 1) * 0.5
    y = np.array([1, 0, 0, 1, 0, 0], dtype=np.float64).reshape(6, 1, 1, 1)
    margin = 1.5
    layer = make(f'type: "ContrastiveLoss" contrastive_loss_param {{ margin: {margin} '
                 f'legacy_version: {"true" if legacy else "false"} }}', a.shape, b.shape, y.shape)
    ta, tb = t(a), t(b)
    loss = layer(ta, tb, t(y, False))[0]
    d = (a - b).reshape(6, 3)
    dsq = (d ** 2).sum(1)
    sim = y.ravel() != 0
    if legacy:
        dis, mdist = np.maximum(margin - dsq, 0), margin - dsq
        beta = -np.ones(6) / 6
    else:
        dist = np.sqrt(dsq)
        dis, mdist = np.maximum(margin - dist, 0) ** 2, margin - dist
        beta = -(1 / 6) * mdist / (dist + 1e-4)
    assert loss.item() == pytest.approx(np.where(sim, dsq, dis).sum() / 12, rel=1e-12)
    loss.backward()
    coef = np.where(sim, 1 / 6, np.where(mdist > 0, beta, 0))
    np.testing.assert_allclose(ta.grad.numpy().reshape(6, 3), coef[:, None] * d, rtol=1e-12)
    np.testing.assert_allclose(tb.grad.numpy().reshape(6, 3), -coef[:, None] * d, rtol=1e-12)


def test_contrastive_loss_shape_errors():
    with pytest.raises(NetError, match="same shape"):
        make('type: "ContrastiveLoss"', (4, 3, 1, 1), (4, 2, 1, 1), (4, 1, 1, 1))
    with pytest.raises(NetError, match="one value per pair"):
        make('type: "ContrastiveLoss"', (4, 3, 1, 1), (4, 3, 1, 1), (3,))


# ---------------------------------------------------------------- inside a Net

NET = """
name: "head"
layer { name: "in" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 6 } shape { dim: 4 } } }
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { slice_point: 3 } }
layer { name: "mx" type: "Eltwise" bottom: "a" bottom: "b" top: "m" eltwise_param { operation: MAX } }
layer { name: "cat" type: "Concat" bottom: "m" bottom: "a" top: "score" }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "score" bottom: "label" top: "loss" top: "prob"
        loss_weight: 2 loss_weight: 0 }
layer { name: "acc" type: "Accuracy" bottom: "score" bottom: "label" top: "acc" top: "per_class" }
layer { name: "sil" type: "Silence" bottom: "per_class" }
"""


def test_head_layers_inside_a_net():
    from vggproto.net.interpreter import Net
    net = Net(NET, phase="TRAIN").double()
    x, lab = RNG.randn(4, 6), np.array([0.0, 5.0, 2.0, 3.0])
    data = t(x)
    out = net.forward(data=data, label=t(lab, False))
    assert sorted(out) == ["acc", "loss", "prob"]
    score = np.concatenate([np.maximum(x[:, :3], x[:, 3:]), x[:, :3]], axis=1)
    ref_loss, _ = _swl_ref(score, lab, None, "VALID")
    assert out["loss"].item() == pytest.approx(ref_loss, rel=1e-12)
    assert net.loss.item() == pytest.approx(2 * ref_loss, rel=1e-12)  # prob has weight 0
    assert out["acc"].item() == pytest.approx(_acc_ref(score, lab, 1, None)[0])
    np.testing.assert_allclose(out["prob"].detach().numpy(), softmax(score, 1), rtol=1e-12)
    net.loss.backward()
    _, g = _swl_ref(score, lab, None, "VALID")
    g = 2 * g
    a_wins = x[:, :3] > x[:, 3:]
    expected = np.concatenate([g[:, 3:] + g[:, :3] * a_wins, g[:, :3] * ~a_wins], axis=1)
    np.testing.assert_allclose(data.grad.numpy(), expected, rtol=1e-10, atol=1e-14)
