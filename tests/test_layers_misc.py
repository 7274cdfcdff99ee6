"""BatchReindex, Filter, Im2col and LSTMUnit against independent references: numpy loops written from the formulas
of Caffe's Forward_cpu / Backward_cpu (batch_reindex_layer.cpp, filter_layer.cpp, util/im2col.cpp,
lstm_unit_layer.cpp), ``torch.nn.functional.unfold`` for 2-D Im2col and float64 ``gradcheck`` for the backward
passes; each layer also runs in a net built from prototxt text, and refuses backprop to its index-like bottom."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vggproto.caffe.prototxt import read_net
from vggproto.errors import NetError
from vggproto.layers.registry import LayerSpec, build_layer
from vggproto.net.interpreter import Net

RNG = np.random.default_rng(0)


def layer(text: str, *shapes: tuple[int, ...]):
    """One layer built from its prototxt text for bottoms of ``shapes``."""
    return build_layer(LayerSpec(read_net(text).layer[0], [tuple(s) for s in shapes], path="net.prototxt", line=1))


def inputs(*blobs: tuple[str, tuple[int, ...]]) -> str:
    """Input layers for the named blobs of the given shapes."""
    return "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for n, shape in blobs)


def t64(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


# --------------------------------------------------------------------------------------------------- BatchReindex

REINDEX = 'layer { name: "r" type: "BatchReindex" bottom: "x" bottom: "i" top: "y" }'


def reindex_ref(x: np.ndarray, permut: np.ndarray, top_diff: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """batch_reindex_layer.cpp Forward_cpu / Backward_cpu over flat arrays."""
    inner = x.size // x.shape[0]
    flat, out = x.reshape(-1), np.empty(len(permut) * inner)
    diff, bot_diff = top_diff.reshape(-1), np.zeros(x.size)
    for index in range(out.size):
        in_n = int(permut[index // inner])                      # static_cast<int>
        out[index] = flat[in_n * inner + index % inner]
        bot_diff[in_n * inner + index % inner] += diff[index]
    return out.reshape((len(permut),) + x.shape[1:]), bot_diff.reshape(x.shape)


def test_batch_reindex_matches_caffe_loops_with_repeats_and_truncation():
    x = RNG.normal(size=(4, 2, 3))
    permut = np.array([3, 0.0, 3.9, 1.2, 3])    # repeats add up in backward; 3.9 -> 3 as static_cast<int>
    top_diff = RNG.normal(size=(5, 2, 3))
    r = layer(REINDEX, x.shape, permut.shape)
    assert r.top_shapes == [(5, 2, 3)]
    xt = t64(x, True)
    (y,) = r(xt, t64(permut))
    y.backward(t64(top_diff))
    ref_y, ref_diff = reindex_ref(x, permut, top_diff)
    np.testing.assert_array_equal(y.detach().numpy(), ref_y)
    np.testing.assert_allclose(xt.grad.numpy(), ref_diff, rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a: r(a, t64(permut))[0], (t64(x, True),))


@pytest.mark.parametrize("bad", [4, -0.5, float("nan")])
def test_batch_reindex_index_outside_the_batch_is_one_line_error(bad):
    r = layer(REINDEX, (4, 2), (2,))
    with pytest.raises(NetError, match=r"^net.prototxt:1: layer 'r' \(BatchReindex\): index .* at position 1 of "
                                       r"bottom 1 \('i'\) is outside the batch \[0, 4\) of bottom 0 \('x'\)$"):
        r(torch.zeros(4, 2), torch.tensor([0.0, bad]))
    with pytest.raises(NetError, match="bottom 1 .* must be 1-D"):
        layer(REINDEX, (4, 2), (2, 1))


def test_batch_reindex_in_a_net_and_no_backprop_to_the_index():
    text = inputs(("x", (3, 4)), ("i", (2,))) + REINDEX.replace("}", 'propagate_down: true propagate_down: true }')
    net = Net(text)
    x = torch.randn(3, 4, requires_grad=True)
    out = net(x=x, i=torch.tensor([2.0, 2.0]))
    np.testing.assert_array_equal(out["y"].detach().numpy(), x.detach().numpy()[[2, 2]])
    with pytest.raises(NetError, match=r"layer 'r' \(BatchReindex\): cannot backpropagate to the index \(bottom 1, "
                                       r"'i'\), as in Caffe .*propagate_down: false"):
        net.backward(y=torch.ones(2, 4))
    fine = Net(inputs(("x", (3, 4)), ("i", (2,))) + REINDEX)
    fine(x=x, i=torch.tensor([2.0, 0.0]))
    fine.backward(y=torch.ones(2, 4))
    np.testing.assert_array_equal(x.grad.numpy(), [[1] * 4, [0] * 4, [1] * 4])


# --------------------------------------------------------------------------------------------------------- Filter

FILTER = 'layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "s" top: "fa" top: "fb" }'


def filter_ref(bottoms: list[np.ndarray], selector: np.ndarray, diffs: list[np.ndarray]):
    """filter_layer.cpp: forward copies the items whose selector is non-zero; backward copies their top diff
    back and zeroes every other item."""
    chosen = [n for n in range(selector.shape[0]) if selector.reshape(-1)[n]]
    tops = [np.stack([b[n] for n in chosen]) if chosen else np.zeros((0,) + b.shape[1:]) for b in bottoms]
    grads = []
    for b, diff in zip(bottoms, diffs):
        grad, k = np.zeros_like(b), 0
        for n in range(b.shape[0]):
            if k < len(chosen) and n == chosen[k]:
                grad[n], k = diff[k], k + 1
        grads.append(grad)
    return tops, grads


def test_filter_matches_caffe_loops_forward_and_backward():
    a, b = RNG.normal(size=(5, 3)), RNG.normal(size=(5, 2, 2))
    selector = np.array([[0], [1], [0], [-2.5], [1]], dtype=np.float64)
    f = layer(FILTER, a.shape, b.shape, selector.shape)
    assert f.top_shapes == [(5, 3), (5, 2, 2)]   # Caffe's first reshape keeps every item
    at, bt = t64(a, True), t64(b, True)
    fa, fb = f(at, bt, t64(selector))
    diffs = [RNG.normal(size=fa.shape), RNG.normal(size=fb.shape)]
    torch.autograd.backward([fa, fb], [t64(d) for d in diffs])
    (ra, rb), (ga, gb) = filter_ref([a, b], selector, diffs)
    np.testing.assert_array_equal(fa.detach().numpy(), ra)
    np.testing.assert_array_equal(fb.detach().numpy(), rb)
    np.testing.assert_array_equal(at.grad.numpy(), ga)   # unselected items: exactly zero
    np.testing.assert_array_equal(bt.grad.numpy(), gb)
    assert torch.autograd.gradcheck(lambda p, q: f(p, q, t64(selector)), (t64(a, True), t64(b, True)))
    (none, _) = f(at, bt, t64(np.zeros((5, 1))))
    assert tuple(none.shape) == (0, 3)


def test_filter_shape_errors():
    with pytest.raises(NetError, match="selector .* must have shape"):
        layer(FILTER, (5, 3), (5, 2), (5, 2))
    with pytest.raises(NetError, match="bottom 1 has shape \\(4, 2\\).* first axis 5"):
        layer(FILTER, (5, 3), (4, 2), (5,))
    with pytest.raises(NetError, match="one top per filtered bottom"):
        layer('layer { name: "f" type: "Filter" bottom: "a" bottom: "s" top: "x" top: "y" }', (5, 3), (5,))


def test_filter_in_a_net_and_the_selector_propagate_down_rule():
    head = inputs(("x", (4, 3)), ("lab", (4,)))
    learned = ('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "score" inner_product_param { '
               'num_output: 1 weight_filler { type: "gaussian" } } }\n')
    filt = 'layer {{ name: "f" type: "Filter" bottom: "x" bottom: "score" top: "fx" {down} }}'
    x = torch.arange(12.0).reshape(4, 3).requires_grad_()
    # the selector comes from a learned layer: Caffe would backpropagate to it and stops; so does the net
    net = Net(head + learned + filt.format(down=""), seed=3)
    out = net(x=x, lab=torch.zeros(4))
    keep = net.blobs["score"].detach().reshape(-1) != 0
    np.testing.assert_array_equal(out["fx"].detach().numpy(), x.detach().numpy()[keep.numpy()])
    with pytest.raises(NetError, match=r"^<text>:4: layer 'f' \(Filter\): cannot backpropagate to the selector "
                                       r"\(bottom 1, 'score'\), as in Caffe \(filter_layer.cpp\); give it "
                                       r"propagate_down: false$"):
        net.backward(fx=torch.ones_like(out["fx"]))
    # propagate_down: false for the selector: only the selected items of x get a gradient
    ok = Net(head + learned + filt.format(down="propagate_down: true propagate_down: false"), seed=3)
    ok.track_diffs = True
    out = ok(x=x, lab=torch.zeros(4))
    ok.backward(fx=torch.ones_like(out["fx"]))
    np.testing.assert_array_equal(ok.diff("x").numpy(), keep.double().numpy()[:, None] * np.ones((1, 3)))


# --------------------------------------------------------------------------------------------------------- Im2col

def im2col_text(conv: str) -> str:
    return f'layer {{ name: "c" type: "Im2col" bottom: "x" top: "col" convolution_param {{ {conv} }} }}'


def im2col_nd_ref(img: np.ndarray, kernel, stride, pad, dilation) -> np.ndarray:
    """util/im2col.cpp im2col_nd_cpu for one (C, S...) image: column channel c*K + k (k row-major over the
    kernel), zero where the window leaves the image; output sizes (in + 2p - ext) / s + 1 in C division."""
    channels, sizes = img.shape[0], img.shape[1:]
    out = [int((n + 2 * p - (d * (k - 1) + 1)) / s) + 1 for n, k, s, p, d in zip(sizes, kernel, stride, pad, dilation)]
    offsets = list(itertools.product(*(range(k) for k in kernel)))
    col = np.zeros((channels * len(offsets), *out))
    for c, (k_i, koff) in itertools.product(range(channels), enumerate(offsets)):
        for pos in itertools.product(*(range(o) for o in out)):
            src = [q * s - p + j * d for q, s, p, j, d in zip(pos, stride, pad, koff, dilation)]
            if all(0 <= v < n for v, n in zip(src, sizes)):
                col[(c * len(offsets) + k_i, *pos)] = img[(c, *src)]
    return col


@pytest.mark.parametrize("conv, kernel, stride, pad, dilation", [
    ("kernel_size: 3", (3, 3), 1, 0, 1),
    ("kernel_size: 3 stride: 2 pad: 1", (3, 3), 2, 1, 1),
    ("kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 0 pad_w: 1", (2, 3), (1, 2), (0, 1), 1),
    ("kernel_size: 2 dilation: 2 pad: 2 stride: 3", (2, 2), 3, 2, 2),
    ("kernel_size: 3 force_nd_im2col: true", (3, 3), 1, 0, 1),   # Caffe's N-d routine: the same values
])
def test_im2col_2d_equals_unfold(conv, kernel, stride, pad, dilation):
    x = RNG.normal(size=(2, 3, 7, 8))
    c = layer(im2col_text(conv), x.shape)
    (col,) = c(t64(x))
    want = F.unfold(t64(x), kernel, dilation=dilation, padding=pad, stride=stride)
    assert c.top_shapes == [tuple(col.shape)]
    np.testing.assert_array_equal(col.reshape(2, want.shape[1], -1).numpy(), want.numpy())
    small = RNG.normal(size=(1, 2, 5, 6))   # Im2col reshapes with its input; a small one keeps gradcheck quick
    assert torch.autograd.gradcheck(lambda a: c(a)[0], (t64(small, True),))


@pytest.mark.parametrize("shape, conv, kernel, stride, pad, dilation", [
    ((2, 2, 9), "kernel_size: 3 stride: 2 pad: 1", (3,), (2,), (1,), (1,)),                          # 1-D
    ((1, 2, 4, 5, 3), "kernel_size: 2 kernel_size: 3 kernel_size: 1 pad: 1 stride: 2 dilation: 1 dilation: 2 "
                      "dilation: 1", (2, 3, 1), (2, 2, 2), (1, 1, 1), (1, 2, 1)),                      # 3-D
    ((2, 2, 3, 3), "kernel_size: 4 stride: 2", (4, 4), (2, 2), (0, 0), (1, 1)),   # (3-4)/2 = 0 in C: one window
])
def test_im2col_nd_matches_caffe_loops(shape, conv, kernel, stride, pad, dilation):
    x = RNG.normal(size=shape)
    c = layer(im2col_text(conv), shape)
    (col,) = c(t64(x))
    for n in range(shape[0]):
        np.testing.assert_array_equal(col[n].numpy(), im2col_nd_ref(x[n], kernel, stride, pad, dilation))
    assert torch.autograd.gradcheck(lambda a: c(a)[0], (t64(x, True),))


def test_im2col_axis_and_errors():
    x = RNG.normal(size=(2, 3, 2, 5))          # axis 2: (2, 3) outer items of 2 channels, one spatial axis
    c = layer(im2col_text("kernel_size: 2 axis: 2"), x.shape)
    assert c.top_shapes == [(2, 3, 4, 4)]
    (col,) = c(t64(x))
    for i, j in itertools.product(range(2), range(3)):
        np.testing.assert_array_equal(col[i, j].numpy(), im2col_nd_ref(x[i, j], (2,), (1,), (0,), (1,)))
    with pytest.raises(NetError, match="kernel_size .* is required"):
        layer(im2col_text("stride: 2"), (1, 1, 4, 4))
    with pytest.raises(NetError, match="either kernel_size or kernel_h/kernel_w"):
        layer(im2col_text("kernel_size: 2 kernel_h: 2 kernel_w: 2"), (1, 1, 4, 4))
    with pytest.raises(NetError, match="output would be empty"):
        layer(im2col_text("kernel_size: 5"), (1, 1, 3, 3))
    with pytest.raises(NetError, match="at least one spatial axis"):
        layer(im2col_text("kernel_size: 1 axis: -1"), (1, 4))


def test_im2col_in_a_net_reshapes_with_its_input():
    net = Net(inputs(("x", (1, 2, 4, 4))) + im2col_text("kernel_size: 3 pad: 1"))
    assert net.blob_shapes["col"] == (1, 18, 4, 4)
    x = torch.randn(1, 2, 6, 5)                 # Caffe reshapes every forward
    col = net(x=x)["col"]
    np.testing.assert_array_equal(col.reshape(1, 18, -1).numpy(), F.unfold(x, 3, padding=1).numpy())


# ------------------------------------------------------------------------------------------------------- LSTMUnit

UNIT = 'layer { name: "u" type: "LSTMUnit" bottom: "c0" bottom: "x" bottom: "cont" top: "c" top: "h" }'


def _sig(v):
    return 1 / (1 + np.exp(-v))


def lstm_unit_ref(c_prev, x, cont, c_diff, h_diff):
    """lstm_unit_layer.cpp Forward_cpu and Backward_cpu, element by element."""
    _, n_streams, dim = c_prev.shape
    c, h = np.zeros_like(c_prev), np.zeros_like(c_prev)
    dc_prev, dx = np.zeros_like(c_prev), np.zeros_like(x)
    for n, d in itertools.product(range(n_streams), range(dim)):
        xs = x[0, n]
        i, o, g = _sig(xs[d]), _sig(xs[2 * dim + d]), np.tanh(xs[3 * dim + d])
        f = 0.0 if cont[0, n] == 0 else cont[0, n] * _sig(xs[dim + d])
        c[0, n, d] = f * c_prev[0, n, d] + i * g
        tanh_c = np.tanh(c[0, n, d])
        h[0, n, d] = o * tanh_c
        c_term = c_diff[0, n, d] + h_diff[0, n, d] * o * (1 - tanh_c * tanh_c)
        dc_prev[0, n, d] = c_term * f
        dx[0, n, d] = c_term * g * i * (1 - i)
        dx[0, n, dim + d] = c_term * c_prev[0, n, d] * f * (1 - f)
        dx[0, n, 2 * dim + d] = h_diff[0, n, d] * tanh_c * o * (1 - o)
        dx[0, n, 3 * dim + d] = c_term * i * (1 - g * g)
    return c, h, dc_prev, dx


@pytest.mark.parametrize("cont", [[1, 0, 1, 1], [0.5, 0, 1, 2]], ids=["binary", "fractional"])
def test_lstm_unit_matches_caffe_forward_and_backward(cont):
    n, dim = 4, 3
    c_prev, x = RNG.normal(size=(1, n, dim)), RNG.normal(size=(1, n, 4 * dim))
    cont = np.array([cont], dtype=np.float64)
    c_diff, h_diff = RNG.normal(size=(1, n, dim)), RNG.normal(size=(1, n, dim))
    u = layer(UNIT, c_prev.shape, x.shape, cont.shape)
    assert u.top_shapes == [(1, n, dim), (1, n, dim)]
    ct, xt = t64(c_prev, True), t64(x, True)
    c, h = u(ct, xt, t64(cont))
    torch.autograd.backward([c, h], [t64(c_diff), t64(h_diff)])
    ref = lstm_unit_ref(c_prev, x, cont, c_diff, h_diff)   # Caffe's f(1 - f) even for a fractional cont
    for got, want in zip((c, h, ct.grad, xt.grad), ref):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_lstm_unit_gradcheck_and_cont_refusal():
    c_prev, x = RNG.normal(size=(1, 3, 2)), RNG.normal(size=(1, 3, 8))
    cont = t64(np.array([[1.0, 0.0, 1.0]]))
    u = layer(UNIT, (1, 3, 2), (1, 3, 8), (1, 3))
    assert torch.autograd.gradcheck(lambda a, b: u(a, b, cont), (t64(c_prev, True), t64(x, True)))
    c, h = u(t64(c_prev, True), t64(x, True), t64(cont.numpy(), True))
    with pytest.raises(NetError, match=r"layer 'u' \(LSTMUnit\): cannot backpropagate to the sequence continuation "
                                       r"indicators \(bottom 2, 'cont'\)"):
        (c.sum() + h.sum()).backward()
    with pytest.raises(NetError, match=r"bottom 1 \(the gate inputs\) has 6 channels; it needs 4 x 2"):
        layer(UNIT, (1, 3, 2), (1, 3, 6), (1, 3))
    with pytest.raises(NetError, match=r"bottom 2 must be cont \(1, N\), got shape \(1, 4\)"):
        layer(UNIT, (1, 3, 2), (1, 3, 8), (1, 4))


def test_lstm_unit_in_a_net_is_one_step_of_the_lstm_layer():
    # Caffe's LSTM is an unrolled net of LSTMUnits: one LSTM step (T = 1) equals an LSTMUnit fed with its gates
    text = inputs(("x", (1, 2, 4)), ("cont", (1, 2)), ("h0", (1, 2, 3)), ("c0", (1, 2, 3)), ("gx", (1, 2, 12)))
    text += ('layer { name: "lstm" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" bottom: "c0" top: "y" '
             'top: "hT" top: "cT" recurrent_param { num_output: 3 expose_hidden: true weight_filler { '
             'type: "uniform" min: -1 max: 1 } bias_filler { type: "uniform" min: -1 max: 1 } } }\n'
             + UNIT.replace('bottom: "x"', 'bottom: "gx"'))
    net = Net(text, seed=2).double()
    x, h0, c0 = RNG.normal(size=(1, 2, 4)), RNG.normal(size=(1, 2, 3)), RNG.normal(size=(1, 2, 3))
    cont = np.array([[0.0, 1.0]])
    w_xc, b_c, w_hc = (b.detach().numpy() for b in net.params["lstm"])
    gates = x @ w_xc.T + b_c + (cont[..., None] * h0) @ w_hc.T
    with torch.no_grad():
        out = net(x=t64(x), cont=t64(cont), h0=t64(h0), c0=t64(c0), gx=t64(gates))
    np.testing.assert_allclose(out["c"].numpy(), out["cT"].numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["h"].numpy(), out["hT"].numpy(), rtol=1e-12, atol=1e-12)
    c, h, _, _ = lstm_unit_ref(c0, gates, cont, np.zeros((1, 2, 3)), np.zeros((1, 2, 3)))
    np.testing.assert_allclose(out["c"].numpy(), c, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["h"].numpy(), h, rtol=1e-12, atol=1e-12)
