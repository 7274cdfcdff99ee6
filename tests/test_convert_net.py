"""vggproto convert with a net: --model fitting and errors, fc<->conv on the dense net, OpenCV and ONNX checks.

Nets are the generator's VGG-16 deploy/dense nets with every width divided by 32 (fc8 keeps 1000 classes), and
the weights come from vggproto.weights.official_like at the same divisor, i.e. the official file layout.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vggproto.caffe.prototxt import write_net
from vggproto.cli import main
from vggproto.convert.convert import convert
from vggproto.errors import VGGProtoError, WeightsError
from vggproto.net.interpreter import Net
from vggproto.vgg.generate import build_net
from vggproto.weights.caffemodel import read_weights
from vggproto.weights.official_like import write_official_like

DIVISOR = 32


def _small_net(kind: str, path: Path, batch: int = 1) -> Path:
    net = build_net("D", kind)
    for layer in net.layer:
        if layer.type == "Convolution" and layer.convolution_param.num_output != 1000:
            layer.convolution_param.num_output //= DIVISOR
        if layer.type == "InnerProduct" and layer.inner_product_param.num_output != 1000:
            layer.inner_product_param.num_output //= DIVISOR
        if layer.type == "Input":
            layer.input_param.shape[0].dim[0] = batch
    write_net(net, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert_net")
    official = root / "vgg16.caffemodel"
    write_official_like(official, 16, seed=5, width_divisor=DIVISOR)
    return {"official": official, "deploy": _small_net("deploy", root / "deploy.prototxt"),
            "dense": _small_net("dense", root / "dense.prototxt"), "root": root}


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    import cv2
    import skimage.data
    rgb = cv2.resize(skimage.data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)
    bgr = rgb[..., ::-1].astype(np.float32) - np.array([103.939, 116.779, 123.68], np.float32)
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))[None]


@pytest.fixture(scope="module")
def logits(files, photo):
    """fc8 of the deploy net with the official-layout weights, by the interpreter."""
    net = Net(files["deploy"], files["official"])
    with torch.no_grad():
        net(data=torch.from_numpy(photo))
    return net.blobs["fc8"].numpy().copy()


def test_model_gives_the_nets_shapes_order_and_structure(files, tmp_path):
    result = convert(files["official"], tmp_path / "w.caffemodel", model=files["deploy"])
    assert result.ignored == [] and result.missing == []
    net = Net(files["deploy"])
    assert list(result.weights) == list(net.params)
    for layer, params in net.params.items():
        assert [b.shape for b in result.weights[layer]] == [tuple(p.shape) for p in params]
    from vggproto.weights.caffemodel import read_caffemodel
    structure, weights = read_caffemodel(tmp_path / "w.caffemodel")
    assert [layer.name for layer in structure.layer][:3] == ["input", "conv1_1", "relu1_1"]
    raw = read_weights(files["official"])
    assert all(a.tobytes() == b.tobytes() for layer in raw for a, b in zip(raw[layer], weights[layer]))


def test_converted_caffemodel_gives_the_interpreters_outputs_in_opencv(files, photo, logits, tmp_path):
    cv2 = pytest.importorskip("cv2")
    convert(files["official"], tmp_path / "w.pt")
    convert(tmp_path / "w.pt", tmp_path / "w.caffemodel", model=files["deploy"])
    net = cv2.dnn.readNetFromCaffe(str(files["deploy"]), str(tmp_path / "w.caffemodel"))
    net.setInput(photo)
    theirs = net.forward("fc8")
    np.testing.assert_allclose(theirs, logits, rtol=1e-5, atol=1e-5 * np.abs(logits).max())


def test_fc_to_conv_runs_the_dense_net_to_the_same_scores(files, photo, logits, tmp_path):
    result = convert(files["official"], tmp_path / "dense.h5", model=files["dense"], fc_to_conv_=True)
    assert result.weights["fc6-conv"][0].shape == (4096 // DIVISOR, 512 // DIVISOR, 7, 7)
    dense = Net(files["dense"], tmp_path / "dense.h5")
    with torch.no_grad():
        dense(data=torch.from_numpy(photo))
    scores = dense.blobs["fc8-conv"].numpy()
    assert scores.shape == (1, 1000, 1, 1)
    np.testing.assert_allclose(scores[:, :, 0, 0], logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    back = convert(tmp_path / "dense.h5", tmp_path / "fc.caffemodel", model=files["deploy"], conv_to_fc_=True)
    raw = read_weights(files["official"])
    assert all(a.tobytes() == b.tobytes() for layer in raw for a, b in zip(raw[layer], back.weights[layer]))


def test_weights_that_do_not_fit_list_every_layer_and_both_shapes(files, tmp_path):
    other = _small_net("deploy", tmp_path / "wide.prototxt")
    text = other.read_text().replace("num_output: 2\n", "num_output: 3\n", 1)  # conv1_1 64/32 -> 3
    other.write_text(text)
    with pytest.raises(WeightsError) as info:
        convert(files["official"], tmp_path / "x.pt", model=other)
    message = str(info.value)
    assert "conv1_1 blob 0: file 2x3x3x3 vs net 3x3x3x3" in message
    assert "conv1_2 blob 0: file 2x2x3x3 vs net 2x3x3x3" in message
    assert not (tmp_path / "x.pt").exists()


def test_missing_layers_fail_unless_allowed(files, tmp_path):
    renamed = tmp_path / "renamed.prototxt"
    renamed.write_text(files["deploy"].read_text().replace('name: "fc8"', 'name: "fc8-new"'))
    runner = CliRunner()
    result = runner.invoke(main, ["convert", str(files["official"]), str(tmp_path / "a.pt"), "--model", str(renamed)])
    assert result.exit_code == 1 and "fc8-new" in result.output and "--allow-missing" in result.output
    result = runner.invoke(main, ["convert", str(files["official"]), str(tmp_path / "a.pt"), "--model", str(renamed),
                                  "--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "ignored source layers: fc8" in result.output and "left out (no weights): fc8-new" in result.output
    assert "15 layers with weights" in result.output


def test_onnx_export_matches_the_interpreter_with_a_dynamic_batch(files, photo, logits, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    convert(files["official"], tmp_path / "vgg.onnx", model=files["deploy"])
    model = onnx.load(str(tmp_path / "vgg.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = onnxruntime.InferenceSession(str(tmp_path / "vgg.onnx"), providers=["CPUExecutionProvider"])
    batch = np.concatenate([photo, photo[:, :, ::-1]])  # two images, a batch size the prototxt does not have
    prob = session.run(["prob"], {"data": batch})[0]
    expected = torch.softmax(torch.from_numpy(logits), 1).numpy()
    np.testing.assert_allclose(prob[:1], expected, rtol=1e-4, atol=1e-6)
    assert prob.shape == (2, 1000)


def test_onnx_mismatch_writes_nothing(files, tmp_path):
    from vggproto.convert.convert import load_caffe_weights
    from vggproto.convert.onnx import export_onnx
    weights, _, _ = load_caffe_weights(files["official"])
    with pytest.raises(VGGProtoError, match="differs from the interpreter.*not written"):
        export_onnx(files["deploy"], weights, tmp_path / "bad.onnx", tolerance=-1.0)
    assert not (tmp_path / "bad.onnx").exists()
