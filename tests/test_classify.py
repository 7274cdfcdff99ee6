"""``vggproto classify``: preprocessing, sorted top-k probabilities, class names."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch
from click.testing import CliRunner
from eval_helpers import mini_deploy, write_model

from vggproto.cli import main
from vggproto.errors import DataError
from vggproto.evaluation.classify import class_names, classify, synset_words
from vggproto.net.interpreter import Net

MEAN = np.float32([103.939, 116.779, 123.68])


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("photo")
    path = tmp / "chelsea.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.chelsea(), cv2.COLOR_RGB2BGR))   # 300 x 451 cat
    return path


def test_synset_words_ship_with_the_package():
    words = synset_words()
    assert len(words) == 1000 and len(set(words)) == 1000
    assert words[0] == "n01440764 tench, Tinca tinca"
    assert words[281].startswith("n02123045 tabby")
    assert class_names(1000) == words and class_names(3) == ["class 0", "class 1", "class 2"]


def test_classify_a_photo_returns_sorted_probabilities(photo, tmp_path):
    model, weights = write_model(tmp_path, mini_deploy(classes=8), seed=5, gain=0.6)
    top = classify([str(photo)], model, weights, top=3)[0]
    probs = [p.probability for p in top]
    assert len(top) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-9
    everything = classify([str(photo), str(photo)], model, weights, top=8)
    assert sum(p.probability for p in everything[0]) == pytest.approx(1.0)
    assert [p.index for p in everything[0][:3]] == [p.index for p in top]
    # reference: the paper's Q = 256 (smallest side, cv2), centre 224 crop, mean pixel, the deploy net's prob
    for q, got in ((256, everything[0]), (300, classify([str(photo)], model, weights, top=8, scale=300)[0])):
        prob = _reference(photo, model, weights, q)
        for p in got:
            assert p.probability == pytest.approx(float(prob[p.index]), rel=1e-4, abs=1e-7)
            assert p.name == f"class {p.index}"
    at_224 = _reference(photo, model, weights, 224)   # the old default (Q = crop) gives other probabilities
    assert max(abs(p.probability - float(at_224[p.index])) for p in everything[0]) > 1e-4


def _reference(photo, model, weights, q: int) -> np.ndarray:
    img = cv2.imread(str(photo))
    h, w = img.shape[:2]
    size = (q, round(h * q / w)) if w < h else (round(w * q / h), q)
    resized = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    y0, x0 = (resized.shape[0] - 224) // 2, (resized.shape[1] - 224) // 2
    crop = (resized[y0:y0 + 224, x0:x0 + 224] - MEAN).transpose(2, 0, 1)[None]
    with torch.no_grad():
        return Net(str(model), str(weights)).forward(data=torch.from_numpy(np.ascontiguousarray(crop)))["prob"][0]


def test_labels_file_and_errors(photo, tmp_path):
    model, weights = write_model(tmp_path, mini_deploy(classes=3), seed=6)
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nfish\n")
    names = {p.name for p in classify([str(photo)], model, weights, top=3, labels=labels)[0]}
    assert names == {"cat", "dog", "fish"}
    labels.write_text("cat\n")
    with pytest.raises(DataError, match="names 1 classes but the net has 3"):
        classify([str(photo)], model, weights, labels=labels)
    with pytest.raises(DataError, match="smaller than the crop 224"):
        classify([str(photo)], model, weights, scale=100)


def test_cli_classify(photo, tmp_path):
    model, weights = write_model(tmp_path, mini_deploy(classes=1000, fc=4), seed=7)
    result = CliRunner().invoke(main, ["classify", str(photo), "--model", str(model), "--weights", str(weights),
                                       "--top", "2"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == str(photo) and lines[1].startswith("  1. ") and lines[2].startswith("  2. ")
    assert lines[1].split("  ", 2)[-1] in synset_words()
    helped = CliRunner().invoke(main, ["classify", "--help"], terminal_width=200).output
    assert "the paper's Q = 256 for a 224 input" in " ".join(helped.split())
