"""Localisation (Appendix A): the generator's --task localization nets, PCR's gradient on the right outputs only,
the error arithmetic, and box prediction (centre crop, dense windows, merging, several nets) with nets whose
output is known by construction."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vggproto.cli import main
from vggproto.errors import VGGProtoError
from vggproto.localize.predict import (
    MAX_MERGE_BOXES,
    Detection,
    LocalizeOptions,
    LocErrorCount,
    detection_correct,
    load_loc_model,
    localize_image,
)
from vggproto.net.interpreter import Net
from vggproto.vgg.generate import build_net, build_solver, count_params, infer_shapes

# ------------------------------------------------------------------------------------------------ generator

@pytest.mark.parametrize("regression,width", [("scr", 4), ("pcr", 4000)])
def test_localization_nets(regression, width):
    deploy = build_net("D", "deploy", task="localization", regression=regression)
    names = [layer.name for layer in deploy.layer]
    assert names[-1] == "fc8-loc" and "prob" not in names and "fc8" not in names
    shapes, counts = infer_shapes(deploy)
    assert shapes["fc8-loc"] == (10, width)
    # Table 2's D minus the classification layer plus the box layer
    assert count_params(deploy) == 138_357_544 - (4096 * 1000 + 1000) + (4096 * width + width)
    dense, _ = infer_shapes(build_net("D", "dense", task="localization", regression=regression),
                            input_shape=(1, 3, 256, 256))
    assert dense["fc8-loc-conv"] == (1, width, 2, 2)
    train = build_net("D", "train_val", task="localization", regression=regression)
    layers = {layer.name: layer for layer in train.layer}
    tops = ["data", "label", "box"] if regression == "pcr" else ["data", "box"]
    assert train.layer[0].type == "BoxData" and list(train.layer[0].top) == tops
    assert train.layer[0].image_data_param.source == "data/loc_train.txt"
    loss = layers["loss"]
    assert loss.type == "EuclideanLoss" and list(loss.bottom) == (
        ["class_box", "box"] if regression == "pcr" else ["fc8-loc", "box"])
    if regression == "pcr":
        assert layers["class_box"].type == "ClassBox" and list(layers["class_box"].bottom) == ["fc8-loc", "label"]
    assert not any(layer.param for layer in train.layer)          # --finetune all: nothing frozen


def test_finetune_fc_and_solver():
    train = build_net("D", "train_val", task="localization", regression="pcr", finetune="fc", num_classes=10)
    for layer in train.layer:
        frozen = [(p.lr_mult, p.decay_mult) for p in layer.param]
        assert frozen == ([(0, 0), (0, 0)] if layer.type == "Convolution" else []), layer.name
    assert [l.inner_product_param.num_output for l in train.layer if l.type == "InnerProduct"] == [4096, 4096, 40]
    solver = build_solver("D", task="localization", regression="pcr", finetune="fc", scale="384")
    assert solver.base_lr == pytest.approx(1e-3) and solver.net == "nets/D_loc_pcr_fc_train_val.prototxt"
    assert list(solver.weights) == ["snapshots/D_S384_iter_150000.caffemodel"]
    assert list(build_solver("D", task="localization").weights) == ["snapshots/D_iter_370000.caffemodel"]
    with pytest.raises(VGGProtoError, match="regression"):
        build_net("D", "deploy", task="localization", regression="both")


def test_cli_generate_localization(tmp_path):
    result = CliRunner().invoke(main, ["generate", "--config", "A", "--task", "localization", "--regression",
                                       "pcr", "--finetune", "fc", "--out-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "nets").iterdir()) == [
        "A_loc_pcr_fc_dense.prototxt", "A_loc_pcr_fc_deploy.prototxt", "A_loc_pcr_fc_train_val.prototxt"]
    assert "--finetune fc --regression pcr --task localization" in (tmp_path / "solvers" /
                                                                     "A_loc_pcr_fc.prototxt").read_text()


# ------------------------------------------------------------------------------------------------ PCR gradient

PCR_NET = """
layer { name: "in" type: "Input" top: "pred" top: "label" top: "box"
        input_param { shape { dim: 3 dim: 12 } shape { dim: 3 } shape { dim: 3 dim: 4 } } }
