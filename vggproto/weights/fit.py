"""Caffe's rule for putting stored weight arrays into a net's blobs, in one place (numpy only, no torch).

Every way weights reach a net goes through :func:`fit_to_net`: ``Net(weights=...)`` / ``--weights``
(CopyTrainedLayersFrom), solver finetuning limited to ``--init-layers``, ``vggproto convert --model``, the dense
evaluation net and ONNX export.  So they all accept the same files (exact shapes, or Caffe's legacy 4-D
right-aligned dims), ignore the same source layers, and refuse a file with one error that lists every layer
that does not fit (not just the first), so one run shows everything to rename or fix.
"""
from __future__ import annotations

import logging
from typing import Collection, Mapping, NamedTuple, Sequence

import numpy as np

from vggproto.caffe.shapes import Shape
from vggproto.errors import WeightsError

#: The in-memory weights every reader returns and every writer takes: ``{layer: [blob arrays in Caffe order]}``.
Weights = dict[str, list[np.ndarray]]

_log = logging.getLogger("vggproto.weights.fit")


class Site(NamedTuple):
    """Where the net defines a layer, for messages.  ``type`` is given when the weights go into a built Net: its
    mismatches are then worded as Caffe's CopyTrainedLayersFrom words them (type, ``5 64 (320)`` shapes)."""

    path: str | None = None
    line: int | None = None
    type: str | None = None


class Fitted(NamedTuple):
    """What :func:`fit_to_net` found: the arrays in the net's shapes and layer order, the source layers the net
    lacks (ignored) and the net's layers with parameters that the file lacks (missing)."""

    weights: Weights
    ignored: list[str]
    missing: list[str]


def fit_blob(array: np.ndarray, target_shape: Sequence[int]) -> np.ndarray | None:
    """Caffe's ShapeEquals: ``array`` itself if its shape is ``target_shape``; for a 4-D (legacy) array whose
    dims equal the target's right-aligned LegacyShape (missing leading axes count as 1) the reshaped view;
    otherwise None (Caffe refuses to copy)."""
    target = tuple(int(d) for d in target_shape)
    if tuple(array.shape) == target:
        return array
    # Caffe: src/caffe/blob.cpp ShapeEquals + LegacyShape — legacy dims compare right-aligned, at most 4 axes
    if array.ndim != 4 or len(target) > 4:
        return None
    legacy = (1,) * (4 - len(target)) + target
    return array.reshape(target) if tuple(array.shape) == legacy else None


def drop_leading_ones(array: np.ndarray, ndim: int) -> np.ndarray:
    """``array`` reshaped to its last ``ndim`` dims when all the dims before them are 1 (else unchanged): a legacy
    1x1xNxK fc weight or 1x1x1xN bias as the N x K / N blob a net without a target shape would hold."""
    if array.ndim > ndim and all(d == 1 for d in array.shape[:array.ndim - ndim]):
        return array.reshape(array.shape[array.ndim - ndim:])
    return array


def _where(site: Site) -> str:
    return f"{site.path or '<text>'}:{site.line}: " if site.line is not None else ""


def shape_string(shape: Sequence[int]) -> str:
    """``5 64 (320)``: how Caffe's own shape errors show a shape, for the messages that follow Caffe's wording."""
    # Caffe: include/caffe/blob.hpp shape_string — dims, then the count in parentheses
    dims = " ".join(str(int(d)) for d in shape)
    return f"{dims} ({int(np.prod(shape, dtype=np.int64))})"


def format_shape(shape: Sequence[int]) -> str:
    """``4x3x3x3`` (``scalar`` for no axes): the notation of the converter's summary table and its errors."""
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _shape_problem(layer: str, site: Site, index: int, got: Sequence[int], want: Sequence[int]) -> str:
    if site.type is not None:  # Caffe: src/caffe/net.cpp CopyTrainedLayersFrom "Cannot copy param ... weights"
        return (f"{_where(site)}layer '{layer}' ({site.type}) param {index}: source shape {shape_string(got)} "
                f"vs target shape {shape_string(want)}")
    return f"{_where(site)}{layer} blob {index}: file {format_shape(got)} vs net {format_shape(want)}"


def _fit_layer(layer: str, blobs: Sequence[np.ndarray], shapes: Sequence[Shape], site: Site,
               problems: list[str]) -> list[np.ndarray] | None:
    """The layer's arrays in the net's shapes, or None after appending each problem to ``problems``."""
    if len(blobs) != len(shapes):  # Caffe: net.cpp CopyTrainedLayersFrom "Incompatible number of blobs"
        problems.append(f"{_where(site)}layer '{layer}': the file has {len(blobs)} blobs, the net expects "
                        f"{len(shapes)}")
        return None
    arrays = [fit_blob(np.asarray(blob), shape) for blob, shape in zip(blobs, shapes)]
    for index, (blob, shape, array) in enumerate(zip(blobs, shapes, arrays)):
        if array is None:
            problems.append(_shape_problem(layer, site, index, np.shape(blob), shape))
    return None if any(a is None for a in arrays) else arrays


def fit_to_net(weights: Mapping[str, Sequence[np.ndarray]], expected: Mapping[str, Sequence[Shape]],
               allow_missing: bool = False, source: str = "weights", *, only: Collection[str] | None = None,
               sites: Mapping[str, Site] | None = None, log: logging.Logger | None = None) -> Fitted:
    """Fit ``weights`` (a file's ``{layer: [arrays]}``) to the net's ``expected`` ``{layer: [blob shapes]}``.

    Layers of the file that the net lacks are ignored and logged as Caffe logs them (on ``log``, the caller's
    logger, so the line appears where that tool's log goes); ``only`` restricts the copy to those layer names
    (finetuning's ``init_layers``).  Every blob-count and shape mismatch is collected first and raised as one
    WeightsError naming ``source``, each layer (with ``path:line:`` from ``sites`` when known), the blob index,
    both shapes; a net layer with parameters that the file lacks is part of that error unless ``allow_missing``.
    """
    log = log or _log
    sites = sites or {}
    wanted = [layer for layer in expected if only is None or layer in only]
    problems: list[str] = []
    fitted: Weights = {}
    for layer in wanted:
        if layer in weights:
            arrays = _fit_layer(layer, weights[layer], expected[layer], sites.get(layer, Site()), problems)
            if arrays is not None:
                fitted[layer] = arrays
    missing = [layer for layer in wanted if layer not in weights and len(expected[layer])]
    ignored = [layer for layer in weights if layer not in expected and (only is None or layer in only)]
    _raise_problems(source, problems, [] if allow_missing else missing)
    for layer in ignored:
        log.info("Ignoring source layer %s", layer)  # Caffe: src/caffe/net.cpp CopyTrainedLayersFrom
    for layer in missing:
        log.debug("Layer %s has no weights in %s", layer, source)
    return Fitted(fitted, ignored, missing)


def _raise_problems(source: str, problems: list[str], missing: list[str]) -> None:
    """One WeightsError for everything that keeps the file from fitting (nothing is copied before it)."""
    parts = []
    if problems:
        parts.append(f"the weights do not fit the net ({len(problems)} mismatch(es)): " + "; ".join(problems)
                     + ". To learn a layer from scratch rather than copy it, rename it in the prototxt.")
    if missing:
        lack = (f"weights lack {len(missing)} layer(s) with parameters that the net needs: {', '.join(missing)} "
                f"(use --allow-missing to leave them out).")
        parts.append(("The " if parts else "the ") + lack)
    if parts:
        raise WeightsError(f"{source}: " + " ".join(parts))
