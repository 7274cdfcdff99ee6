"""``--engine`` on every inference command: torch and onnxruntime give the same results; ``time-inference
--json``; ``--engine onnxruntime`` on a net it cannot run is one error line."""
from __future__ import annotations

import json
import logging
import re

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from eval_helpers import mini_deploy, write_images, write_model
from test_engine import SSD, _net
from test_localize import _save

from vggproto.cli import main

ENGINES = ("torch", "onnxruntime")


def _numbers(text: str) -> np.ndarray:
    return np.array([float(x) for x in re.findall(r"-?\d+\.\d+", text)])


def _both(args: list[str]) -> list[str]:
    """The command's output under each engine (each must succeed)."""
    outputs = []
    for engine in ENGINES:
        result = CliRunner().invoke(main, [*args, "--engine", engine])
        assert result.exit_code == 0, (engine, result.output)
        outputs.append(result.output)
    return outputs


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mini")
    model, weights = write_model(tmp, mini_deploy(classes=5, height=32, width=32, fc=6), seed=2)
    return model, weights, write_images(tmp, [(40, 48), (36, 36), (50, 40)])


def test_classify_and_evaluate_and_extract_accept_engine(mini, tmp_path):
    model, weights, images = mini
    common = ["--model", str(model), "--weights", str(weights)]
    first = images.read_text().split()[0]
    torch_out, ort_out = _both(["classify", first, *common, "--top", "3", "--labels", str(_labels(tmp_path))])
    np.testing.assert_allclose(_numbers(torch_out), _numbers(ort_out), atol=2e-4)
    results = []
    for engine in ENGINES:
        out = tmp_path / f"{engine}.json"
        result = CliRunner().invoke(main, ["evaluate", *common, "--list", str(images), "--scales", "32,40",
                                           "--workers", "0", "--json", str(out), "--engine", engine])
        assert result.exit_code == 0, result.output
        results.append(json.loads(out.read_text()))
    assert results[0]["top1_error"] == results[1]["top1_error"] and results[0]["images"] == 3
    features = []
    for engine in ENGINES:
        out = tmp_path / f"{engine}.h5"
        result = CliRunner().invoke(main, ["extract", *common, "--list", str(images), "--scales", "32", "--blob",
                                           "fc7", "--workers", "0", "--out", str(out), "--engine", engine])
        assert result.exit_code == 0, result.output
        from vggproto.evaluation.extract import read_features
        features.append(read_features(out).features)
    np.testing.assert_allclose(features[0], features[1], atol=1e-5)


def _labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"class{i}\n" for i in range(5)))
    return path


def test_detect_runs_the_split_engine(tmp_path):
    path, weights = _net(tmp_path, SSD, "ssd")
    from vggproto.caffe.prototxt import read_net
    from vggproto.weights.caffemodel import write_weights
    caffemodel = tmp_path / "ssd.caffemodel"
    write_weights(str(caffemodel), weights, read_net(str(path)))
    image = tmp_path / "street.png"
    cv2.imwrite(str(image), np.random.default_rng(1).integers(0, 256, (24, 32, 3)).astype(np.uint8))
    torch_out, ort_out = _both(["detect", str(image), "--model", str(path), "--weights", str(caffemodel),
                                "--threshold", "0.2", "--mean-value", "127.5", "--input-scale", "0.0078"])
    assert torch_out.strip()                                      # boxes found, so the comparison means something
    np.testing.assert_allclose(_numbers(torch_out), _numbers(ort_out), atol=2e-3)


def test_test_command_feeds_the_graph_from_its_data_layers(solver_workdir, caplog):
    solver_workdir()
    caplog.set_level(logging.INFO, logger="vggproto")
    for engine in ENGINES:
        caplog.clear()
        result = CliRunner().invoke(main, ["test", "--model", "train_val.prototxt", "--weights", "init.caffemodel",
                                           "--iterations", "2", "--engine", engine])
        assert result.exit_code == 0, result.output
        # the golden numbers of tests/test_solver_cli.py (Caffe's own run), whichever engine
        assert "accuracy = 0.25" in caplog.messages and "Loss: 1.76763" in caplog.messages


def test_localize_accepts_engine(tmp_path):
    cls = _save(tmp_path, "cls", 3, [0.0, 1.0, 2.0])
    loc = _save(tmp_path, "loc", 4, [0.5, 0.5, 0.5, 0.25])
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((40, 80, 3), np.uint8))
    torch_out, ort_out = _both(["localize", "--model", loc[0], "--weights", loc[1], "--cls-model", cls[0],
                                "--cls-weights", cls[1], "--scales", "32", "--mean-value", "0",
                                str(tmp_path / "a.png")])
    assert torch_out == ort_out and "class 2" in torch_out


def test_time_inference_json_last_line(tmp_path):
    path, _ = _net(tmp_path)
    for engine, kind in (("auto", "onnxruntime ncnn"), ("torch", "torch"), ("onnxruntime", "onnxruntime"),
                         ("ncnn", "ncnn")):
        result = CliRunner().invoke(main, ["time-inference", str(path), "--batch", "3", "--iterations", "2",
                                           "--engine", engine, "--json"])
        assert result.exit_code == 0, result.output
        last = json.loads(result.output.strip().splitlines()[-1])
        assert set(last) == {"engine", "batch", "threads", "ms"}
        assert last["engine"] in kind.split() and last["batch"] == 3 and last["threads"] >= 1 and last["ms"] > 0


@pytest.mark.parametrize("engine", ["onnxruntime", "ncnn"])
def test_engine_error_is_one_line(tmp_path, engine):
    path = tmp_path / "loss.prototxt"
    path.write_text('name: "l"\nlayer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 '
                    'dim: 3 } shape { dim: 2 } } }\nlayer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" '
                    'bottom: "y" top: "loss" }\n')
    result = CliRunner().invoke(main, ["time-inference", str(path), "--engine", engine])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"vggproto: error: --engine {engine}: layer 'loss' (SoftmaxWithLoss) cannot run in {engine}: a loss layer")
    bad = CliRunner().invoke(main, ["time-inference", str(path), "--engine", "tensorrt"])
    assert bad.exit_code == 2 and "'tensorrt' is not one of" in bad.output