layer { name: "class_box" type: "ClassBox" bottom: "pred" bottom: "label" top: "class_box" }
layer { name: "loss" type: "EuclideanLoss" bottom: "class_box" bottom: "box" top: "loss" }
"""


def test_pcr_gradient_only_on_the_ground_truth_class_outputs():
    net = Net(PCR_NET.encode(), phase="TRAIN")
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 12, generator=gen, requires_grad=True)
    label = torch.tensor([2.0, 0.0, 1.0])
    box = torch.rand(3, 4, generator=gen)
    net.forward(pred=pred, label=label, box=box)
    net.loss.backward()
    grouped = pred.detach().reshape(3, 3, 4)
    selected = grouped[torch.arange(3), label.long()]
    assert float(net.loss.detach()) == pytest.approx(float(((selected - box) ** 2).sum() / 3 / 2), rel=1e-6)
    expected = torch.zeros(3, 3, 4)
    expected[torch.arange(3), label.long()] = (selected - box) / 3          # Caffe: diff / num
    assert torch.equal(pred.grad.reshape(3, 3, 4) == 0, expected == 0)      # exactly zero elsewhere
    assert torch.allclose(pred.grad.reshape(3, 3, 4), expected, atol=1e-7)
    with pytest.raises(Exception, match="outside the 3 classes"):
        net.forward(pred=pred, label=torch.tensor([3.0, 0, 0]), box=box)


# ------------------------------------------------------------------------------------------------ metric

def test_error_arithmetic():
    gt = [[10, 10, 50, 50], [60, 60, 90, 90]]
    good = Detection(3, "c", 0.9, [12, 12, 52, 52])           # IoU 1296/1904 = 0.68 with the first gt box
    edge = Detection(3, "c", 0.9, [30, 10, 70, 50])           # IoU exactly 1/3 with the first box
    assert detection_correct([good], 3, gt) and not detection_correct([edge], 3, gt)
    assert not detection_correct([Detection(4, "d", 0.9, good.box)], 3, gt)   # wrong class
    half = Detection(3, "c", 0.9, [10, 10, 50, 30])                          # IoU exactly 0.5: not above
    assert not detection_correct([half], 3, gt)
    others = [Detection(k, "x", 0.1, good.box) for k in (0, 1, 2, 5)]
    assert detection_correct(others + [good], 3, gt, top=5) and not detection_correct(others + [good], 3, gt, top=4)
    count = LocErrorCount()
    count.add(others + [good], good, 3, gt)          # right, right
    count.add(others + [edge], good, 3, gt)          # wrong, right
    count.add([good], edge, 3, gt)                   # right, wrong
    count.add([edge], edge, 3, gt)                   # wrong, wrong
    assert count.errors() == {"localization_error": 50.0, "gt_class_localization_error": 50.0}


# ------------------------------------------------------------------------------------------------ prediction

def _tiny(kind: str, outputs: int, size: int = 32) -> str:
    """A conv + pool + FC deploy net (stride 2, input 1x3xSxS); FC weights zero so the output is its bias."""
    return f"""
name: "tiny_{kind}"
layer {{ name: "input" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
         convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 }} }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
         pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param {{ num_output: {outputs} }} }}
