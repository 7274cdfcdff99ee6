"""Caffe's data layers: Data (LMDB/LevelDB Datums), ImageData (list file), HDF5Data, HDF5Output.

Thin wrappers: the work is in :mod:`vggproto.data`.  A data layer has no bottoms; ``forward()`` returns the next
batch (float32 data, labels as float like Caffe's blobs) and advances a cursor that persists across forwards and
test passes; ``cursor()`` / ``set_cursor(n)`` save and restore the position.  Source paths are relative to the
working directory, as in Caffe.

Data and ImageData reshape every batch to its first record, as Caffe's ``load_batch`` does, so with
``batch_size: 1`` over images of different sizes the data top changes shape between forwards; ``top_shapes`` (what
the net reports at construction) is the shape of the first record read at setup.
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.batches import HDF5BatchMaker, ImageBatchMaker
from vggproto.data.build import make_feed, make_stream, rand_skip, rank_batch, require_file, seeds
from vggproto.data.gpu import DeviceBatchMaker
from vggproto.data.options import DataOptions
from vggproto.data.sources import DBSource, HDF5Source, ListSource, RecordStream, file_shuffle_order, permutation_order
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError, DataShapeUnknown
from vggproto.layers.base import NO_ONNX_DATA
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

log = logging.getLogger("vggproto.layers.data")


def layer_where(spec: LayerSpec) -> str:
    place = spec.path or "<net>"
    if spec.line is not None:
        place += f":{spec.line}"
    return f"{place}: layer '{spec.name}' ({spec.type})"


def located(exc: DataError, where: str) -> DataError:
    """``exc`` prefixed with the layer's location unless it already names it."""
    return exc if str(exc).startswith(where) else DataError(f"{where}: {exc}")


class FeedLayer(CaffeLayer):
    """Common part of the data layers: a BatchFeed and the cursor API the solver uses."""

    is_data = True
    onnx = NO_ONNX_DATA
    backward = False   # Caffe: base_data_layer.hpp, Backward_cpu does nothing

    def _check_tops(self, low: int, high: int | None) -> None:
        n = len(self.spec.param.top)
        if n < low or (high is not None and n > high):
            want = f"{low}" if high == low else f"{low}..{high if high is not None else 'any'}"
            raise self.spec.error(f"needs {want} tops, has {n}")

    def forward(self) -> tuple[torch.Tensor, ...]:
        if self.feed is None:
            raise DataError(f"{layer_where(self.spec)}: built with dry_run (shapes only); it cannot produce data")
        return tuple(self.feed.next())

    def cursor(self) -> int:
        """Records consumed so far by this rank."""
        return self.feed.cursor() if self.feed is not None else 0

    def set_cursor(self, n: int) -> None:
        """Continue reading at record position ``n`` (a value returned by :meth:`cursor`)."""
        if self.feed is not None:
            self.feed.set_cursor(n)

    def _shapes_unknown(self, reason: str) -> None:
        """A shapes-only build (info, draw, convert; Caffe's draw_net reads no data either) of a layer whose top
        shapes only its data would tell: the tops are unknown, as after a Python layer, and the net says why."""
        self.top_shapes = [None] * len(self.spec.param.top)
        self.shapes_unknown = reason

    @property
    def bad_records(self) -> int:
        """Records skipped as unreadable (only with the ``skip_bad`` option)."""
        return self.feed.bad_records if self.feed is not None else 0


