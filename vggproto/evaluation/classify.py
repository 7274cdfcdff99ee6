"""``vggproto classify``: top-k classes of single images with a deploy net (the release's preprocessing).

Each image is read as BGR 0-255 (``cv2.imread``), its smallest side rescaled to ``scale``, centre-cropped to the
input size and the mean pixel subtracted.  The default scale is the paper's test scale Q = 256 for the 224 crop
(torchvision's ``Resize(256)`` + ``CenterCrop(224)`` too), the same 256/224 ratio for nets of other input sizes.
The ILSVRC-2012 class names ship as ``vggproto/data/synset_words.txt`` (Caffe's ``synset_words.txt`` order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from vggproto.errors import DataError, VGGProtoError
from vggproto.vgg.configs import MEAN_BGR

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net


@dataclass
class Prediction:
    """One of an image's top-k classes."""

    index: int
    name: str
    probability: float


def synset_words() -> list[str]:
    """The 1000 ILSVRC-2012 class names in Caffe's order (``n01440764 tench, Tinca tinca`` first)."""
    text = resources.files("vggproto.data").joinpath("synset_words.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def class_names(classes: int, labels: str | os.PathLike | None = None) -> list[str]:
    """Names of ``classes`` classes: from ``labels`` (one per line), synset_words for 1000, else indices."""
    if labels is not None:
        try:
            with open(labels, encoding="utf-8") as f:
                names = [line.strip() for line in f.read().splitlines()]
        except OSError as exc:
            raise DataError(f"--labels '{labels}': {exc.strerror}") from None
        names = [n for n in names if n]
        if len(names) < classes:
            raise DataError(f"--labels '{labels}' names {len(names)} classes but the net has {classes} outputs")
        return names
    if classes == 1000:
        return synset_words()
    return [f"class {i}" for i in range(classes)]


def _read(path: str, scale: int, crop: int, mean: Sequence[float], input_scale: float) -> np.ndarray:
    from vggproto.data.sources import read_image
    from vggproto.evaluation.views import preprocess
    img = read_image(os.fspath(path), True, where=os.fspath(path))
    chw = preprocess(img, scale, mean, input_scale)
    if chw.shape[1] < crop or chw.shape[2] < crop:
        raise DataError(f"{path}: rescaled image {chw.shape[1]}x{chw.shape[2]} is smaller than the crop {crop}; "
                        f"use --scale >= {crop}")
    # Caffe: src/caffe/data_transformer.cpp — TEST phase centre crop at ((H - crop) / 2, (W - crop) / 2)
    y, x = (chw.shape[1] - crop) // 2, (chw.shape[2] - crop) // 2
    return chw[:, y:y + crop, x:x + crop]


#: the paper's test scale for its 224 x 224 crop (Sec. 3.2, Q = S = 256 for single-scale nets)
PAPER_Q, PAPER_CROP = 256, 224


def default_scale(crop: int) -> int:
    """Q for a net of input size ``crop`` when none is asked for: 256 for 224, the same ratio otherwise."""
    return round(crop * PAPER_Q / PAPER_CROP)


def load_classifier(model: str | os.PathLike, weights: str | os.PathLike,
                    device: str = "cpu") -> tuple[Net, str, str, int]:
    """``(net, input blob, score blob, input size)`` for a deploy net with weights."""
    from vggproto.net.dense import score_blob
    from vggproto.net.interpreter import Net
    net = Net(model, weights, phase="TEST")
    for p in net.parameters():
        p.requires_grad_(False)
    inputs = net.input_names
    if len(inputs) != 1 or len(net.blob_shapes[inputs[0]]) != 4:
        raise VGGProtoError(f"{model}: classify needs a net with one N x C x H x W Input, got {inputs or 'none'}")
    shape = net.blob_shapes[inputs[0]]
    if shape[2] != shape[3]:
        raise VGGProtoError(f"{model}: the input is {shape[2]}x{shape[3]}; classify crops square images")
    return net.to(device), inputs[0], score_blob(net), int(shape[2])


def classify(images: Sequence[str | os.PathLike], model: str | os.PathLike, weights: str | os.PathLike,
             top: int = 5, labels: str | os.PathLike | None = None, scale: int = 0,
             mean: Sequence[float] = MEAN_BGR, device: str = "cpu", batch: int = 10,
             input_scale: float = 1.0, engine: Callable | None = None) -> list[list[Prediction]]:
    """Top-``top`` predictions (highest probability first) for each image, rescaled to ``scale`` (0: the
    paper's Q, :func:`default_scale`) and centre-cropped; ``engine`` puts the net on another inference engine
    (``vggproto.commands.engine_option.engine_hook``)."""
    if top < 1:
        raise VGGProtoError("--top must be positive")
    net, input_blob, scores_name, crop = load_classifier(model, weights, device)
    if engine is not None:
        net = engine(net, (scores_name,))
    out: list[list[Prediction]] = []
    names: list[str] | None = None
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = np.stack([_read(p, scale or default_scale(crop), crop, mean, input_scale)
                              for p in images[start:start + batch]])
            net.forward(**{input_blob: torch.from_numpy(chunk).to(device)})
            scores = net.blobs[scores_name].reshape(chunk.shape[0], -1).double()
            probs = torch.softmax(scores, dim=1).cpu().numpy()
            if names is None:
                names = class_names(probs.shape[1], labels)
            for row in probs:
                order = np.argsort(-row, kind="stable")[:top]
                out.append([Prediction(int(i), names[i], float(row[i])) for i in order])
    return out