""" + ('layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n' if kind == "cls" else "")


def _save(tmp_path, kind: str, outputs: int, bias) -> tuple[str, str]:
    model = tmp_path / f"{kind}{outputs}.prototxt"
    model.write_text(_tiny(kind, outputs))
    net = Net(str(model), seed=0)
    with torch.no_grad():
        net.params["fc"][0].zero_()
        net.params["fc"][1].copy_(torch.tensor(bias, dtype=torch.float32))
    weights = tmp_path / f"{kind}{outputs}.caffemodel"
    net.save_weights(str(weights))
    return str(model), str(weights)


@pytest.fixture()
def tiny_models(tmp_path):
    from vggproto.evaluation.evaluate import load_model
    cls = load_model(*_save(tmp_path, "cls", 3, [0.0, 1.0, 2.0]))            # class 2, then 1, then 0
    scr = load_loc_model(*_save(tmp_path, "loc", 4, [0.5, 0.5, 0.5, 0.25]))
    pcr = load_loc_model(*_save(tmp_path, "loc", 12, [0.5, 0.5, 1, 1, 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25]))
    return cls, scr, pcr


def test_center_mode_boxes(tiny_models):
    cls, scr, pcr = tiny_models
    assert (scr.stride, scr.crop_size, pcr.outputs) == (2, 32, 12)
    img = np.zeros((40, 80, 3), np.uint8)         # Q = 32: rescaled to 32x64 (factor 0.8), centre crop x0 = 16
    dets = localize_image(img, [scr], [cls], LocalizeOptions("center", (32,), top=2))
    assert [d.label for d in dets] == [2, 1] and dets[0].score > dets[1].score
    # SCR (0.5, 0.5, 0.5, 0.25) of a 32 crop: corners (8, 12, 24, 20) + (16, 0), then / 0.8
    assert dets[0].box == pytest.approx([30, 15, 50, 25]) and dets[1].box == dets[0].box
    dets = localize_image(img, [pcr], [cls], LocalizeOptions("center", (32,), top=3))
    boxes = {d.label: d.box for d in dets}
    assert boxes[0] == pytest.approx([20, 0, 60, 40])                 # (0.5, 0.5, 1, 1): the whole crop
    assert boxes[1] == pytest.approx([20, 10, 40, 30])                # (0.25, 0.5, 0.5, 0.5)
    assert boxes[2] == pytest.approx([35, 15, 45, 25])                # (0.5, 0.5, 0.25, 0.25)
    gt_only = localize_image(img, [pcr], [cls], LocalizeOptions("center", (32,)), classes=[1])
    assert [d.label for d in gt_only] == [1] and gt_only[0].box == boxes[1]


def test_dense_mode_merges_every_window(tiny_models):
    cls, scr, _ = tiny_models
    img = np.zeros((32, 40, 3), np.uint8)          # Q = 32 keeps the size; windows every 2 px: 1 x 5 positions
    dets = localize_image(img, [scr], [cls], LocalizeOptions("dense", (32,), top=1, merge_threshold=100))
    # every window predicts its own centre box (x0 + 8 .. x0 + 24, 12 .. 20), x0 = 0, 2, 4, 6, 8 -> mean x0 = 4
    assert dets[0].windows == 5 and dets[0].box == pytest.approx([12, 12, 28, 20])
    split = localize_image(img, [scr], [cls], LocalizeOptions("dense", (32,), top=1, merge_threshold=0.0))
    assert split[0].windows == 1
    # two nets (or scales): the union of their boxes is merged
    both = localize_image(img, [scr, scr], [cls], LocalizeOptions("dense", (32, 32), top=1, merge_threshold=100))
    assert both[0].windows == 20 and both[0].box == pytest.approx([12, 12, 28, 20])
    # a stride-2 net on a large image: only the best-scored MAX_MERGE_BOXES predictions are merged (bounded memory)
    many = localize_image(np.zeros((120, 200, 3), np.uint8), [scr], [cls],
                          LocalizeOptions("dense", (120,), top=1, merge_threshold=100))
    assert many[0].windows == MAX_MERGE_BOXES < 53 * 93


def test_cli_localize(tmp_path):
    cls = _save(tmp_path, "cls", 3, [0.0, 1.0, 2.0])
    loc = _save(tmp_path, "loc", 4, [0.5, 0.5, 0.5, 0.25])
    import cv2
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 80, 3), np.uint8))
    (tmp_path / "list.txt").write_text(f"{tmp_path / 'a.png'} 2 30 15 50 25\n")
    args = ["localize", "--model", loc[0], "--weights", loc[1], "--cls-model", cls[0], "--cls-weights", cls[1],
            "--scales", "32", "--mean-value", "0", "--list", str(tmp_path / "list.txt"),
            "--json", str(tmp_path / "out.json"), "--draw", str(tmp_path / "drawn")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["localization_error"] == 0 and summary["gt_class_localization_error"] == 0
    assert summary["results"][0]["detections"][0]["box"] == [30, 15, 50, 25]
    assert cv2.imread(str(tmp_path / "drawn" / "a.png")).shape == (40, 80, 3)
    dense = CliRunner().invoke(main, args[:13] + ["--mode", "dense", "--top", "2", str(tmp_path / "a.png")])
    assert dense.exit_code == 0, dense.output
    assert "a.png: class 2 " in dense.output and ", class 1 " in dense.output and "error" not in dense.output
    bad = CliRunner().invoke(main, args[:9] + ["--model", loc[0]])
    assert bad.exit_code == 1 and "one --weights per --model" in bad.output
