"""Turning a data layer's parameters and the net-wide options into a source, a record stream and a batch feed.

The net-wide options are :class:`vggproto.data.options.DataOptions` (``LayerSpec.options``): the rank and world
size shard TRAIN records and split the global batch (unless ``per_gpu_batch``, Caffe's multi-GPU semantics), the
seed drives augmentation and shuffling, and the loader settings shape the feed.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from vggproto.data.batches import Batch
from vggproto.data.loader import BatchFeed
from vggproto.data.options import DataOptions
from vggproto.data.sources import RecordStream
from vggproto.errors import DataError


def rank_batch(batch_size: int, options: DataOptions, train: bool, where: str) -> int:
    """This rank's batch size: the global prototxt batch divided by world_size (TRAIN, unless per_gpu_batch)."""
    if batch_size <= 0:
        raise DataError(f"{where}: batch_size must be positive, got {batch_size}")
    world = options.world_size
    if not train or world == 1 or options.per_gpu_batch:
        return batch_size
    if batch_size % world:
        raise DataError(f"{where}: global batch_size {batch_size} is not divisible by {world} ranks; change "
                        f"batch_size or pass per-GPU batches (per_gpu_batch)")
    return batch_size // world


def seeds(options: DataOptions) -> tuple[int, int]:
    """(per-rank augmentation seed, rank-independent shuffle seed)."""
    seed = options.seed
    if seed is None or int(seed) < 0:
        seed = int(np.random.SeedSequence().entropy % (1 << 31))
    seed = int(seed)
    return seed, seed - options.rank


def make_stream(n: int, options: DataOptions, train: bool, skip: int = 0,
                order: Callable[[int], np.ndarray] | None = None) -> RecordStream:
    """The record stream of this rank: sharded in TRAIN (offset % world_size == rank), complete in TEST."""
    if train:
        return RecordStream(n, options.rank, options.world_size, skip, order)
    return RecordStream(n, 0, 1, skip, order)


def rand_skip(limit: int, n: int, seed: int, where: str) -> int:
    """Caffe's ``rand_skip``: skip ``Rand(limit)`` records at start (a DataError if that is the whole source)."""
    if not limit:
        return 0
    skip = int(np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED]).integers(limit))
    if skip >= n:
        raise DataError(f"{where}: rand_skip {limit} may skip past all {n} records")
    return skip


def make_feed(maker: Callable[[int], Batch], batch_size: int, options: DataOptions) -> BatchFeed:
    """The layer's BatchFeed; pinned memory only where CUDA exists (pinning needs a CUDA runtime)."""
    import torch
    pin = options.pin_memory and torch.cuda.is_available()
    return BatchFeed(maker, batch_size, num_workers=options.data_workers, prefetch=options.prefetch, pin_memory=pin)


def require_file(path: str, what: str, where: str) -> str:
    """``path`` unchanged if it exists; else a DataError saying it is resolved against the working directory."""
    if not os.path.exists(path):
        raise DataError(f"{where}: {what} '{path}' does not exist (resolved against the working directory "
                        f"'{os.getcwd()}', as Caffe does)")
    return path
