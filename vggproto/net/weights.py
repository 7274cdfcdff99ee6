"""Caffe's weight copying for :class:`vggproto.net.interpreter.Net` (CopyTrainedLayersFrom, ShareTrainedLayersWith).

Kept apart from the net so that putting arrays into a Net's tensors is written once (:func:`load_arrays`); the
matching rules themselves (by layer name, equal blob count, exact or right-aligned legacy shape, every mismatch in
one error) are :func:`vggproto.weights.fit.fit_to_net`.  File reading/writing is :mod:`vggproto.weights.caffemodel`.
"""
from __future__ import annotations

import logging
import os
from typing import Collection, Mapping, Protocol, Sequence

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import WeightsError
from vggproto.layers.base import CaffeLayer
from vggproto.weights.fit import Site, Weights, fit_to_net, shape_string


class LayeredNet(Protocol):
    """What weight copying needs of a net (:class:`vggproto.net.interpreter.Net` has it): its layers by name and
    in order, each with its parameter ``blobs``, where they were defined, and the definition to save with them.
    A protocol, so that the interpreter, which uses these functions, is not imported back."""

    path: str | None
    dialect: str
    net_param: caffe_pb2.NetParameter
    layer_list: Sequence[CaffeLayer]
    layer_names: list[str]
    layer_lines: dict[str, int | None]
    layer_dict: dict[str, CaffeLayer]

log = logging.getLogger("vggproto.net.interpreter")


def split_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Caffe's ``--weights a,b``: comma-separated (or a list of) files, applied in order."""
    if isinstance(paths, (str, os.PathLike)):
        return [p for p in os.fspath(paths).split(",") if p]
    return [os.fspath(p) for p in paths]


def _targets(net: LayeredNet, every_match: bool) -> dict[str, list]:
    """Layers by name; a repeated name maps to its first layer (Caffe's binary CopyTrainedLayersFrom searches
    layer_names_ from the start) or, with ``every_match``, to all of them (CopyTrainedLayersFromHDF5 looks each
    layer's own name up in the file)."""
    found: dict[str, list] = {}
    for name, layer in zip(net.layer_names, net.layer_list):
        if every_match or name not in found:
            found.setdefault(name, []).append(layer)
    return found


def load_arrays(net: LayeredNet, weights: Mapping[str, Sequence[np.ndarray]], source: str, *,
                only: Collection[str] | None = None, allow_missing: bool = True, every_match: bool = False) -> int:
    """Copy ``weights`` into ``net``'s tensors by Caffe's rules (:func:`vggproto.weights.fit.fit_to_net`: nothing
    is copied unless everything fits); ``only`` limits it to those layers.  Layers the file lacks keep their
    values, as in Caffe, unless ``allow_missing`` is False.  Returns the number of blobs copied."""
    targets = _targets(net, every_match)
    expected = {name: [tuple(b.shape) for b in layers[0].blobs] for name, layers in targets.items()}
    sites = {name: Site(net.path, net.layer_lines.get(name), layers[0].spec.type) for name, layers in targets.items()}
    fitted = fit_to_net(weights, expected, allow_missing, source, only=only, sites=sites, log=log).weights
    copied = 0
    with torch.no_grad():
        for name, arrays in fitted.items():
            for layer in targets[name]:
                for target, array in zip(layer.blobs, arrays):
                    target.copy_(torch.from_numpy(np.array(array, dtype=np.float32)).reshape(target.shape))
                    copied += 1
    return copied


def copy_weights(net: LayeredNet, path: str, only: Collection[str] | None = None) -> None:
    """Caffe: src/caffe/net.cpp CopyTrainedLayersFrom — copy every same-named layer's blobs from ``path`` (any
    weight format vggproto writes, by content), only the layers in ``only`` when given (finetuning's
    ``init_layers``)."""
    from vggproto.caffe.files import is_hdf5
    from vggproto.weights.torch_files import load_weights_file
    weights = load_weights_file(path)   # one clear line for a missing or unreadable file
    with open(path, "rb") as handle:
        hdf5 = is_hdf5(handle.read(4096))
    copied = load_arrays(net, weights, path, only=only, every_match=hdf5)
    log.info("Copied weights of %d blobs from %s", copied, path)


def net_weights(net: LayeredNet) -> Weights:
    """Every layer's blobs as float32 numpy arrays, in layer and blob order (what a caffemodel holds)."""
    return {name: [b.detach().to("cpu", torch.float32).numpy() for b in layer.blobs]
            for name, layer in net.layer_dict.items() if len(layer.blobs)}


def net_diffs(net: LayeredNet) -> Weights:
    """Every layer's blob diffs (the tensors' ``.grad``; zeros where none), laid out like :func:`net_weights`.
    After a solver step they hold the last update applied, as Caffe's diffs do after ApplyUpdate."""
    def diff(blob: torch.Tensor) -> np.ndarray:
        grad = blob.grad if blob.grad is not None else torch.zeros_like(blob)
        return grad.detach().to("cpu", torch.float32).numpy()
    return {name: [diff(b) for b in layer.blobs] for name, layer in net.layer_dict.items() if len(layer.blobs)}


def save_weights(net: LayeredNet, path: str | os.PathLike, with_diff: bool = False) -> None:
    """Write a caffemodel (V2 layers with the net's definition) or Caffe HDF5 weights (``.h5``); ``with_diff``
    adds every blob's diff (Caffe's ``snapshot_diff``)."""
    from vggproto.weights.caffemodel import write_weights
    write_weights(path, net_weights(net), net.net_param, net_diffs(net) if with_diff else None, net.dialect)


def share_weights(net: LayeredNet, other: LayeredNet) -> None:
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
                                   f"{shape_string(mine.shape)} vs source shape {shape_string(theirs.shape)}")
            layer.blobs[index] = theirs
