"""Shape and arithmetic layers (vggproto/layers/shape.py, arith.py) against hand-written numpy formulas.

Every layer is built straight from a LayerParameter text with ``build_layer`` (no Net needed); forward values are
compared in float64 with numpy, gradients with ``gradcheck`` where Caffe's backward is the true gradient and with
explicit expected diffs where it is not (Crop reference, Eltwise MAX ties, PROD without stable_prod_grad, MVN).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import parse_text
from vggproto.errors import DataError, NetError
from vggproto.layers.registry import LayerSpec, build_layer

RNG = np.random.RandomState(0)


def make(text: str, *shapes, tops: int = 1):
    """Build the layer described by ``text`` for bottoms of ``shapes`` (float64)."""
    param = parse_text(text, caffe_pb2.LayerParameter())
    if not param.name:
        param.name = "l"
    if not len(param.top) and tops:
        param.top.extend(f"t{i}" for i in range(tops))
    layer = build_layer(LayerSpec(param, [tuple(s) for s in shapes], generator=torch.Generator().manual_seed(3)))
    return layer.double()


def t(a, grad: bool = True) -> torch.Tensor:
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def rand(*shape) -> np.ndarray:
    return RNG.randn(*shape)


def run(layer, *arrays):
    outs = layer(*[t(a) for a in arrays])
    for out, shape in zip(outs, layer.top_shapes):
        assert tuple(out.shape) == tuple(shape)
    return [o.detach().numpy() for o in outs]


# ---------------------------------------------------------------- Concat

@pytest.mark.parametrize("text,axis", [("concat_param { axis: 1 }", 1), ("concat_param { axis: -1 }", 3),
                                       ("concat_param { concat_dim: 2 }", 2), ("", 1)])
def test_concat_forward(text, axis):
    a = rand(2, 3, 4, 5)
    shape_b = list(a.shape)
    shape_b[axis] = 2
    b = rand(*shape_b)
    layer = make(f'type: "Concat" {text}', a.shape, b.shape)
    (out,) = run(layer, a, b)
    np.testing.assert_array_equal(out, np.concatenate([a, b], axis=axis))


def test_concat_gradient():
    layer = make('type: "Concat" concat_param { axis: 2 }', (2, 3, 2), (2, 3, 1), (2, 3, 3))
    assert gradcheck(lambda *x: layer(*x)[0], (t(rand(2, 3, 2)), t(rand(2, 3, 1)), t(rand(2, 3, 3))))


def test_concat_mismatch_names_both_shapes():
    with pytest.raises(NetError, match=r"\(2, 4, 4, 5\).*\(2, 3, 4, 5\)"):
        make('type: "Concat" bottom: "a" bottom: "b" concat_param { axis: 2 }', (2, 3, 4, 5), (2, 4, 4, 5))


def test_concat_axis_and_concat_dim_conflict():
    with pytest.raises(NetError, match="concat_dim"):
        make('type: "Concat" concat_param { axis: 1 concat_dim: 1 }', (2, 3), (2, 3))


def test_concat_axis_out_of_range():
    with pytest.raises(NetError, match="concat_param.axis: 4 is out of range"):
        make('type: "Concat" concat_param { axis: 4 }', (2, 3, 4, 5), (2, 3, 4, 5))


# ---------------------------------------------------------------- Slice

def test_slice_points():
    x = rand(2, 7, 4, 5)
    layer = make('type: "Slice" slice_param { axis: 1 slice_point: 2 slice_point: 5 }', x.shape, tops=3)
    outs = run(layer, x)
    for got, ref in zip(outs, np.split(x, [2, 5], axis=1)):
        np.testing.assert_array_equal(got, ref)


def test_slice_even_and_legacy_slice_dim():
    x = rand(2, 3, 6, 5)
    outs = run(make('type: "Slice" slice_param { slice_dim: 2 }', x.shape, tops=3), x)
    for got, ref in zip(outs, np.split(x, 3, axis=2)):
        np.testing.assert_array_equal(got, ref)


def test_slice_gradient():
    layer = make('type: "Slice" slice_param { axis: -1 slice_point: 1 }', (3, 4), tops=2)
    x = t(rand(3, 4))
    a, b = layer(x)
    (a.sum() * 2 + (b * 3).sum()).backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.array([[2, 3, 3, 3]] * 3, dtype=float))


@pytest.mark.parametrize("param,tops,message", [
    ("slice_point: 2", 3, "has 1 values but the layer has 3 tops"),
    ("slice_point: 3 slice_point: 2", 3, "strictly increasing"),
    ("slice_point: 2 slice_point: 7", 3, "strictly increasing and inside"),
    ("", 2, "divide evenly"),
])
def test_slice_errors(param, tops, message):
    with pytest.raises(NetError, match=message):
        make(f'type: "Slice" slice_param {{ axis: 1 {param} }}', (2, 7), tops=tops)


# ---------------------------------------------------------------- Split / Silence

def test_split_sums_gradients():
    layer = make('type: "Split"', (2, 3), tops=3)
    x = t(rand(2, 3))
    outs = layer(x)
    assert len(outs) == 3 and layer.top_shapes == [(2, 3)] * 3
    for o in outs:
        np.testing.assert_array_equal(o.detach().numpy(), x.detach().numpy())
    g = [rand(2, 3) for _ in range(3)]
    sum((o * t(gi, False)).sum() for o, gi in zip(outs, g)).backward()
    np.testing.assert_allclose(x.grad.numpy(), g[0] + g[1] + g[2])


def test_silence_has_no_tops():
    layer = make('type: "Silence"', (2, 3), (4,), tops=0)
    assert layer.top_shapes == [] and layer(t(rand(2, 3)), t(rand(4))) == ()
    with pytest.raises(NetError, match="no tops"):
        make('type: "Silence" top: "x"', (2, 3), tops=0)


# ---------------------------------------------------------------- Flatten / Reshape

@pytest.mark.parametrize("param,shape", [("", (2, 60)), ("flatten_param { axis: 2 }", (2, 3, 20)),
                                         ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5)),
                                         ("flatten_param { axis: 0 end_axis: -2 }", (24, 5))])
def test_flatten(param, shape):
    x = rand(2, 3, 4, 5)
    (out,) = run(make(f'type: "Flatten" {param}', x.shape), x)
    np.testing.assert_array_equal(out, x.reshape(shape))


def test_flatten_end_before_axis():
    with pytest.raises(NetError, match="end_axis"):
        make('type: "Flatten" flatten_param { axis: 2 end_axis: 1 }', (2, 3, 4, 5))


@pytest.mark.parametrize("param,shape", [
    ("shape { dim: 2 dim: -1 } axis: 2", (2, 3, 2, 10)),
    ("shape { dim: 0 dim: -1 }", (2, 60)),
    ("shape { dim: 0 dim: -1 dim: 0 }", (2, 15, 4)),  # the 2nd 0 copies the bottom's axis 2 (4)
    ("shape { dim: 1 } axis: -1", (2, 3, 4, 5, 1)),  # -1 = append after the last axis
    ("shape { dim: 12 } axis: 1 num_axes: 2", (2, 12, 5)),
    ("shape { dim: 1 } axis: 0 num_axes: 0", (1, 2, 3, 4, 5)),
])
def test_reshape(param, shape):
    x = rand(2, 3, 4, 5)
    (out,) = run(make(f'type: "Reshape" reshape_param {{ {param} }}', x.shape), x)
    np.testing.assert_array_equal(out, x.reshape(shape))


@pytest.mark.parametrize("param,message", [
    ("shape { dim: -1 dim: -1 }", "more than one -1"),
    ("shape { dim: 7 dim: -1 }", "cannot infer"),
    ("shape { dim: 7 dim: 3 }", "120"),
    ("shape { dim: 2 } axis: 5", "axis 5 is out of range"),
    ("shape { dim: 2 } axis: 1 num_axes: 4", "exceed"),
    ("shape { dim: -2 }", "dims must be"),
])
def test_reshape_errors(param, message):
    with pytest.raises(NetError, match=message):
        make(f'type: "Reshape" reshape_param {{ {param} }}', (2, 3, 4, 5))


def test_reshape_follows_new_batch_size():
    layer = make('type: "Reshape" reshape_param { shape { dim: 0 dim: -1 } }', (2, 3, 4))
    assert tuple(layer(t(rand(5, 3, 4)))[0].shape) == (5, 12)


# ---------------------------------------------------------------- Crop

@pytest.mark.parametrize("param,ref_shape,index", [
    ("", (2, 3, 4, 5), np.s_[:, :, 0:4, 0:5]),
    ("crop_param { offset: 1 }", (2, 3, 4, 5), np.s_[:, :, 1:5, 1:6]),
    ("crop_param { axis: 1 offset: 1 offset: 2 offset: 3 }", (1, 2, 4, 5), np.s_[:, 1:3, 2:6, 3:8]),
    ("crop_param { axis: -1 offset: 4 }", (1, 1, 1, 5), np.s_[:, :, :, 4:9]),
])
def test_crop_forward(param, ref_shape, index):
    x, ref = rand(2, 3, 7, 9), rand(*ref_shape)
    (out,) = run(make(f'type: "Crop" {param}', x.shape, ref.shape), x, ref)
    np.testing.assert_array_equal(out, x[index])


def test_crop_never_backpropagates_to_reference():
    layer = make('type: "Crop" crop_param { offset: 1 }', (2, 3, 7, 9), (2, 3, 4, 5))
    x, ref = t(rand(2, 3, 7, 9)), t(rand(2, 3, 4, 5))
    g = rand(2, 3, 4, 5)
    (layer(x, ref)[0] * t(g, False)).sum().backward()
    expected = np.zeros(x.shape)
    expected[:, :, 1:5, 1:6] = g
    np.testing.assert_array_equal(x.grad.numpy(), expected)
    assert ref.grad is None


@pytest.mark.parametrize("param,ref,message", [
    ("crop_param { offset: 4 }", (2, 3, 4, 5), "too small"),
    ("crop_param { offset: 1 offset: 1 offset: 1 }", (2, 3, 4, 5), "give 0, 1 or 2"),
    ("", (2, 3, 4), "same number of axes"),
])
def test_crop_errors(param, ref, message):
    with pytest.raises(NetError, match=message):
        make(f'type: "Crop" {param}', (2, 3, 7, 9), ref)


# ---------------------------------------------------------------- Tile

@pytest.mark.parametrize("axis,tiles", [(1, 3), (3, 2), (-2, 2), (0, 2)])
def test_tile(axis, tiles):
    x = rand(2, 3, 2, 2)
    (out,) = run(make(f'type: "Tile" tile_param {{ axis: {axis} tiles: {tiles} }}', x.shape), x)
    reps = [1] * 4
    reps[axis] = tiles
    np.testing.assert_array_equal(out, np.tile(x, reps))


def test_tile_gradient_and_errors():
    layer = make('type: "Tile" tile_param { axis: 1 tiles: 3 }', (2, 2, 3))
    assert gradcheck(lambda x: layer(x)[0], (t(rand(2, 2, 3)),))
    with pytest.raises(NetError, match="tiles must be set"):
        make('type: "Tile" tile_param { axis: 1 }', (2, 3))


# ---------------------------------------------------------------- Eltwise

def test_eltwise_sum_coeff_and_default():
    a, b, c = rand(2, 3, 4), rand(2, 3, 4), rand(2, 3, 4)
    (out,) = run(make('type: "Eltwise" eltwise_param { coeff: 1 coeff: -0.5 coeff: 2 }', a.shape, b.shape, c.shape),
                 a, b, c)
    np.testing.assert_allclose(out, a - 0.5 * b + 2 * c, rtol=1e-14)
    (out,) = run(make('type: "Eltwise"', a.shape, b.shape), a, b)
    np.testing.assert_allclose(out, a + b, rtol=1e-14)


def test_eltwise_prod_forward_and_gradient():
    a, b, c = rand(2, 3), rand(2, 3), rand(2, 3)
    layer = make('type: "Eltwise" eltwise_param { operation: PROD }', a.shape, b.shape, c.shape)
    np.testing.assert_allclose(run(layer, a, b, c)[0], a * b * c, rtol=1e-14)
    assert gradcheck(lambda *x: layer(*x)[0], (t(a), t(b), t(c)))


def test_eltwise_prod_unstable_grad_divides_top_by_bottom():
    a, b = np.array([[2.0, 0.0, -1.0]]), np.array([[3.0, 5.0, 4.0]])
    layer = make('type: "Eltwise" eltwise_param { operation: PROD stable_prod_grad: false }', a.shape, b.shape)
    ta, tb = t(a), t(b)
    layer(ta, tb)[0].sum().backward()
    top = a * b
    with np.errstate(invalid="ignore", divide="ignore"):
        np.testing.assert_array_equal(ta.grad.numpy(), top / a)  # 0/0 = nan where a == 0, as in Caffe
    np.testing.assert_array_equal(tb.grad.numpy(), top / b)


def test_eltwise_max_routes_gradient_with_caffes_tie_rule():
    a = np.array([1.0, 2.0, 5.0, 3.0])
    b = np.array([1.0, 4.0, 5.0, 0.0])
    c = np.array([0.0, 4.0, 6.0, 3.0])
    layer = make('type: "Eltwise" eltwise_param { operation: MAX }', a.shape, b.shape, c.shape)
    ta, tb, tc = t(a), t(b), t(c)
    out = layer(ta, tb, tc)[0]
    np.testing.assert_array_equal(out.detach().numpy(), np.maximum(np.maximum(a, b), c))
    (out * t([1.0, 2.0, 3.0, 4.0], False)).sum().backward()
    # a==b ties go to b; later bottoms need a strictly larger value
    np.testing.assert_array_equal(ta.grad.numpy(), [0, 0, 0, 4])
    np.testing.assert_array_equal(tb.grad.numpy(), [1, 2, 0, 0])
    np.testing.assert_array_equal(tc.grad.numpy(), [0, 0, 3, 0])


@pytest.mark.parametrize("param,shapes,message", [
    ("eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [(2, 3), (2, 3)], "only allowed with operation: SUM"),
    ("eltwise_param { coeff: 1 }", [(2, 3), (2, 3)], "one per bottom"),
    ("", [(2, 3), (2, 4)], r"\(2, 4\).*\(2, 3\)"),
    ("", [(2, 3)], "at least 2"),
])
def test_eltwise_errors(param, shapes, message):
    with pytest.raises(NetError, match=message):
        make(f'type: "Eltwise" {param}', *shapes)


# ---------------------------------------------------------------- Reduction

@pytest.mark.parametrize("op,axis,coeff,ref", [
    ("SUM", 1, 1.0, lambda x: x.reshape(2, -1).sum(1)),
    ("ASUM", 1, 0.5, lambda x: 0.5 * np.abs(x).reshape(2, -1).sum(1)),
    ("SUMSQ", 0, 1.0, lambda x: np.array((x ** 2).sum())),
    ("MEAN", 2, -2.0, lambda x: -2.0 * x.reshape(2, 3, -1).mean(2)),
    ("SUM", -1, 1.0, lambda x: x.sum(-1)),
])
def test_reduction(op, axis, coeff, ref):
    x = rand(2, 3, 4, 5)
    layer = make(f'type: "Reduction" reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }}', x.shape)
    (out,) = run(layer, x)
    np.testing.assert_allclose(out, ref(x), rtol=1e-12)
    assert gradcheck(lambda v: layer(v)[0], (t(rand(2, 3, 4, 5)),))


# ---------------------------------------------------------------- MVN

def _mvn_ref(x, rows, variance=True, eps=1e-9):
    flat = x.reshape(rows, -1)
    centered = flat - flat.mean(1, keepdims=True)
    if not variance:
        return centered.reshape(x.shape), None
    std = np.sqrt((centered ** 2).mean(1, keepdims=True)) + eps
    return (centered / std).reshape(x.shape), std


@pytest.mark.parametrize("param,rows", [("", 6), ("mvn_param { across_channels: true }", 2),
                                        ("mvn_param { eps: 0.5 }", 6)])
def test_mvn_forward_and_caffe_backward(param, rows):
    x = 3 * rand(2, 3, 5, 7)
    layer = make(f'type: "MVN" {param}', x.shape)
    eps = layer.eps
    tx = t(x)
    out = layer(tx)[0]
    y, std = _mvn_ref(x, rows, eps=eps)
    np.testing.assert_allclose(out.detach().numpy(), y, rtol=1e-12, atol=1e-12)
    g = rand(*x.shape)
    (out * t(g, False)).sum().backward()
    yf, gf = y.reshape(rows, -1), g.reshape(rows, -1)
    expected = (gf - gf.mean(1, keepdims=True) - yf * (yf * gf).mean(1, keepdims=True)) / std
    np.testing.assert_allclose(tx.grad.numpy(), expected.reshape(x.shape), rtol=1e-10, atol=1e-12)


def test_mvn_mean_only_and_constant_input():
    x = rand(2, 3, 4)
    layer = make('type: "MVN" mvn_param { normalize_variance: false }', x.shape)
    np.testing.assert_allclose(run(layer, x)[0], _mvn_ref(x, 6, variance=False)[0], rtol=1e-12)
    assert gradcheck(lambda v: layer(v)[0], (t(x),))
    const = t(np.ones((1, 2, 3)))
    out = make('type: "MVN"', (1, 2, 3))(const)[0]
    out.sum().backward()
    assert torch.isfinite(const.grad).all() and (out == 0).all()


# ---------------------------------------------------------------- Embed

def test_embed_forward_and_weight_gradient():
    layer = make('type: "Embed" embed_param { input_dim: 5 num_output: 3 '
                 'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } }', (2, 3))
    assert [tuple(b.shape) for b in layer.blobs] == [(5, 3), (3,)]
    assert layer.top_shapes == [(2, 3, 3)]
    idx = np.array([[0, 4, 2], [2, 2, 1]], dtype=np.float64)
    out = layer(t(idx, False))[0]
    w, bias = layer.blobs[0].detach().numpy(), layer.blobs[1].detach().numpy()
    np.testing.assert_allclose(out.detach().numpy(), w[idx.astype(int)] + bias, rtol=1e-14)
    g = rand(2, 3, 3)
    (out * t(g, False)).sum().backward()
    expected = np.zeros((5, 3))
    np.add.at(expected, idx.astype(int).ravel(), g.reshape(-1, 3))
    np.testing.assert_allclose(layer.blobs[0].grad.numpy(), expected, rtol=1e-14)
    np.testing.assert_allclose(layer.blobs[1].grad.numpy(), g.reshape(-1, 3).sum(0), rtol=1e-14)


def test_embed_errors():
    layer = make('type: "Embed" embed_param { input_dim: 5 num_output: 3 bias_term: false }', (4,))
    assert len(layer.blobs) == 1
    with pytest.raises(DataError, match="index 5 is outside"):
        layer(t([0, 1, 5, 2], False))
    with pytest.raises(NetError, match="must both be positive"):
        make('type: "Embed" embed_param { num_output: 3 }', (4,))
