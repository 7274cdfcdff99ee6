"""Turning a data layer's parameters and the net-wide options into a source, a record stream and a batch feed.

Net-wide options (``LayerSpec.options``) read here: ``rank``, ``world_size`` (TRAIN sharding), ``batch_split``
(default True: the prototxt batch is the global batch, split over ranks), ``per_gpu_batch`` (the prototxt batch
is per rank, as in Caffe's multi-GPU training), ``seed`` (random_seed + rank; None = unseeded like Caffe's -1),
``dry_run`` (shapes only), ``skip_bad``, ``data_workers`` (worker processes, default 0), ``pin_memory``,
``prefetch`` (batches per worker).
"""
from __future__ import annotations

import os

import numpy as np

from vggproto.data.loader import BatchFeed
from vggproto.data.sources import RecordStream
from vggproto.errors import DataError


def rank_batch(batch_size: int, options: dict, train: bool, where: str) -> int:
    """This rank's batch size: the global prototxt batch divided by world_size (TRAIN, unless per_gpu_batch)."""
    if batch_size <= 0:
        raise DataError(f"{where}: batch_size must be positive, got {batch_size}")
    world = int(options.get("world_size", 1) or 1)
    if not train or world == 1 or options.get("per_gpu_batch") or not options.get("batch_split", True):
        return batch_size
    if batch_size % world:
        raise DataError(f"{where}: global batch_size {batch_size} is not divisible by {world} ranks; change "
                        f"batch_size or pass per-GPU batches (per_gpu_batch)")
    return batch_size // world


def seeds(options: dict) -> tuple[int, int]:
    """(per-rank augmentation seed, rank-independent shuffle seed)."""
    seed = options.get("seed")
    if seed is None or int(seed) < 0:
        seed = int(np.random.SeedSequence().entropy % (1 << 31))
    seed = int(seed)
    return seed, seed - int(options.get("rank", 0) or 0)


def make_stream(n: int, options: dict, train: bool, skip: int = 0, order=None) -> RecordStream:
    """The record stream of this rank: sharded in TRAIN (offset % world_size == rank), complete in TEST."""
    if train:
        return RecordStream(n, int(options.get("rank", 0) or 0), int(options.get("world_size", 1) or 1), skip,
                            order)
    return RecordStream(n, 0, 1, skip, order)


def rand_skip(limit: int, n: int, seed: int, where: str) -> int:
    """Caffe's ``rand_skip``: skip ``Rand(limit)`` records at start (a DataError if that is the whole source)."""
    if not limit:
        return 0
    skip = int(np.random.default_rng([seed & 0xFFFFFFFF, 0x5EED]).integers(limit))
    if skip >= n:
        raise DataError(f"{where}: rand_skip {limit} may skip past all {n} records")
    return skip


def make_feed(maker, batch_size: int, options: dict) -> BatchFeed:
    """The layer's BatchFeed; pinned memory only where CUDA exists (pinning needs a CUDA runtime)."""
    import torch
    pin = bool(options.get("pin_memory")) and torch.cuda.is_available()
    return BatchFeed(maker, batch_size, num_workers=int(options.get("data_workers", 0) or 0),
                     prefetch=int(options.get("prefetch", 2) or 2), pin_memory=pin)


def require_file(path: str, what: str, where: str) -> str:
    """``path`` unchanged if it exists; else a DataError saying it is resolved against the working directory."""
    if not os.path.exists(path):
        raise DataError(f"{where}: {what} '{path}' does not exist (resolved against the working directory "
                        f"'{os.getcwd()}', as Caffe does)")
    return path
