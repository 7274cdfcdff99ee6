"""Caffe HDF5 weights: ``/data/<layer name>/<blob index>`` float32 datasets (Caffe: src/caffe/net.cpp ToHDF5).

Contiguous uncompressed float32 datasets are returned as zero-copy views of the caller's file mapping (the
dataset's file offset comes from HDF5), anything else is read through h5py and converted to float32.
"""
from __future__ import annotations

import mmap
import os
from typing import Callable, Mapping, Sequence

import numpy as np

from vggproto.caffe.files import atomic_path
from vggproto.errors import WeightsError


def _blob_index(name: str, layer: str, path: str) -> int:
    if not name.isdigit():
        raise WeightsError(f"{path}: /data/{layer}/{name}: expected datasets named 0, 1, ... (blob indices)")
    return int(name)


def _dataset_array(dataset, buf: mmap.mmap | None) -> np.ndarray:
    if dataset.dtype.kind not in "fiub":
        raise WeightsError(f"{dataset.file.filename}: {dataset.name}: dataset of type {dataset.dtype} is not "
                           f"numeric")
    simple = (buf is not None and dataset.dtype == np.dtype("<f4") and dataset.chunks is None
              and dataset.compression is None and dataset.shape is not None)
    offset = dataset.id.get_offset() if simple else None
    if offset is not None and offset + dataset.size * 4 <= len(buf):
        return np.frombuffer(buf, dtype="<f4", count=dataset.size, offset=offset).reshape(dataset.shape)
    return np.asarray(dataset[()], dtype=np.float32)


def _collect(group, prefix: str, path: str, buf, out: dict) -> None:
    import h5py
    blobs = []
    for key, item in group.items():
        if isinstance(item, h5py.Dataset):
            blobs.append((_blob_index(key, prefix, path), item))
    if blobs:
        blobs.sort(key=lambda pair: pair[0])
        if [i for i, _ in blobs] != list(range(len(blobs))):
            raise WeightsError(f"{path}: /data/{prefix}: blob datasets must be numbered 0..{len(blobs) - 1}, "
                               f"found {', '.join(str(i) for i, _ in blobs)}")
        out[prefix] = [_dataset_array(item, buf) for _, item in blobs]
    for key, item in group.items():
        if isinstance(item, h5py.Group):  # a layer name containing '/' nests groups
            _collect(item, f"{prefix}/{key}" if prefix else key, path, buf, out)


def read_hdf5_weights(path: str, buf: mmap.mmap | None = None) -> dict[str, list[np.ndarray]]:
    """Read ``/data/<layer>/<i>`` in HDF5 link order (Caffe iterates the same way)."""
    import h5py
    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise WeightsError(f"{path}: cannot open as HDF5: {exc}") from None
    with handle:
        data = handle.get("data")
        if not isinstance(data, h5py.Group):
            found = ", ".join(sorted(handle.keys())) or "nothing"
            raise WeightsError(f"{path}: HDF5 file without a /data group, so not Caffe HDF5 weights "
                               f"(top level holds: {found})")
        if handle.userblock_size:
            buf = None  # dataset offsets would need the user block added; read through h5py instead
        out: dict[str, list[np.ndarray]] = {}
        _collect(data, "", path, buf, out)
    return out


def write_hdf5_weights(path: str | os.PathLike, weights: Mapping[str, Sequence], names: Sequence[str] = (),
                       diffs: Mapping[str, Sequence] | None = None, *,
                       on_layer: Callable[[str], None] | None = None) -> None:
    """Write Caffe's HDF5 layout: a group per layer (``names`` first, as Caffe creates one for every layer of
    the net, then any other weights entry), dataset ``i`` per blob; with ``diffs`` the same under ``/diff``
    (Caffe: src/caffe/net.cpp ToHDF5 with write_diff); atomically via a temp file.  ``on_layer`` is called
    after each ``weights`` layer's datasets are written (progress for large conversions; not for ``/diff``)."""
    import h5py
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        listed = set(names)
        order = [*names, *(n for n in weights if n not in listed)]
        _write_group(handle.create_group("data"), order, weights, on_layer)
        if diffs:
            _write_group(handle.create_group("diff"), order, diffs)


def _write_group(top, order: Sequence[str], arrays: Mapping[str, Sequence],
                 on_layer: Callable[[str], None] | None = None) -> None:
    for name in order:
        group = top.require_group(name)
        for index, array in enumerate(arrays.get(name, ())):
            if array is not None:
                group.create_dataset(str(index), data=np.asarray(array, dtype="<f4", order="C"))
        if on_layer is not None and name in arrays:
            on_layer(name)
