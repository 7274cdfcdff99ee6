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


def shape_mismatch(where: str, shape: tuple[int, ...], batch_shape: tuple[int, ...], first: str) -> DataError:
    """The one-line error for a record whose transformed image does not fit its batch (the shape of the batch's
    first record), with the setting that usually fixes it."""
    hint = " (set transform_param.force_color for encoded gray images)" if shape[0] != batch_shape[0] \
        else " (set new_height/new_width or crop_size so that the images of a batch have one size)"
    return DataError(f"{where}: transformed image is {'x'.join(map(str, shape))} but the batch is "
                     f"{'x'.join(map(str, batch_shape))}, the shape of its first record ({first}){hint}")


class ImageBatchMaker:
    """Batches of (transformed image, label) from a DBSource or ListSource.

    Each batch takes its shape from its first record, so the data top may change shape between batches (e.g.
    ``batch_size: 1`` over images of different sizes); the records of one batch must agree.
    # Caffe: src/caffe/layers/data_layer.cpp / image_data_layer.cpp load_batch — reshape to the first datum
    """

    def __init__(self, source: DBSource | ListSource, stream: RecordStream, transformer: DataTransformer,
                 batch_size: int, seed: int, with_label: bool = True, skip_bad: bool = False):
        self.source, self.stream, self.transformer = source, stream, transformer
        self.batch_size, self.seed = batch_size, seed
        self.with_label, self.skip_bad = with_label, skip_bad

    def record(self, j: int) -> tuple[np.ndarray, float, str]:
        """Transformed image, label and description of this rank's j-th record."""
        index = self.stream.index(j)
        where = self.source.describe(index)
        img, label = self.source.read(index)
        rng = np.random.default_rng([self.seed & 0xFFFFFFFF, j])
        return self.transformer(img, rng, where), label, where

    def __call__(self, start: int) -> Batch:
        bad: list[str] = []
        first, label, first_where = self._good_record(start, bad, None)
        data = np.empty((self.batch_size,) + first.shape, dtype=np.float32)
        labels = np.empty((self.batch_size,), dtype=np.float32)
        data[0], labels[0] = first, label
        for i in range(1, self.batch_size):
            data[i], labels[i], _ = self._good_record(start + i, bad, (first.shape, first_where))
        return Batch(start, [data, labels] if self.with_label else [data], bad)

    def _good_record(self, j: int, bad: list[str],
                     batch: tuple[tuple[int, ...], str] | None) -> tuple[np.ndarray, float, str]:
        """Record j, or with ``skip_bad`` the next readable record after it (bad ones are reported); a record
        whose shape differs from ``batch`` (shape and description of the batch's first record) is bad."""
        for attempt in range(self.stream.n if self.skip_bad else 1):
            try:
                out, label, where = self.record(j + attempt)
                if batch is not None and out.shape != batch[0]:
                    # Caffe: data_transformer.cpp Transform — CHECK_EQ of each datum against the batch's shape
                    raise shape_mismatch(where, out.shape, batch[0], batch[1])
                return out, label, where
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
