"""The six update rules and seven lr policies against hand-written float64 references of Caffe's formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import SolverError
from vggproto.train import updates


def solver(**fields) -> caffe_pb2.SolverParameter:
    p = caffe_pb2.SolverParameter(base_lr=0.1, lr_policy="fixed", max_iter=100)
    for k, v in fields.items():
        if isinstance(v, list):
            getattr(p, k).extend(v)
        else:
            setattr(p, k, v)
    return p


# ---------------------------------------------------------------------------------------------------------------
# lr policies
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy,fields,expect", [
    ("fixed", {}, lambda it: 0.1),
    ("step", {"gamma": 0.5, "stepsize": 3}, lambda it: 0.1 * 0.5 ** (it // 3)),
    ("exp", {"gamma": 0.9}, lambda it: 0.1 * 0.9 ** it),
    ("inv", {"gamma": 0.01, "power": 0.75}, lambda it: 0.1 * (1 + 0.01 * it) ** -0.75),
    ("poly", {"power": 2.0}, lambda it: 0.1 * (1 - it / 100) ** 2),
    ("sigmoid", {"gamma": 0.2, "stepsize": 10}, lambda it: 0.1 / (1 + math.exp(-0.2 * (it - 10)))),
])
def test_lr_policy(policy, fields, expect):
    p = solver(lr_policy=policy, **fields)
    step = 0
    for it in range(0, 40):
        rate, step = updates.learning_rate(p, it, step)
        # float32 constants: compare at float32 precision
        assert rate == pytest.approx(expect(it), rel=2e-6)


def test_multistep_is_stateful_and_advances_once_per_call():
    p = solver(lr_policy="multistep", gamma=0.1, stepvalue=[3, 4, 10])
    step, rates = 0, []
    for it in range(12):
        rate, step = updates.learning_rate(p, it, step)
        rates.append(rate)
    exp = [0.1] * 3 + [0.01] + [0.001] * 6 + [0.0001] * 2
    np.testing.assert_allclose(rates, exp, rtol=1e-6)
    assert step == 3
    # resuming with a stored current_step keeps the schedule (Caffe's SolverState.current_step)
    rate, step2 = updates.learning_rate(p, 11, 3)
    assert step2 == 3 and rate == pytest.approx(1e-4, rel=1e-6)
    # Caffe's multistep advances at most one step per call: a fresh run started late catches up one by one
    rate, s = updates.learning_rate(p, 11, 0)
    assert s == 1


def test_step_recomputes_current_step():
    p = solver(lr_policy="step", gamma=0.1, stepsize=7)
    assert updates.learning_rate(p, 8, 0)[1] == 1
    assert updates.learning_rate(p, 20, 0)[1] == 2


@pytest.mark.parametrize("fields,needle", [
    ({"type": "Foo"}, "unknown solver type"),
    ({"lr_policy": "cosine"}, "unknown lr_policy"),
    ({"lr_policy": "step"}, "stepsize"),
    ({"type": "AdaGrad", "momentum": 0.9}, "momentum cannot be used with AdaGrad"),
    ({"type": "RMSProp", "rms_decay": 1.0}, "rms_decay"),
    ({"regularization_type": "L3"}, "regularization_type"),
])
def test_check_solver_refuses_what_caffe_refuses(fields, needle):
    with pytest.raises(SolverError, match=needle):
        updates.check_solver(solver(**fields))


# ---------------------------------------------------------------------------------------------------------------
# update rules: float64 references written from Caffe's documented formulas
# ---------------------------------------------------------------------------------------------------------------

def reference_step(kind, p, w, g, state, rate, it):
    """Return the new weights; ``state`` is a dict of float64 arrays updated in place."""
    mu, d = p["momentum"], p["delta"]
    if kind == "SGD":
        state["v"] = mu * state["v"] + rate * g
        return w - state["v"]
    if kind == "Nesterov":
        old = state["v"].copy()
        state["v"] = mu * state["v"] + rate * g
        return w - ((1 + mu) * state["v"] - mu * old)
    if kind == "AdaGrad":
        state["h"] = state["h"] + g ** 2
        return w - rate * g / (np.sqrt(state["h"]) + d)
    if kind == "RMSProp":
        r = p["rms_decay"]
        state["h"] = r * state["h"] + (1 - r) * g ** 2
        return w - rate * g / (np.sqrt(state["h"]) + d)
    if kind == "AdaDelta":
        state["h"] = mu * state["h"] + (1 - mu) * g ** 2
        u = g * np.sqrt(state["h2"] + d) / np.sqrt(state["h"] + d)
        state["h2"] = mu * state["h2"] + (1 - mu) * u ** 2
        return w - rate * u
    if kind == "Adam":
        b1, b2, t = mu, p["momentum2"], it + 1
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v2"] = b2 * state["v2"] + (1 - b2) * g ** 2
        return w - rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * state["m"] / (np.sqrt(state["v2"]) + d)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", updates.SOLVER_TYPES)
@pytest.mark.parametrize("reg", ["L2", "L1"])
def test_update_rules_match_reference(kind, reg):
    rng = np.random.RandomState(3)
    shapes = [(4, 3), (4,)]
    lr_mults, decay_mults = [1.0, 2.0], [1.0, 0.5]
    momentum = 0.0 if kind in ("AdaGrad", "RMSProp") else 0.9
    p = solver(type=kind, momentum=momentum, weight_decay=0.01, regularization_type=reg, rms_decay=0.95,
               momentum2=0.999, delta=1e-6, iter_size=2, clip_gradients=0.7)
    hp = {"momentum": p.momentum, "delta": p.delta, "rms_decay": p.rms_decay, "momentum2": p.momentum2}
    w64 = [rng.randn(*s) for s in shapes]
    w32 = [torch.tensor(w, dtype=torch.float32) for w in w64]
    states = [{k: np.zeros(s) for k in ("v", "h", "h2", "m", "v2")} for s in shapes]
    history = updates.new_history(kind, w32)
    assert len(history) == len(shapes) * updates.history_per_param(kind)
    for it in range(6):
        summed = [rng.randn(*s) for s in shapes]  # sum of the iter_size mini-batch gradients
        rate = 0.05
        # reference: clip the SUM (global norm), then 1/iter_size, then decay, then the rule
        norm = math.sqrt(sum((g ** 2).sum() for g in summed))
        scale = 0.7 / norm if norm > 0.7 else 1.0
        for i in range(len(shapes)):
            g = summed[i] * scale / 2
            decay = 0.01 * decay_mults[i]
            g = g + decay * (w64[i] if reg == "L2" else np.sign(w64[i]))
            w64[i] = reference_step(kind, hp, w64[i], g, states[i], rate * lr_mults[i], it)
        grads = [torch.tensor(g, dtype=torch.float32) for g in summed]
        got_norm = updates.apply_update(p, w32, grads, history, lr_mults, decay_mults, rate, it)
        assert got_norm == pytest.approx(norm, rel=1e-5)
        for a, b in zip(w32, w64):
            np.testing.assert_allclose(a.numpy(), b, rtol=1e-5, atol=1e-6)


def test_sgd_folds_lr_into_history_unlike_torch_optim():
    # With a changing lr, Caffe's v = mu v + lr g differs from torch.optim.SGD's v = mu v + g; w -= lr v.
    p = solver(momentum=0.9)
    w = torch.zeros(1)
    hist = updates.new_history("SGD", [w])
    for it, rate in enumerate([1.0, 0.1]):
        updates.apply_update(p, [w], [torch.ones(1)], hist, [1.0], [1.0], rate, it)
    # step 1: v=1, w=-1; step 2: v = 0.9 + 0.1 = 1.0, w = -2.0  (torch.optim would give -1 - 0.1*1.9 = -1.19)
    assert float(w) == pytest.approx(-2.0)


def test_no_clip_when_norm_below_threshold_and_off_when_negative():
    g = [torch.tensor([3.0, 4.0])]
    assert updates.clip_gradients(g, 10.0) == pytest.approx(5.0)
    assert g[0].tolist() == [3.0, 4.0]
    assert updates.clip_gradients(g, -1) == -1.0
    updates.clip_gradients(g, 1.0)
    np.testing.assert_allclose(g[0].numpy(), [0.6, 0.8], rtol=1e-6)
