"""A layer type's facts live on its class (issue #27): every registered type declares how it exports to ONNX and
whether a gradient flows back through it, and what :mod:`vggproto.convert.onnx` derives from those declarations
is what its own lists said before they moved onto the classes (recorded below from that code, type by type)."""
from __future__ import annotations

import pytest

from vggproto.convert.onnx import needed_opset, refusal
from vggproto.layers.registry import supported_types

DATA = "a data layer reads files or makes data at run time; replace it by an Input layer"
LOSS = "a loss layer has no place in a deploy graph; export the net without it (its deploy version)"
#: Before the move (convert/onnx.py's is_data/is_loss branches and its REFUSED dict): type -> why it never
#: exports, in either phase.  Every other registered type exported (TRAIN-phase randomness aside, below).
RECORDED_REFUSALS = {
    **dict.fromkeys(["BoxData", "Data", "DummyData", "HDF5Data", "ImageData"], DATA),
    **dict.fromkeys(["ContrastiveLoss", "EuclideanLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
                     "SigmoidCrossEntropyLoss", "SmoothL1Loss", "SoftmaxWithLoss"], LOSS),
    "DetectionOutput": "per-class NMS and top-k keep a data-dependent number of boxes; export up to its bottoms "
                       "(mbox_loc, mbox_conf_flatten, mbox_priorbox) and decode outside ONNX",
    "HDF5Output": "it writes its bottoms to an HDF5 file, a side effect with no ONNX form",
    "Proposal": "anchor decoding and NMS keep a data-dependent number of boxes, which a traced graph freezes",
    "Python": "a Python layer runs arbitrary code that has no ONNX form",
    "ROIPooling": "its window sizes depend on the ROI values, which a traced graph would freeze",
}
DROPOUT = "TRAIN-phase dropout draws a random mask; export the TEST phase"
STOCHASTIC = "TRAIN-phase STOCHASTIC pooling draws random cells; export the TEST phase"
#: (type, parameter text, bottoms) -> (why TEST refuses, why TRAIN refuses, the opset it needs), recorded before
#: the move for the types whose answer depends on their parameters.
RECORDED_VARIANTS = {
    ("Dropout", "dropout_param { dropout_ratio: 0.3 }", ("a",)): (None, DROPOUT, 13),
    ("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 2 }", ("a",)): (None, STOCHASTIC, 13),
    ("Pooling", "pooling_param { pool: MAX kernel_size: 2 }", ("a",)): (None, None, 13),
    ("Pooling", "pooling_param { pool: AVE kernel_size: 2 }", ("a",)): (None, None, 13),
    ("SPP", "spp_param { pool: STOCHASTIC pyramid_height: 2 }", ("a",)): (None, STOCHASTIC, 13),
    ("SPP", "spp_param { pool: MAX pyramid_height: 2 }", ("a",)): (None, None, 13),
    ("Upsample", "upsample_param { scale: 2 }", ("a",)): (None, None, 13),
    ("Upsample", "upsample_param { scale: 2 }", ("a", "a")): (None, None, 18),
}
IN = 'layer { name: "in" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 } } }\n'


def _net(kind: str, text: str = "", bottoms: tuple[str, ...] = ("a",)) -> str:
    """An Input layer, then one layer of ``kind`` (its bottoms all the input); nothing is built."""
    names = "".join(f' bottom: "{b}"' for b in bottoms)
    return IN + f'layer {{ name: "l" type: "{kind}"{names} top: "t" {text} }}\n'


def _why(kind: str, phase: str, text: str = "", bottoms: tuple[str, ...] = ("a",)) -> str | None:
    message = refusal(_net(kind, text, bottoms), phase)
    if message is None:
        return None
    prefix = f"layer 'l' ({kind}) cannot be exported to ONNX: "
    assert message.startswith(prefix), message
    return message[len(prefix):]


@pytest.mark.parametrize("kind", supported_types())
def test_onnx_refusal_of_every_type_is_what_it_was(kind: str) -> None:
    expected = RECORDED_REFUSALS.get(kind)
    train = expected or (DROPOUT if kind == "Dropout" else None)
    assert (_why(kind, "TEST"), _why(kind, "TRAIN")) == (expected, train)
    from vggproto.caffe.prototxt import parse_net
    assert needed_opset(parse_net(_net(kind)).net.layer[1]) == 13


@pytest.mark.parametrize("case", sorted(RECORDED_VARIANTS), ids=lambda c: f"{c[0]}-{c[1].split()[3]}-{len(c[2])}")
def test_parameter_dependent_onnx_facts_are_what_they_were(case: tuple) -> None:
    from vggproto.caffe.prototxt import parse_net
    kind, text, bottoms = case
    test, train, opset = RECORDED_VARIANTS[case]
    assert (_why(kind, "TEST", text, bottoms), _why(kind, "TRAIN", text, bottoms)) == (test, train)
    assert needed_opset(parse_net(_net(kind, text, bottoms)).net.layer[1]) == opset
    if opset > 13:
        assert _why(kind, "TEST", text, bottoms) is None
        assert refusal(_net(kind, text, bottoms), "TEST", opset=opset - 1) == (
            f"layer 'l' ({kind}) cannot be exported to ONNX: it needs opset {opset}, not {opset - 1}")


def test_recorded_types_are_registered() -> None:
    assert set(RECORDED_REFUSALS) <= set(supported_types())
    assert {kind for kind, _, _ in RECORDED_VARIANTS} <= set(supported_types())


