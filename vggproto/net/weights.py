"""Caffe's weight copying rules for :class:`vggproto.net.interpreter.Net` (CopyTrainedLayersFrom, ShareTrainedLayersWith).

Kept apart from the net so the matching rules (by layer name, equal blob count, exact or right-aligned legacy
shape) live in one place.  File reading/writing is :mod:`vggproto.weights.caffemodel`.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from vggproto.errors import WeightsError

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

log = logging.getLogger("vggproto.net.interpreter")


def split_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Caffe's ``--weights a,b``: comma-separated (or a list of) files, applied in order."""
    if isinstance(paths, (str, os.PathLike)):
        return [p for p in os.fspath(paths).split(",") if p]
    return [os.fspath(p) for p in paths]


def _fmt(shape: Sequence[int]) -> str:
    dims = " ".join(str(int(d)) for d in shape)
    return f"{dims} ({int(np.prod(shape, dtype=np.int64))})"


def _where(net: "Net", layer: str) -> str:
    line = net.layer_lines.get(layer)
    return f"{net.path or '<text>'}:{line}: " if line is not None else ""


def copy_weights(net: "Net", path: str) -> None:
    """Caffe: src/caffe/net.cpp CopyTrainedLayersFrom — copy every same-named layer's blobs from ``path``."""
    from vggproto.weights.caffemodel import fit_blob, read_weights
    weights = read_weights(path)
    plan, problems = [], []
    for name, arrays in weights.items():
        layer = net.layer_dict.get(name)
        if layer is None:
            log.info("Ignoring source layer %s", name)
            continue
        if len(arrays) != len(layer.blobs):
            problems.append(f"layer '{name}': the file has {len(arrays)} blobs, the net expects {len(layer.blobs)}")
            continue
        for index, (array, target) in enumerate(zip(arrays, layer.blobs)):
            fitted = fit_blob(np.asarray(array), target.shape)
            if fitted is None:
                problems.append(f"{_where(net, name)}layer '{name}' ({layer.spec.type}) param {index}: source shape "
                                f"{_fmt(array.shape)} vs target shape {_fmt(target.shape)}")
            else:
                plan.append((target, fitted))
    if problems:
        raise WeightsError(f"{path}: cannot copy weights; shape mismatch: " + "; ".join(problems)
                           + ". To learn a layer's parameters from scratch rather than copying them, rename it.")
    with torch.no_grad():
        for target, array in plan:
            target.copy_(torch.from_numpy(np.array(array, dtype=np.float32)).reshape(target.shape).to(target.dtype))
    log.info("Copied weights of %d blobs from %s", len(plan), path)


def net_weights(net: "Net") -> dict[str, list[np.ndarray]]:
    """Every layer's blobs as float32 numpy arrays, in layer and blob order (what a caffemodel holds)."""
    return {name: [b.detach().to("cpu", torch.float32).numpy() for b in layer.blobs]
            for name, layer in net.layer_dict.items() if len(layer.blobs)}


def net_diffs(net: "Net") -> dict[str, list[np.ndarray]]:
    """Every layer's blob diffs (the tensors' ``.grad``; zeros where none), laid out like :func:`net_weights`.
    After a solver step they hold the last update applied, as Caffe's diffs do after ApplyUpdate."""
    def diff(blob: torch.Tensor) -> np.ndarray:
        grad = blob.grad if blob.grad is not None else torch.zeros_like(blob)
        return grad.detach().to("cpu", torch.float32).numpy()
    return {name: [diff(b) for b in layer.blobs] for name, layer in net.layer_dict.items() if len(layer.blobs)}


def save_weights(net: "Net", path: str | os.PathLike, with_diff: bool = False) -> None:
    """Write a caffemodel (V2 layers with the net's definition) or Caffe HDF5 weights (``.h5``); ``with_diff``
    adds every blob's diff (Caffe's ``snapshot_diff``)."""
    from vggproto.weights.caffemodel import write_weights
    write_weights(path, net_weights(net), net.net_param, net_diffs(net) if with_diff else None)


def share_weights(net: "Net", other: "Net") -> None:
    """Caffe: src/caffe/net.cpp ShareTrainedLayersWith — same-named layers use ``other``'s parameter tensors."""
    for name, layer in net.layer_dict.items():
        source = other.layer_dict.get(name)
        if source is None or not len(layer.blobs):
            continue
        if len(source.blobs) != len(layer.blobs):
            raise WeightsError(f"cannot share weights of layer '{name}': {len(source.blobs)} blobs vs "
                               f"{len(layer.blobs)}")
        for index, (mine, theirs) in enumerate(zip(layer.blobs, source.blobs)):
            if mine.shape != theirs.shape:
                raise WeightsError(f"cannot share param {index} of layer '{name}': target shape "
                                   f"{_fmt(mine.shape)} vs source shape {_fmt(theirs.shape)}")
            layer.blobs[index] = theirs
