"""pycaffe's ``forward_all`` / ``forward_backward_all``: N items pushed through a net of batch size B in
ceil(N / B) passes, the last batch padded with zeros and the padding cut from the results.  They work on any
:class:`BatchedNet` (pycaffe's ``caffe.Net`` is one), so this module needs nothing of the net's own."""
from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from vggproto.layers.python import Blob


class BatchedNet(Protocol):
    """What batching needs of a net: its blobs (for the batch size), its inputs and pycaffe's passes."""

    @property
    def blobs(self) -> Mapping[str, Blob]: ...

    @property
    def inputs(self) -> list[str]: ...

    def forward(self, blobs: Sequence[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]: ...

    def backward(self, diffs: Sequence[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]: ...


def split(net: BatchedNet, kwargs: dict[str, Any]) -> tuple[list[dict[str, np.ndarray]], int]:
    """``kwargs`` (arrays of N items) as net-sized batches, and how many padding items the last one has."""
    if not kwargs:
        return [], 0
    first = next(iter(kwargs))
    size = net.blobs[first].shape[0] if first in net.blobs else 1
    total = len(kwargs[first])
    batches = []
    for start in range(0, total, size):
        batch = {}
        for name, values in kwargs.items():
            chunk = np.asarray(values[start:start + size], dtype=np.float32)
            if len(chunk) < size:
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), np.float32)])
            batch[name] = chunk
        batches.append(batch)
    return batches, (size - total % size) % size


def _join(parts: dict[str, list[np.ndarray]], pad: int) -> dict[str, np.ndarray]:
    joined = {name: np.concatenate(arrays) for name, arrays in parts.items()}
    return {name: array[:len(array) - pad] for name, array in joined.items()}


def forward_all(net: BatchedNet, blobs: Sequence[str] | None, kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every item of the inputs through ``net``; the outputs (and ``blobs``) concatenated."""
    collected: dict[str, list[np.ndarray]] = {}
    batches, pad = split(net, kwargs)
    for batch in batches or [{}]:
        for name, values in net.forward(blobs=blobs, **batch).items():
            collected.setdefault(name, []).append(values.copy())
    return _join(collected, pad)


def forward_backward_all(net: BatchedNet, blobs: Sequence[str] | None, diffs: Sequence[str] | None,
                         kwargs: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Inputs and output diffs (both in ``kwargs``) batch by batch: (outputs, input diffs) concatenated."""
    forward_in = {k: v for k, v in kwargs.items() if k in net.inputs}
    backward_in = {k: v for k, v in kwargs.items() if k not in net.inputs}
    batches, pad = split(net, forward_in)
    seeds, _ = split(net, backward_in)
    outs: dict[str, list[np.ndarray]] = {}
    grads: dict[str, list[np.ndarray]] = {}
    for index, batch in enumerate(batches or [{}]):
        for name, values in net.forward(blobs=blobs, **batch).items():
            outs.setdefault(name, []).append(values.copy())
        seed = seeds[index] if index < len(seeds) else {}
        for name, values in net.backward(diffs=diffs, **seed).items():
            grads.setdefault(name, []).append(values.copy())
    return _join(outs, pad), _join(grads, pad)