class _ImageLayer(FeedLayer):
    """Data and ImageData: a source of images + labels through Caffe's DataTransformer."""

    def _setup(self, source_factory, batch_size: int, limit_skip: int, shuffle: bool, dry_shape) -> None:
        spec, opts = self.spec, self.spec.options
        self._check_tops(1, 2)
        where = layer_where(spec)
        batch = rank_batch(batch_size, opts, spec.train, where)
        transformer = DataTransformer(spec.param.transform_param, spec.train, where,
                                      load_mean=not opts.dry_run)
        _warn_pitfalls(spec, transformer, where)
        self.feed = None
        if opts.dry_run:
            try:
                c, h, w = dry_shape(transformer)
            except DataShapeUnknown as exc:   # only the data would tell: the tops (and what reads them) unknown
                self._shapes_unknown(str(exc))
                return
        else:
            source = source_factory(transformer)
            seed, shuffle_seed = seeds(opts)
            order = permutation_order(len(source), shuffle_seed) if shuffle else None
            stream = make_stream(len(source), opts, spec.train, rand_skip(limit_skip, len(source), seed, where),
                                 order)
            # Caffe: src/caffe/layers/data_layer.cpp DataLayerSetUp — the setup shape is the first datum's; each
            # batch is then reshaped to its own first datum (ImageBatchMaker), so the tops may change shape
            first = _first_image(source, stream, opts.skip_bad)
            c, h, w = transformer.output_shape(first.shape[2], first.shape[0], first.shape[1])
            with_label = len(spec.param.top) > 1
            maker = device_maker(source, stream, transformer, batch, seed, with_label, opts, where) or \
                ImageBatchMaker(source, stream, transformer, batch, seed, with_label=with_label,
                                skip_bad=opts.skip_bad)
            self.feed = make_feed(maker, batch, opts if not isinstance(maker, DeviceBatchMaker)
                                  else replace(opts, data_workers=0))
        self.top_shapes = [(batch, c, h, w)] + [(batch,)] * (len(spec.param.top) - 1)
        if not opts.dry_run:   # a shapes-only build read no data: it has no data size to report
            log.info("output data size: %d,%d,%d,%d", batch, c, h, w)   # Caffe's setup log line



def _first_image(source, stream, skip_bad: bool) -> np.ndarray:
    """The first record's image, which sets the batch shape as in Caffe (with skip_bad: the first readable)."""
    for j in range(len(source) if skip_bad else 1):
        try:
            return source.read(stream.index(j))[0]
        except DataError as exc:
            if not skip_bad:
                raise
            log.warning("skipping bad record: %s", exc)
    raise DataError(f"no readable record in {source.describe(0)} and the rest of its source")


