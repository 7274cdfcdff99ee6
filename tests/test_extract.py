"""``vggproto extract`` (Appendix B descriptors) and ``vggproto svm`` (vggproto.evaluation.svm)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from eval_helpers import mini_deploy, write_images, write_model

from vggproto.cli import main
from vggproto.errors import DataError, VGGProtoError
from vggproto.evaluation.extract import extract, l2_normalise, read_features, resolve_blob, write_features
from vggproto.evaluation.views import preprocess
from vggproto.net.dense import load_dense

MEAN = (103.939, 116.779, 123.68)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    model, weights = write_model(tmp, mini_deploy(fc=6), seed=11, gain=0.8)
    images = write_images(tmp, [(224, 260), (250, 224), (230, 230)], labels=[2, 0, 1])
    return tmp, model, weights, images


def _reference(model, weights, path, scales, blob="fc7"):
    net, info = load_dense(str(model), str(weights))
    img = cv2.imread(str(path))
    out = []
    for q in scales:
        x = torch.from_numpy(preprocess(img, q, MEAN))[None]
        with torch.no_grad():
            net.forward(data=torch.cat([x, x.flip(-1)]))
        out.append(net.blobs[blob].double().numpy().mean(axis=(2, 3)).mean(axis=0))
    return out


def test_stack_and_average_shapes_norms_and_values(setup):
    _, model, weights, images = setup
    stacked = extract(model, weights, str(images), scales=(224, 256), how="stack", workers=0, progress=False)
    averaged = extract(model, weights, str(images), scales=(224, 256), how="average", workers=0, progress=False)
    assert stacked.features.shape == (3, 12) and averaged.features.shape == (3, 6)
    np.testing.assert_allclose(np.linalg.norm(stacked.features, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(averaged.features, axis=1), 1.0, rtol=1e-6)
    assert stacked.labels.tolist() == [2, 0, 1] and stacked.paths[1].endswith("img1.png")
    per_scale = _reference(model, weights, stacked.paths[0], (224, 256))
    np.testing.assert_allclose(stacked.features[0], l2_normalise(np.concatenate(per_scale)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(averaged.features[0], l2_normalise(np.mean(per_scale, axis=0)), rtol=1e-4,
                               atol=1e-6)


def test_other_blob_and_dense_names(setup, tmp_path):
    _, model, weights, images = setup
    feats = extract(model, weights, str(images), blob="pool5", scales=(224,), workers=0, progress=False)
    assert feats.features.shape == (3, 3)    # pool5 has the conv's 3 channels
    assert resolve_blob({"fc7-conv": (1, 4, 1, 1)}, "fc7", "net") == "fc7-conv"
    with pytest.raises(VGGProtoError, match="no blob 'fc9'"):
        extract(model, weights, str(images), blob="fc9", scales=(224,), workers=0, progress=False)
    with pytest.raises(VGGProtoError, match="--aggregate"):
        extract(model, weights, str(images), how="max", workers=0, progress=False)


def test_h5_round_trip_and_bad_images(setup, tmp_path):
    _, model, weights, images = setup
    listing = tmp_path / "list.txt"
    listing.write_text(images.read_text() + f"{tmp_path / 'nope.jpg'} 1\n")
    with pytest.raises(DataError, match=r"list.txt:4: file does not exist"):
        extract(model, weights, str(listing), scales=(224,), workers=0, progress=False)
    feats = extract(model, weights, str(listing), scales=(224,), workers=0, progress=False, skip_bad=True)
    assert feats.features.shape[0] == 3 and len(feats.bad) == 1
    out = tmp_path / "f.h5"
    write_features(out, feats, {"blob": "fc7"})
    back = read_features(out)
    np.testing.assert_array_equal(back.features, feats.features)
    assert back.labels.tolist() == feats.labels.tolist() and back.paths == feats.paths
    with h5py.File(out) as f:
        assert f["features"].dtype == np.float32 and json.loads(f.attrs["bad"])[0].startswith(str(listing))


def test_cli_extract(setup, tmp_path):
    _, model, weights, images = setup
    out = tmp_path / "cli.h5"
    result = CliRunner().invoke(main, ["extract", "--model", str(model), "--weights", str(weights), "--list",
                                       str(images), "--scales", "224", "--aggregate", "stack", "--workers", "0",
                                       "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "wrote 3 x 6 features" in result.output and read_features(out).features.shape == (3, 6)


def _separable_features(path: Path) -> None:
    """30 descriptors of 3 well-separated classes, 10 each, as ``vggproto extract`` writes them."""
    from vggproto.evaluation.extract import Features
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, size=(3, 16)) * 5
    labels = np.repeat(np.arange(3), 10)
    feats = l2_normalise(centres[labels] + rng.normal(0, 0.1, size=(30, 16)))
    write_features(path, Features(feats.astype(np.float32), labels, [f"{i}" for i in range(30)]))


def test_svm_metrics(tmp_path):
    pytest.importorskip("sklearn")
    from vggproto.evaluation import svm
    _separable_features(tmp_path / "train.h5")
    returned = svm.svm_files(tmp_path / "train.h5", json_path=tmp_path / "m.json")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics == returned
    assert metrics["accuracy"] == 1.0 and metrics["mean_average_precision"] == pytest.approx(1.0)
    assert metrics["protocol"] == "5-fold cross-validation"
    held_out = svm.svm_files(tmp_path / "train.h5", test=tmp_path / "train.h5")
    assert held_out["protocol"] == "train/test" and "mean class recall" in svm.format_metrics(held_out)
    # hand-made metrics: class 0 all right, class 1 half right -> mean class recall 0.75
    assert svm.mean_class_recall(np.array([0, 0, 1, 0]), np.array([0, 0, 1, 1])) == 0.75
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    # class 0 ranking: 0.9(T) 0.8(T) 0.6(F) 0.3(F) -> AP 1; class 1: 0.7(T) 0.4(T) ... -> AP 1
    assert svm.mean_average_precision(scores, np.array([0, 0, 1, 1]), np.array([0, 1])) == pytest.approx(1.0)
    scores[3] = [0.95, 0.05]   # class 0: F, T, T, F -> AP (1/2 + 2/3) / 2; class 1: T, F, F, T -> (1 + 2/4) / 2
    expected = ((1 / 2 + 2 / 3) / 2 + (1 + 2 / 4) / 2) / 2
    assert svm.mean_average_precision(scores, np.array([0, 0, 1, 1]), np.array([0, 1])) == pytest.approx(
        expected)


def test_svm_command(tmp_path):
    pytest.importorskip("sklearn")
    train = tmp_path / "train.h5"
    _separable_features(train)
    out = tmp_path / "m.json"
    result = CliRunner().invoke(main, ["svm", str(train), "--folds", "3", "--C", "0.5", "--json", str(out)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["accuracy", "100.00", "%"]
    assert lines[1].startswith("mean average precision") and lines[2].startswith("mean class recall")
    assert lines[3].split() == ["images", "30", "(3-fold", "cross-validation)"]
    assert json.loads(out.read_text())["protocol"] == "3-fold cross-validation"
    held_out = CliRunner().invoke(main, ["svm", str(train), "--test", str(train)])
    assert held_out.exit_code == 0 and "(train/test)" in held_out.output
    # the JSON output is checked before any work: an input as output, or a JPEG without --force, is refused
    same = CliRunner().invoke(main, ["svm", str(train), "--json", str(train)])
    assert same.exit_code == 1 and "also an input" in same.output and read_features(train).features.shape == (30, 16)
    jpeg = tmp_path / "photo.json"
    jpeg.write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 60)
    refused = CliRunner().invoke(main, ["svm", str(train), "--json", str(jpeg)])
    assert refused.exit_code == 1 and "--force" in refused.output and len(refused.output.strip().splitlines()) == 1
    assert CliRunner().invoke(main, ["svm", str(train), "--json", str(jpeg), "--force"]).exit_code == 0
    assert json.loads(jpeg.read_text())["images"] == 30
    # one image per class cannot be cross-validated: one line, exit 1
    from vggproto.evaluation.extract import Features
    write_features(tmp_path / "tiny.h5", Features(np.eye(2, dtype=np.float32), np.array([0, 1]), ["a", "b"]))
    tiny = CliRunner().invoke(main, ["svm", str(tmp_path / "tiny.h5")])
    assert tiny.exit_code == 1 and "at least 2 images per class" in tiny.output


def test_svm_without_sklearn_is_one_line(tmp_path, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "sklearn", None)     # `import sklearn` raises ImportError
    _separable_features(tmp_path / "train.h5")
    result = CliRunner().invoke(main, ["svm", str(tmp_path / "train.h5")])
    assert result.exit_code == 1
    assert result.output.strip() == "vggproto: error: vggproto svm needs scikit-learn: pip install 'vggproto[svm]'"


def test_a_list_of_plain_paths_needs_no_labels(setup, tmp_path):
    _, model, weights, images = setup
    plain = tmp_path / "plain.txt"
    plain.write_text("".join(line.rsplit(" ", 1)[0] + "\n" for line in images.read_text().splitlines()))
    labelled = extract(model, weights, str(images), scales=(224,), workers=0, progress=False)
    unlabelled = extract(model, weights, str(plain), scales=(224,), workers=0, progress=False)
    assert unlabelled.labels.tolist() == [-1, -1, -1] and unlabelled.paths == labelled.paths
    np.testing.assert_array_equal(unlabelled.features, labelled.features)
    out = tmp_path / "plain.h5"
    result = CliRunner().invoke(main, ["extract", "--model", str(model), "--weights", str(weights), "--list",
                                       str(plain), "--out", str(out), "--scales", "224", "--workers", "0"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["svm", str(out)])
    assert result.exit_code == 1 and "plain.h5: extracted from a list of plain image paths" in result.output
    mixed = tmp_path / "mixed.txt"
    mixed.write_text(images.read_text() + "photo.jpg\n")
    with pytest.raises(DataError, match=r"mixed.txt:4: expected '<image path> <integer label>'.*first line has a"):
        extract(model, weights, str(mixed), scales=(224,), workers=0, progress=False)
