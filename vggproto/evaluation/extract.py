"""``vggproto extract``: the image descriptors of Appendix B of the paper, written to HDF5.

Per image and test scale Q: the net is applied densely (all weight layers as convolutions, :mod:`vggproto.net.dense`)
to the image rescaled to smallest side Q; the chosen blob (default ``fc7``, the 4096-D penultimate activations,
after ReLU) is globally average-pooled, then averaged with the descriptor of the horizontally flipped image.
Scales are aggregated by stacking (concatenation, D·|Q| dims) or averaging (D dims), and the result is
L2-normalised ("The resulting image descriptor is L2-normalised").  Output datasets: ``features`` (N×D float32),
``labels`` (N int64, -1 for a list of plain paths), ``paths`` (N strings), in list order; unreadable images
(``skip_bad``) are left out and named in the ``bad`` attribute (a JSON list).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from vggproto.caffe.files import atomic_path
from vggproto.errors import DataError, VGGProtoError
from vggproto.vgg.configs import DENSE_LAYER_NAMES, MEAN_BGR

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.evaluation.extract")
AGGREGATES: tuple[str, ...] = ("stack", "average")


@dataclass
class Features:
    """Descriptors in list order, with labels, image paths and the images that could not be read."""

    features: np.ndarray
    labels: np.ndarray
    paths: list[str]
    bad: list[str] = field(default_factory=list)


def resolve_blob(blob_shapes: dict, blob: str, where: str) -> str:
    """``blob`` in the dense net, or its dense name (``fc7`` -> ``fc7-conv`` in a generated ``_dense`` net)."""
    if blob in blob_shapes:
        return blob
    dense = DENSE_LAYER_NAMES.get(blob)
    if dense in blob_shapes:
        return dense
    raise VGGProtoError(f"{where}: no blob '{blob}' in the net; blobs: {', '.join(blob_shapes)}")


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def describe(net: Net, input_blob: str, blob: str, image: torch.Tensor) -> torch.Tensor:
    """Global average of ``blob`` over positions, averaged over the image and its horizontal flip: a D vector."""
    views = torch.stack([image, torch.flip(image, dims=[-1])])
    net.forward(**{input_blob: views})
    out = net.blobs[blob]
    pooled = out.mean(dim=(2, 3)) if out.dim() == 4 else out.reshape(out.shape[0], -1)
    return pooled.double().mean(dim=0)


def aggregate(per_scale: Sequence[np.ndarray], how: str) -> np.ndarray:
    """Scales stacked (concatenated) or averaged, then L2-normalised."""
    if how not in AGGREGATES:
        raise VGGProtoError(f"unknown --aggregate '{how}'; supported: {', '.join(AGGREGATES)}")
    joined = np.concatenate(per_scale) if how == "stack" else np.mean(per_scale, axis=0)
    return l2_normalise(joined)


def extract(model: str | os.PathLike, weights: str | os.PathLike, list_path: str, blob: str = "fc7",
            scales: Sequence[int] = (256, 384, 512), how: str = "average", root: str = "",
            mean: Sequence[float] = MEAN_BGR, device: str = "cpu", workers: int = 2, skip_bad: bool = False,
            progress: bool = True, input_scale: float = 1.0, engine: Callable | None = None) -> Features:
    """Appendix B descriptors of every image of a Caffe list file (see the module doc); ``engine`` puts the
    net on another inference engine (``vggproto.commands.engine_option.engine_hook``)."""
    from vggproto.data.progress import progress as counted
    from vggproto.data.sources import parse_list_file
    from vggproto.evaluation.views import ImageListDataset, image_loader
    from vggproto.net.dense import load_dense
    if how not in AGGREGATES:
        raise VGGProtoError(f"unknown --aggregate '{how}'; supported: {', '.join(AGGREGATES)}")
    if not scales or any(q <= 0 for q in scales):
        raise VGGProtoError(f"--scales must be positive integers, got {list(scales)}")
    net, dense = load_dense(model, weights, device)
    name = resolve_blob(net.blob_shapes, blob, os.fspath(model))
    if engine is not None:
        net = engine(net, (name,))
    entries = parse_list_file(list_path, labelled=False)   # descriptors need no labels
    dataset = ImageListDataset(entries, list_path, root, scales, mean, input_scale)
    rows, labels, paths, bad = [], [], [], []
    with torch.inference_mode():
        for index, label, views, error in counted(image_loader(dataset, workers), len(entries), "extract",
                                                  every=500, enabled=progress):
            if error:
                if not skip_bad:
                    raise DataError(f"{error} (use --skip-bad to leave unreadable images out)")
                log.warning("skipping bad image: %s", error)
                bad.append(error)
                continue
            per_scale = [describe(net, dense.input_blob, name, views[q].to(device)).cpu().numpy() for q in scales]
            rows.append(aggregate(per_scale, how))
            labels.append(label)
            paths.append(entries[index][0])
    if not rows:
        raise DataError(f"{list_path}: no readable image")
    return Features(np.stack(rows).astype(np.float32), np.asarray(labels, dtype=np.int64), paths, bad)


def write_features(path: str | os.PathLike, features: Features, attrs: dict | None = None) -> None:
    """HDF5 with ``features``, ``labels``, ``paths`` (UTF-8 strings) and the run's settings as attributes."""
    import h5py
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("features", data=features.features)
        f.create_dataset("labels", data=features.labels)
        f.create_dataset("paths", data=np.array(features.paths, dtype=object), dtype=h5py.string_dtype())
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        f.attrs["bad"] = json.dumps(features.bad)   # JSON list of "<list>:<line>: reason" strings


def read_features(path: str | os.PathLike) -> Features:
    """The datasets written by :func:`write_features`."""
    import h5py
    try:
        with h5py.File(path, "r") as f:
            paths = [p.decode() if isinstance(p, bytes) else str(p) for p in f["paths"][()]]
            return Features(f["features"][()], f["labels"][()], paths)
    except (OSError, KeyError) as exc:
        raise DataError(f"{path}: not a features file written by vggproto extract ({exc})") from None