def device_maker(source: DBSource | ListSource, stream: RecordStream, transformer: DataTransformer, batch: int,
                 seed: int, with_label: bool, opts: DataOptions, where: str) -> DeviceBatchMaker | None:
    """A DeviceBatchMaker when the ``gpu_decode`` option asks for it and CUDA is there (else None, CPU path)."""
    if not opts.gpu_decode:
        return None
    device = torch.device(opts.device or "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        log.warning("%s: gpu_decode requested but CUDA is not available; decoding on the CPU", where)
        return None
    return DeviceBatchMaker(source, stream, transformer, batch, seed, device, with_label=with_label)


def _warn_pitfalls(spec: LayerSpec, transformer: DataTransformer, where: str) -> None:
    """Log the settings Caffe silently ignores or that surprise users; they do not change behaviour."""
    param = spec.param.data_param if spec.type == "Data" else spec.param.image_data_param
    old = [f for f in ("scale", "mean_file", "crop_size", "mirror") if param.HasField(f)]
    if old:
        log.warning("%s: %s in %s are deprecated and ignored (as by Caffe); use transform_param", where,
                    "/".join(old), "data_param" if spec.type == "Data" else "image_data_param")
    if transformer.mirror and not spec.train:
        log.warning("%s: mirror: true flips at random in the TEST phase too (Caffe semantics)", where)


def _dry_channels(color: bool, transformer: DataTransformer) -> int:
    return 1 if (transformer.force_gray or not color) else 3


@register("Data")
class DataLayer(_ImageLayer):
    """Caffe's Data layer: Datums from an LMDB (or LevelDB with plyvel), in key order, sharded in TRAIN."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.data_param
        where = layer_where(spec)
        backend = "lmdb" if p.backend == caffe_pb2.DataParameter.LMDB else "leveldb"

        def source(transformer: DataTransformer) -> DBSource:
            color = True if p.force_encoded_color else transformer.decode_color
            try:
                src = DBSource(require_file(p.source, "data_param.source", where), backend, color)
            except DataError as exc:
                raise located(exc, where) from None
            log.info("Opened %s %s", src.reader.backend, p.source)
            return src

        def dry_shape(transformer: DataTransformer) -> tuple[int, int, int]:
            if transformer.crop:
                return _dry_channels(True, transformer), transformer.crop, transformer.crop
            raise DataShapeUnknown(f"data shape unknown: without transform_param.crop_size it is the first "
                                   f"record's in '{p.source}', and a shapes-only build reads no data")

        self._setup(source, p.batch_size, p.rand_skip, False, dry_shape)


@register("ImageData")
class ImageDataLayer(_ImageLayer):
    """Caffe's ImageData layer: ``<path> <label>`` list file, optional resize and seeded per-epoch shuffle."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.image_data_param
        where = layer_where(spec)
        if (p.new_height > 0) != (p.new_width > 0):
            raise DataError(f"{where}: image_data_param new_height and new_width must be set together")

        def source(transformer: DataTransformer) -> ListSource:
            log.info("Opening file %s", p.source)
            src = ListSource(p.source, p.root_folder, p.new_height, p.new_width, bool(p.is_color))
            log.info("A total of %d images.", len(src))
            return src

        def dry_shape(transformer: DataTransformer) -> tuple[int, int, int]:
            c = _dry_channels(bool(p.is_color), transformer)
            if transformer.crop:
                return c, transformer.crop, transformer.crop
            if p.new_height > 0:
                return c, p.new_height, p.new_width
            raise DataShapeUnknown(f"data shape unknown: without transform_param.crop_size or new_height/"
                                   f"new_width it is the first image's of '{p.source}', and a shapes-only "
                                   f"build reads no data")

        self._setup(source, p.batch_size, p.rand_skip, bool(p.shuffle), dry_shape)


@register("HDF5Data")
class HDF5DataLayer(FeedLayer):
    """Caffe's HDF5Data: rows of the .h5 files listed in ``source``, one dataset per top (by top name)."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p, opts = spec.param.hdf5_data_param, spec.options
        where = layer_where(spec)
        self._check_tops(1, None)
        batch = rank_batch(p.batch_size, opts, spec.train, where)
        self.feed = None
        if opts.dry_run:
            self._shapes_unknown(f"top shapes unknown: they are the datasets' in the HDF5 files listed in "
                                 f"'{p.source}', and a shapes-only build reads no data")
            return
        try:
            source = HDF5Source(require_file(p.source, "hdf5_data_param.source", where), list(spec.param.top))
        except DataError as exc:
            raise located(exc, where) from None
        log.info("Number of HDF5 files: %d (%d rows)", len(source.files), len(source))
        self.top_shapes = [(batch,) + tuple(source.row_shapes[t]) for t in spec.param.top]
        _, shuffle_seed = seeds(opts)
        order = file_shuffle_order(tuple(source.sizes), shuffle_seed) if p.shuffle else None
        stream = make_stream(len(source), opts, spec.train, 0, order)
        self.feed = make_feed(HDF5BatchMaker(source, stream, batch), batch, opts)


@register("HDF5Output")
class HDF5OutputLayer(CaffeLayer):
    """Caffe's HDF5Output: writes bottom 0 as dataset ``data`` and bottom 1 as ``label`` of ``file_name``.

    Caffe truncates the file at setup; here each forward appends its rows (Caffe could only write one batch).
    """
    onnx = "it writes its bottoms to an HDF5 file, a side effect with no ONNX form"
    backward = False   # Caffe: hdf5_output_layer.cpp, Backward_cpu returns

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.file_name = spec.param.hdf5_output_param.file_name
        if not self.file_name:
            raise spec.error("hdf5_output_param.file_name is required")
        if len(spec.param.bottom) not in (1, 2) or spec.param.top:
            raise spec.error("needs 1 or 2 bottoms (data, label) and no tops")
        self.names = ["data", "label"][:len(spec.param.bottom)]
        self._created = False

    def forward(self, *bottoms: torch.Tensor) -> tuple:
        import h5py
        with h5py.File(self.file_name, "a" if self._created else "w") as h5:
            for name, blob in zip(self.names, bottoms):
                rows = blob.detach().to("cpu", torch.float32).numpy()
                if name not in h5:
                    h5.create_dataset(name, data=rows, maxshape=(None,) + rows.shape[1:], chunks=True)
                else:
                    ds = h5[name]
                    ds.resize(ds.shape[0] + rows.shape[0], axis=0)
                    ds[-rows.shape[0]:] = rows
        self._created = True
        return ()
