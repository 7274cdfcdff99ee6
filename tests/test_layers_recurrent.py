"""LSTM and RNN (Caffe: lstm_layer.cpp, lstm_unit_layer.cpp, rnn_layer.cpp, recurrent_layer.cpp) against
step-by-step numpy references written from Caffe's equations: gate order i, f, o, g; ``cont`` zeroes the previous
state; static input; exposed hidden state; state carried from one forward to the next."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vggproto.errors import NetError
from vggproto.net.interpreter import Net

T, N, D, H, DS = 4, 3, 5, 2, 6


def _net(kind: str, static: bool = False, expose: bool = False) -> Net:
    bottoms = ['bottom: "x"', 'bottom: "cont"'] + (['bottom: "xs"'] if static else [])
    tops = ['top: "y"']
    states = ("h", "c") if kind == "LSTM" else ("h",)
    if expose:
        bottoms += [f'bottom: "{s}0"' for s in states]
        tops += [f'top: "{s}T"' for s in states]
    inputs = [("x", (T, N, D)), ("cont", (T, N))] + ([("xs", (N, DS))] if static else []) + \
        ([(f"{s}0", (1, N, H)) for s in states] if expose else [])
    text = "".join(f'layer {{ name: "{n}" type: "Input" top: "{n}" input_param {{ shape {{ '
                   + " ".join(f"dim: {d}" for d in shape) + " } } }\n" for n, shape in inputs)
    text += (f'layer {{ name: "rec" type: "{kind}" {" ".join(bottoms)} {" ".join(tops)} recurrent_param {{ '
             f'num_output: {H} expose_hidden: {str(expose).lower()} weight_filler {{ type: "uniform" min: -0.8 '
             f'max: 0.8 }} bias_filler {{ type: "uniform" min: -0.5 max: 0.5 }} }} }}\n')
    return Net(text, seed=1).double()


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _lstm_ref(params, x, cont, xs=None, h=None, c=None):
    w_xc, b_c, *rest = [p.detach().numpy() for p in params]
    w_s = rest.pop(0) if xs is not None else None
    w_hc = rest[0]
    h = np.zeros((N, H)) if h is None else h
    c = np.zeros((N, H)) if c is None else c
    ys = []
    for t in range(T):
        g_in = x[t] @ w_xc.T + b_c + h * cont[t][:, None] @ w_hc.T
        if xs is not None:
            g_in = g_in + xs @ w_s.T
        i, f, o, g = _sig(g_in[:, :H]), _sig(g_in[:, H:2 * H]), _sig(g_in[:, 2 * H:3 * H]), np.tanh(g_in[:, 3 * H:])
        c = cont[t][:, None] * f * c + i * g
        h = o * np.tanh(c)
        ys.append(h)
    return np.stack(ys), h, c


def _rnn_ref(params, x, cont, xs=None, h=None):
    w_xh, b_h, *rest = [p.detach().numpy() for p in params]
    w_s = rest.pop(0) if xs is not None else None
    w_hh, w_ho, b_o = rest
    h = np.zeros((N, H)) if h is None else h
    ys = []
    for t in range(T):
        pre = x[t] @ w_xh.T + b_h + (h * cont[t][:, None]) @ w_hh.T
        if xs is not None:
            pre = pre + xs @ w_s.T
        h = np.tanh(pre)
        ys.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(ys), h


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    cont = np.ones((T, N))
    cont[0] = 0
    cont[2, 1] = 0            # stream 1 starts a new sequence at t = 2
    return rng.normal(size=(T, N, D)), cont, rng.normal(size=(N, DS))


@pytest.mark.parametrize("static", [False, True])
def test_lstm_matches_caffe_equations_and_carries_state(data, static):
    x, cont, xs = data
    net = _net("LSTM", static=static)
    params = list(net.layer_dict["rec"].blobs)
    assert [tuple(p.shape) for p in params] == [(4 * H, D), (4 * H,)] + ([(4 * H, DS)] if static else []) + \
        [(4 * H, H)]
    feeds = dict(x=x, cont=cont, **({"xs": xs} if static else {}))
    y1 = net(**feeds)["y"].detach().numpy()
    ref1, h, c = _lstm_ref(params, x, cont, xs if static else None)
    np.testing.assert_allclose(y1, ref1, rtol=1e-12, atol=1e-12)
    ones = np.ones((T, N))                     # continue every stream: the last state carries over
    y2 = net(**{**feeds, "cont": ones})["y"].detach().numpy()
    np.testing.assert_allclose(y2, _lstm_ref(params, x, ones, xs if static else None, h, c)[0], atol=1e-12)


def test_rnn_matches_caffe_equations_with_exposed_hidden_state(data):
    x, cont, xs = data
    net = _net("RNN", static=True, expose=True)
    params = list(net.layer_dict["rec"].blobs)
    assert [tuple(p.shape) for p in params] == [(H, D), (H,), (H, DS), (H, H), (H, H), (H,)]
    h0 = np.random.default_rng(1).normal(size=(1, N, H))
    out = net(x=x, cont=np.ones((T, N)), xs=xs, h0=h0)
    ref, h_t = _rnn_ref(params, x, np.ones((T, N)), xs, h0[0])
    np.testing.assert_allclose(out["y"].detach().numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(out["hT"].detach().numpy()[0], h_t, atol=1e-12)
    again = net(x=x, cont=np.ones((T, N)), xs=xs, h0=h0)["y"]   # exposed: no carried state
    np.testing.assert_allclose(again.detach().numpy(), ref, atol=1e-12)


def test_gradients_flow_to_input_and_weights_not_to_cont(data):
    x, cont, _ = data
    net = _net("LSTM", expose=True)
    xt = torch.tensor(x, requires_grad=True)
    ct = torch.tensor(cont, requires_grad=True)
    h0 = torch.zeros(1, N, H, dtype=torch.float64, requires_grad=True)
    c0 = torch.zeros(1, N, H, dtype=torch.float64, requires_grad=True)

    def run(xv, h_init, c_init):
        return net(x=xv, cont=ct, h0=h_init, c0=c_init)["y"]
    assert torch.autograd.gradcheck(run, (xt, h0, c0))
    run(xt, h0, c0).sum().backward()
    assert ct.grad is None and all(p.grad is not None for p in net.layer_dict["rec"].blobs)


@pytest.mark.parametrize("change, message", [
    (("dim: 4 dim: 3\n", "dim: 3 dim: 3\n"), "bottom\\[1\\] \\(sequence continuation indicators\\) must be"),
    (("num_output: 2", "num_output: 0"), "num_output must be positive"),
])
def test_shape_errors_name_the_layer(change, message):
    text = ('layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 } } }\n'
            'layer { name: "cont" type: "Input" top: "cont" input_param { shape { dim: 4 dim: 3\n } } }\n'
            'layer { name: "rec" type: "LSTM" bottom: "x" bottom: "cont" top: "y" '
            'recurrent_param { num_output: 2 } }\n')
    with pytest.raises(NetError, match=message) as err:
        Net(text.replace(*change))
    assert "layer 'rec' (LSTM)" in str(err.value)
