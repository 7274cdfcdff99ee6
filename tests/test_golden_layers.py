"""Every single-layer case recorded from real BVLC Caffe (tests/data/golden/layers, see its README).

For each case: build the net (TEST, or TRAIN for batchnorm_train), load Caffe's caffemodel, feed ``blob:<input>``,
compare every recorded blob; then seed the output diffs (``topdiff:``; loss tops get their loss weight) and
compare ``diff:`` (w.r.t. each blob's first value: Caffe's in-place diff semantics) and ``pdiff:``.
Tolerances from the golden README: forward 1e-5, backward 1e-4, relative to max(1, max|ref|); masks exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vggproto.caffe.prototxt import read_net
from vggproto.layers.registry import supported_types
from vggproto.net.interpreter import Net

GOLDEN = Path(__file__).parent / "data" / "golden" / "layers"
CASES = sorted(p.stem for p in GOLDEN.glob("*.prototxt"))
EXACT = {"mask"}   # integer-valued outputs compared exactly


def _close(got: np.ndarray, ref: np.ndarray, tol: float) -> float:
    assert got.shape == ref.shape, f"shape {got.shape} vs {ref.shape}"
    return float(np.abs(got.astype(np.float64) - ref).max(initial=0.0)) / max(1.0, float(np.abs(ref).max(initial=0)))


def _run(case: str):
    proto = GOLDEN / f"{case}.prototxt"
    missing = sorted({layer.type for layer in read_net(str(proto)).layer} - set(supported_types()))
    if missing:
        pytest.skip(f"layer type {', '.join(missing)} not implemented")
    ref = np.load(GOLDEN / f"{case}.npz")
    net = Net(str(proto), str(GOLDEN / f"{case}.caffemodel"), phase="TRAIN" if case == "batchnorm_train" else "TEST")
    net.track_diffs = True
    loaded = {(layer, i): b.detach().clone().numpy() for layer, blobs in net.params.items()
              for i, b in enumerate(blobs)}
    inputs = {name: torch.tensor(ref[f"blob:{name}"], requires_grad=True) for name in net.input_names}
    net(**inputs)
    return net, ref, loaded


@pytest.mark.parametrize("case", CASES)
def test_golden_case(case: str) -> None:
    assert len(CASES) == 67
    net, ref, loaded = _run(case)
    for key in ref.files:
        kind, _, name = key.partition(":")
        if kind == "param":   # the caffemodel must have loaded exactly what Caffe used
            layer, index = name.split(":")
            np.testing.assert_array_equal(loaded[layer, int(index)], ref[key], err_msg=key)
        elif kind == "blob":
            got = net.blobs[name].detach().numpy()
            if name in EXACT:
                np.testing.assert_array_equal(got, ref[key], err_msg=key)
            else:
                assert _close(got, ref[key], 1e-5) <= 1e-5, key
        elif kind == "param_after":
            layer, index = name.split(":")
            assert _close(net.params[layer][int(index)].detach().numpy(), ref[key], 1e-5) <= 1e-5, key
    seeds = {k.split(":", 1)[1]: ref[k] for k in ref.files if k.startswith("topdiff:")}
    if not seeds:
        assert not any(k.startswith(("diff:", "pdiff:")) for k in ref.files)
        return
    loss_tops = set(net.loss_weights)
    for name in loss_tops & set(seeds):   # Caffe seeds a loss top's diff with its loss weight
        np.testing.assert_allclose(seeds[name], net.loss_weights[name])
    net.backward(**{name: value for name, value in seeds.items() if name not in loss_tops})
    for key in ref.files:
        kind, _, name = key.partition(":")
        if kind == "diff":
            assert _close(net.diff(name).detach().numpy(), ref[key], 1e-4) <= 1e-4, key
        elif kind == "pdiff":
            layer, index = name.split(":")
            param = net.params[layer][int(index)]
            got = param.grad.numpy() if param.grad is not None else np.zeros(tuple(param.shape), np.float32)
            assert _close(got, ref[key], 1e-4) <= 1e-4, key


def test_golden_cases_cover_every_recorded_output() -> None:
    """The harness above must see diffs for every non-output blob of the in-place mini VGG (quirk check)."""
    net, ref, _ = _run("mini_vgg")
    # blob:conv1 is the post-ReLU value (in place), diff:conv1 the gradient w.r.t. the pre-ReLU conv output
    assert (ref["blob:conv1"] >= 0).all()
    np.testing.assert_allclose(net.blobs["conv1"].detach().numpy(), ref["blob:conv1"], atol=1e-5)
    net.backward(prob=ref["topdiff:prob"])
    pre_relu = net.diff("conv1").numpy()
    np.testing.assert_allclose(pre_relu, ref["diff:conv1"], atol=1e-4)
    assert (pre_relu[ref["blob:conv1"] == 0] == 0).all()
