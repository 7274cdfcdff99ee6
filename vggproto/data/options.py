"""The net-wide run options that reach every layer builder (``LayerSpec.options``), as one frozen dataclass.

They are not part of the prototxt: they say where and how this process runs the net (which rank of how many,
whether only shapes are wanted, how many loader workers).  A dataclass rather than a dict so that a misspelt
option is a TypeError at the call, not a silently taken default.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DataOptions:
    """How this process runs a net's data layers (the prototxt says what they read)."""

    rank: int = 0                   # this process's rank: TRAIN records are sharded offset % world_size == rank
    world_size: int = 1
    per_gpu_batch: bool = False     # BVLC semantics: the prototxt batch is per rank (default: global, split)
    seed: int | None = None         # random_seed + rank; None (or < 0) = unseeded, like Caffe's -1
    dry_run: bool = False           # shapes only: open no data source, draw no filler, import no Python layer
    skip_bad: bool = False          # skip unreadable records (reported) instead of stopping
    data_workers: int = 0           # loader worker processes (0: load in this process)
    prefetch: int = 2               # batches in flight per worker
    pin_memory: bool = False        # page-locked batches (only where CUDA exists)
    gpu_decode: bool = False        # decode and transform JPEG records on ``device`` (nvJPEG)
    device: str | None = None       # the device for gpu_decode (default: cuda)
