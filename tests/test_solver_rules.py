"""The full solver loop on a tiny net against a float64 re-simulation of Caffe's documented math.

Net: HDF5Data (batch 4 of 16 rows, wraps) → InnerProduct (lr_mult 1/2, decay_mult 1/0) → EuclideanLoss.
The reference computes the Euclidean gradient by hand, sums iter_size batches, clips the SUM, divides by
iter_size, adds L2/L1 decay × decay_mult, applies the rule with rate × lr_mult, for every type and lr policy.
"""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest
import torch

from vggproto.train.solver import Solver, TrainOptions

torch.set_num_threads(1)

NET = """
name: "tiny"
layer { name: "data" type: "HDF5Data" top: "data" top: "target"
        hdf5_data_param { source: "list.txt" batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 }
                              bias_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }
"""


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    rng = np.random.RandomState(0)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["data"] = rng.randn(16, 3).astype(np.float32)
        f["target"] = rng.randn(16, 2).astype(np.float32)
    (tmp_path / "list.txt").write_text("d.h5\n")
    (tmp_path / "net.prototxt").write_text(NET)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def ref_rate(p: dict, it: int, step: int) -> tuple[float, int]:
    base, g = p["base_lr"], p.get("gamma", 0.0)
    pol = p["lr_policy"]
    if pol == "fixed":
        return base, step
    if pol == "step":
        return base * g ** (it // p["stepsize"]), it // p["stepsize"]
    if pol == "exp":
        return base * g ** it, step
    if pol == "inv":
        return base * (1 + g * it) ** -p["power"], step
    if pol == "multistep":
        if step < len(p["stepvalue"]) and it >= p["stepvalue"][step]:
            step += 1
        return base * g ** step, step
    if pol == "poly":
        return base * (1 - it / p["max_iter"]) ** p["power"], step
    if pol == "sigmoid":
        return base / (1 + math.exp(-g * (it - p["stepsize"]))), step
    raise AssertionError(pol)


def simulate(p: dict, W: np.ndarray, b: np.ndarray, X: np.ndarray, Y: np.ndarray, iters: int):
    params = [W.astype(np.float64), b.astype(np.float64)]
    lr_mult, decay_mult = [1.0, 2.0], [1.0, 0.0]
    kind, mu, delta = p["type"], p.get("momentum", 0.0), p.get("delta", 1e-8)
    hist = [[np.zeros_like(x) for x in params] for _ in range(2)]
    row, step = 0, 0
    for it in range(iters):
        sums = [np.zeros_like(x) for x in params]
        for _ in range(p.get("iter_size", 1)):
            x, y = X[row:row + 4].astype(np.float64), Y[row:row + 4].astype(np.float64)
            row = (row + 4) % 16
            d = (x @ params[0].T + params[1] - y) / 4  # d/d(ip) of sum((ip-y)^2)/(2N)
            sums[0] += d.T @ x
            sums[1] += d.sum(0)
        clip = p.get("clip_gradients", -1)
        norm = math.sqrt(sum((s ** 2).sum() for s in sums))
        if clip >= 0 and norm > clip:
            sums = [s * clip / norm for s in sums]
        rate, step = ref_rate(p, it, step)
        for i, w in enumerate(params):
            g = sums[i] / p.get("iter_size", 1)
            decay = p.get("weight_decay", 0.0) * decay_mult[i]
            g = g + decay * (w if p.get("regularization_type", "L2") == "L2" else np.sign(w))
            r = rate * lr_mult[i]
            h, h2 = hist[0][i], hist[1][i]
            if kind == "SGD":
                h[:] = mu * h + r * g
                w -= h
            elif kind == "Nesterov":
                old = h.copy()
                h[:] = mu * h + r * g
                w -= (1 + mu) * h - mu * old
            elif kind == "AdaGrad":
                h += g * g
                w -= r * g / (np.sqrt(h) + delta)
            elif kind == "RMSProp":
                dec = p["rms_decay"]
                h[:] = dec * h + (1 - dec) * g * g
                w -= r * g / (np.sqrt(h) + delta)
            elif kind == "AdaDelta":
                h[:] = mu * h + (1 - mu) * g * g
                u = g * np.sqrt((h2 + delta) / (h + delta))
                h2[:] = mu * h2 + (1 - mu) * u * u
                w -= r * u
            elif kind == "Adam":
                t = it + 1
                h[:] = mu * h + (1 - mu) * g
                h2[:] = p["momentum2"] * h2 + (1 - p["momentum2"]) * g * g
                w -= r * math.sqrt(1 - p["momentum2"] ** t) / (1 - mu ** t) * h / (np.sqrt(h2) + delta)
    return params


BASE = {"base_lr": 0.1, "lr_policy": "fixed", "max_iter": 7, "weight_decay": 0.01}
CASES = {
    "sgd_step": {"type": "SGD", "momentum": 0.9, "lr_policy": "step", "gamma": 0.5, "stepsize": 2},
    "nesterov": {"type": "Nesterov", "momentum": 0.9, "lr_policy": "exp", "gamma": 0.9},
    "adagrad": {"type": "AdaGrad", "lr_policy": "inv", "gamma": 0.1, "power": 0.75},
    "rmsprop": {"type": "RMSProp", "rms_decay": 0.9, "delta": 1e-6, "lr_policy": "poly", "power": 2.0},
    "adadelta": {"type": "AdaDelta", "momentum": 0.95, "delta": 1e-6, "base_lr": 1.0,
                 "lr_policy": "multistep", "gamma": 0.5, "stepvalue": [2, 5]},
    "adam": {"type": "Adam", "momentum": 0.9, "momentum2": 0.999, "lr_policy": "sigmoid", "gamma": 0.5,
             "stepsize": 3},
    "sgd_itersize_clip_l1": {"type": "SGD", "momentum": 0.8, "iter_size": 2, "clip_gradients": 0.5,
                             "regularization_type": "L1", "weight_decay": 0.05},
    "adam_itersize_clip": {"type": "Adam", "momentum": 0.9, "momentum2": 0.99, "iter_size": 3,
                           "clip_gradients": 0.3, "lr_policy": "fixed"},
    "sgd_fixed_no_momentum": {"type": "SGD"},
}


def solver_text(p: dict) -> str:
    lines = ['net: "net.prototxt"', "display: 1", "random_seed: 3", 'snapshot_prefix: "snap"',
             "snapshot_after_train: false"]
    for k, v in p.items():
        for item in (v if isinstance(v, list) else [v]):
            lines.append(f'{k}: "{item}"' if isinstance(item, str) else f"{k}: {item!r}")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_solver_matches_float64_reference(workdir, name):
    p = dict(BASE, **CASES[name])
    (workdir / "solver.prototxt").write_text(solver_text(p))
    solver = Solver("solver.prototxt", TrainOptions(progress=False, csv=False))
    W0, b0 = (t.detach().numpy().copy() for t in solver.net.params["ip"])
    solver.solve()
    with h5py.File("d.h5") as f:
        X, Y = f["data"][()], f["target"][()]
    ref = simulate(p, W0, b0, X, Y, p["max_iter"])
    got = [t.detach().double().numpy() for t in solver.net.params["ip"]]
    assert not np.allclose(got[0], W0)  # it trained
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a, r, rtol=1e-4, atol=1e-5)