def test_every_registered_type_declares_its_capabilities() -> None:
    """No silent default: a vggproto type without ``onnx`` would be traced, one without ``backward`` would say
    nothing; data and loss layers say so in the words convert/onnx.py used (their deploy graphs have none)."""
    from vggproto.layers.base import NO_ONNX_DATA, NO_ONNX_LOSS, TRACED
    from vggproto.layers.registry import registered
    for kind, cls in registered().items():
        assert isinstance(cls.onnx, str) and cls.onnx, f"{kind} ({cls.__module__}) declares no onnx"
        assert isinstance(cls.backward, bool), f"{kind} ({cls.__module__}) declares no backward"
        if cls.is_loss:
            assert cls.onnx == NO_ONNX_LOSS and cls.backward, kind
        elif cls.is_data:
            assert cls.onnx == (TRACED if cls.feeds else NO_ONNX_DATA) and not cls.backward, kind


def test_the_refused_list_derived_from_the_classes_is_what_it_was() -> None:
    from vggproto.convert.onnx import refused_types
    assert refused_types() == RECORDED_REFUSALS


#: Types the ONNX sweep's one-layer nets build, whose declared ``backward`` autograd does not confirm because
#: of a bug outside this test: LSTM's forward copies its final state into the carried-state buffer its own graph
#: still reads, so its first backward fails ("modified by an inplace operation").
BACKWARD_BROKEN = {"LSTM"}


def _gradient_flows(kind: str, text: str, shapes: dict, domains: dict) -> bool:
    """Whether a TRAIN-phase layer built from an ONNX sweep case sends a gradient to a bottom or a parameter."""
    import torch

    from vggproto.caffe.proto import caffe_pb2
    from vggproto.caffe.prototxt import parse_net
    from vggproto.layers.registry import LayerSpec, build_layer
    sweep = pytest.importorskip("test_onnx_sweep")
    bottoms, tops = sweep.BOTTOMS.get(kind, list(shapes)), sweep.TOPS.get(kind, ["t"])
    names = "".join(f' bottom: "{b}"' for b in bottoms) + "".join(f' top: "{t}"' for t in tops)
    param = parse_net(f'layer {{ name: "l" type: "{kind}"{names} {text} }}').net.layer[0]
    feed = sweep._feed(domains, shapes)   # labels and indices get no gradient, as in Caffe
    xs = [feed(b, list(shapes[b]), 0).requires_grad_(domains.get(b, "normal") in ("normal", "positive"))
          for b in bottoms]
    layer = build_layer(LayerSpec(param, [tuple(x.shape) for x in xs], phase=caffe_pb2.TRAIN))
    outs = [o for o in layer(*[x * 1 if x.requires_grad else x for x in xs]) if o.requires_grad]
    if outs:
        torch.autograd.backward([o.sum() for o in outs])
    return any(t.grad is not None for t in [*xs, *layer.blobs])


def test_declared_backward_is_what_autograd_does() -> None:
    """Every type the ONNX sweep builds: ``backward`` True exactly when a gradient reaches a bottom or a
    parameter blob in some case of it (the refused types are data layers, losses, and the five in
    RECORDED_REFUSALS, whose declarations follow their Caffe sources)."""
    from vggproto.layers.registry import registered
    sweep = pytest.importorskip("test_onnx_sweep")
    wrong = {}
    for kind, cases in sorted(sweep.CASES.items()):
        if kind in BACKWARD_BROKEN:
            continue
        flows = any(_gradient_flows(kind, *case) for case in cases)
        if flows != registered()[kind].backward:
            wrong[kind] = flows
    assert not wrong, f"declared backward disagrees with autograd (what autograd does): {wrong}"


def test_lstm_backward_after_a_forward() -> None:
    """The carried state is replaced, not overwritten in place: the pass's own graph still reads the old one."""
    sweep = pytest.importorskip("test_onnx_sweep")
    assert _gradient_flows("LSTM", *sweep.CASES["LSTM"][0])


@pytest.mark.parametrize("kind,field,extra", [
    ("SoftmaxWithLoss", "softmax_param", ""), ("InfogainLoss", "infogain_loss_param", ' bottom: "h"'),
    ("Accuracy", "accuracy_param", "")])
def test_classifiers_share_caffes_class_axis_setup(kind: str, field: str, extra: str) -> None:
    """One set-up (loss.class_positions) for the three classifiers over a class axis: the axis is checked and
    canonicalised, and bottom 1 must hold one label per position outside it."""
    from vggproto.errors import NetError
    from vggproto.net.interpreter import Net

    def net(axis: int, labels: int) -> str:
        return ('layer { name: "x" type: "Input" top: "x" top: "y" top: "h" input_param { shape { dim: 2 dim: 3 '
                f'dim: 4 }} shape {{ dim: 2 dim: {labels} }} shape {{ dim: 4 dim: 4 }} }} }}\n'
                f'layer {{ name: "l" type: "{kind}" bottom: "x" bottom: "y"{extra} top: "t" '
                f'{field} {{ axis: {axis} }} }}\n')
    assert Net(net(-1, 3)).layer_dict["l"].outer == 6   # axis 2 of (2, 3, 4): 2 x 3 positions, 4 classes
    assert Net(net(-1, 3)).layer_dict["l"].classes == 4
    with pytest.raises(NetError, match=rf"{field}.axis: 3 is out of range for the 3-D bottom"):
        Net(net(3, 3))
    with pytest.raises(NetError, match=r"the label bottom has shape \(2, 5\) \(10 labels\).*needs 6"):
        Net(net(2, 5))
