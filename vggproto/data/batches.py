"""Batch assembly: a picklable function from "this rank's record position j" to one collated batch.

Random transforms draw from a generator seeded by ``(seed, j)`` of each record, so a batch is the same whether
it is built in the main process or by any worker, and resuming at a saved position replays the same data.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from vggproto.data.sources import DBSource, HDF5Source, ListSource, RecordStream
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError, VGGProtoError

log = logging.getLogger("vggproto.data.batches")


@dataclass
class Batch:
    """One collated batch: the tops (float32 numpy arrays) plus descriptions of bad records it skipped."""

    start: int
    tops: list[np.ndarray]
    bad: list[str] = field(default_factory=list)


class ImageBatchMaker:
    """Batches of (transformed image, label) from a DBSource or ListSource."""

    def __init__(self, source: DBSource | ListSource, stream: RecordStream, transformer: DataTransformer,
                 batch_size: int, shape: tuple[int, int, int], seed: int, with_label: bool = True,
                 skip_bad: bool = False):
        self.source, self.stream, self.transformer = source, stream, transformer
        self.batch_size, self.shape, self.seed = batch_size, shape, seed
        self.with_label, self.skip_bad = with_label, skip_bad

    def record(self, j: int) -> tuple[np.ndarray, float]:
        """Transformed image and label of this rank's j-th record."""
        index = self.stream.index(j)
        where = self.source.describe(index)
        img, label = self.source.read(index)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, j])
        out = self.transformer(img, rng, where)
        if out.shape != self.shape:
            hint = " (set transform_param.force_color for encoded gray images)" if out.shape[0] != self.shape[0] \
                else " (set new_height/new_width or crop_size so that all images have one size)"
            raise DataError(f"{where}: transformed image is {'x'.join(map(str, out.shape))} but the batch is "
                            f"{'x'.join(map(str, self.shape))}{hint}")
        return out, label

    def __call__(self, start: int) -> Batch:
        data = np.empty((self.batch_size,) + self.shape, dtype=np.float32)
        labels = np.empty((self.batch_size,), dtype=np.float32)
        bad: list[str] = []
        for i in range(self.batch_size):
            data[i], labels[i] = self._good_record(start + i, bad)
        return Batch(start, [data, labels] if self.with_label else [data], bad)

    def _good_record(self, j: int, bad: list[str]) -> tuple[np.ndarray, float]:
        """Record j, or with ``skip_bad`` the next readable record after it (bad ones are reported)."""
        for attempt in range(self.stream.n if self.skip_bad else 1):
            try:
                return self.record(j + attempt)
            except VGGProtoError as exc:
                if not self.skip_bad:
                    raise
                bad.append(str(exc))
        raise DataError(f"no readable record in the whole data source (last error: {bad[-1]})")


class HDF5BatchMaker:
    """Batches of rows of HDF5 datasets, one top per dataset, no transformation (Caffe's HDF5Data)."""

    def __init__(self, source: HDF5Source, stream: RecordStream, batch_size: int):
        self.source, self.stream, self.batch_size = source, stream, batch_size

    def __call__(self, start: int) -> Batch:
        indices = [self.stream.index(start + i) for i in range(self.batch_size)]
        rows = self.source.rows(indices)
        return Batch(start, [rows[name] for name in self.source.names])
