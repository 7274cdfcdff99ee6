"""Record sources (LMDB/LevelDB Datums, image list files, HDF5 files) and the record stream that orders them.

A source maps a record index to a decoded record.  The :class:`RecordStream` maps this rank's j-th record to a
source index, implementing Caffe's multi-GPU sharding, ``rand_skip`` and per-epoch shuffling as a pure function
of ``j``, so the data position is one integer (saved with solver snapshots) and worker processes can compute
any batch independently.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import numpy as np

from vggproto.data.datum import IMREAD_COLOR, IMREAD_GRAYSCALE, datum_to_image, opencv, parse_datum
from vggproto.data.db import DBReader
from vggproto.errors import DataError

log = logging.getLogger("vggproto.data.sources")


class RecordStream:
    """The sequence of source indices one rank reads.

    Caffe keeps a global record counter ``offset`` that never resets (it keeps counting across wrap-arounds);
    rank ``r`` of ``w`` keeps offset k iff ``k % w == r`` (TEST phase: every rank reads everything).
    # Caffe: src/caffe/layers/data_layer.cpp DataLayer::Skip / hdf5_data_layer.cpp HDF5DataLayer::Skip
    So this rank's j-th record is global position ``p = skip + r + j*w``, epoch ``p // n``, and within the epoch
    the ``p % n``-th entry of that epoch's order (identity, or a shuffle seeded by ``(seed, epoch)``).
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, skip: int = 0,
                 epoch_order: Callable[[int], np.ndarray] | None = None):
        if n <= 0:
            raise DataError("data source has no records")
        self.n, self.rank, self.world_size, self.skip = n, rank, max(1, world_size), skip
        self._epoch_order = epoch_order
        self._cache: tuple[int, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_cache"] = None
        return state

    def position(self, j: int) -> int:
        """Global stream position of this rank's j-th record."""
        return self.skip + self.rank + j * self.world_size

    def index(self, j: int) -> int:
        """Source index of this rank's j-th record."""
        p = self.position(j)
        epoch, within = divmod(p, self.n)
        if self._epoch_order is None:
            return within
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._epoch_order(epoch))
        return int(self._cache[1][within])


def permutation_order(n: int, seed: int) -> Callable[[int], np.ndarray]:
    """Epoch orders that shuffle all ``n`` records anew each epoch (ImageData ``shuffle``)."""
    def order(epoch: int) -> np.ndarray:
        return np.random.default_rng([seed & 0xFFFFFFFF, epoch]).permutation(n)
    return _Picklable(order, ("perm", n, seed))


class _Picklable:
    """A closure that pickles by its recipe (closures do not pickle; worker processes need the stream)."""

    def __init__(self, fn: Callable[[int], np.ndarray], recipe: tuple):
        self.fn, self.recipe = fn, recipe

    def __call__(self, epoch: int) -> np.ndarray:
        return self.fn(epoch)

    def __reduce__(self):
        kind, *args = self.recipe
        return (_rebuild, (kind, tuple(args)))


def _rebuild(kind: str, args: tuple):
    return permutation_order(*args) if kind == "perm" else file_shuffle_order(*args)


def file_shuffle_order(sizes: tuple[int, ...], seed: int) -> Callable[[int], np.ndarray]:
    """HDF5Data ``shuffle``: each epoch permutes the file order, then the rows inside each file.

    # Caffe: src/caffe/layers/hdf5_data_layer.cpp — file_permutation_ shuffled on loop-around, rows on each load.
    """
    offsets = np.concatenate([[0], np.cumsum(sizes)])[:-1]

    def order(epoch: int) -> np.ndarray:
        rng = np.random.default_rng([seed & 0xFFFFFFFF, epoch])
        files = rng.permutation(len(sizes))
        return np.concatenate([offsets[f] + rng.permutation(sizes[f]) for f in files])
    return _Picklable(order, ("files", tuple(sizes), seed))


class DBSource:
    """Datums of an LMDB/LevelDB database (Caffe's Data layer), decoded to HWC images."""

    def __init__(self, path: str, backend: str = "lmdb", color: bool | None = None):
        self.reader = DBReader(path, backend)
        self.color = color   # encoded datums: True = force colour, False = force gray, None = native channels

    def __len__(self) -> int:
        return len(self.reader)

    def describe(self, index: int) -> str:
        key = self.reader.keys[index].decode(errors="replace")
        return f"database '{self.reader.path}' record {index} (key {key!r})"

    def read(self, index: int) -> tuple[np.ndarray, float]:
        where = self.describe(index)
        datum = parse_datum(self.reader.get(index), where)
        return datum_to_image(datum, where, self.color), float(datum.label)

    def read_bytes(self, index: int) -> tuple[bytes | None, float]:
        """Encoded image bytes (None for a raw Datum) and label, for decoding elsewhere (GPU)."""
        datum = parse_datum(self.reader.get(index), self.describe(index))
        return (datum.data if datum.encoded else None), float(datum.label)


def read_list_lines(path: str, what: str) -> list[str]:
    """The lines of a list file; a missing file is a DataError saying paths are relative to the CWD (as Caffe)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except OSError as exc:
        raise DataError(f"{what} '{path}': {exc.strerror} (paths are relative to the working directory "
                        f"'{os.getcwd()}', as in Caffe)") from None
    except UnicodeDecodeError as exc:  # a binary file given as a list, or a Latin-1 file name
        with open(path, "rb") as f:
            head = f.read(exc.start + 1)
        line = head.count(b"\n") + 1
        raise DataError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{head[-1]:02x} at offset "
                        f"{exc.start})") from None


#: the label of an image listed without one (``parse_list_file(..., labelled=False)``: descriptors need none)
UNLABELLED = -1


def parse_list_file(path: str, labelled: bool = True) -> list[tuple[str, int, int]]:
    """``(image path, label, line number)`` per non-blank line of a Caffe list file.

    # Caffe: src/caffe/layers/image_data_layer.cpp — split at the LAST space, label = integer after it.
    With ``labelled=False`` a list of plain paths is accepted too (whole lines, label :data:`UNLABELLED`), as
    the first line decides: a list is either all ``<path> <label>`` or all paths.
    """
    entries, plain = [], None
    for number, line in enumerate(read_list_lines(path, "list file"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        name, sep, label = line.rpartition(" ")
        if plain is None:   # the first line decides
            plain = not labelled and not (sep and name and _is_integer(label))
        if plain:
            entries.append((line, UNLABELLED, number))
            continue
        if not sep or not name:
            raise DataError(f"{path}:{number}: expected '<image path> <integer label>', got {line!r}"
                            + (" (the first line has a label, so every line needs one)" if not labelled else ""))
        if not _is_integer(label):
            raise DataError(f"{path}:{number}: label {label!r} is not an integer")
        entries.append((name, int(label), number))
    if not entries:
        raise DataError(f"list file '{path}' lists no images")
    return entries


def _is_integer(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def read_image(path: str, color: bool, new_height: int = 0, new_width: int = 0, where: str = "") -> np.ndarray:
    """``cv2.imread`` + optional ``cv2.resize`` (INTER_LINEAR) to HWC uint8, as Caffe's ReadImageToCVMat.

    # Caffe: src/caffe/util/io.cpp ReadImageToCVMat — imread(COLOR|GRAYSCALE), resize only if both sizes > 0.
    """
    cv2 = opencv()
    img = cv2.imread(path, IMREAD_COLOR if color else IMREAD_GRAYSCALE)
    if img is None:
        reason = "file does not exist" if not os.path.exists(path) else "cannot decode image"
        raise DataError(f"{where}: {reason}: '{path}'")
    if new_height > 0 and new_width > 0:
        img = cv2.resize(img, (new_width, new_height), interpolation=cv2.INTER_LINEAR)
    return img if img.ndim == 3 else img[:, :, None]


class ListSource:
    """Images named by a list file (Caffe's ImageData layer)."""

    def __init__(self, list_path: str, root_folder: str = "", new_height: int = 0, new_width: int = 0,
                 color: bool = True):
        self.list_path, self.root_folder, self.color = list_path, root_folder, color
        self.new_height, self.new_width = new_height, new_width
        self.entries = parse_list_file(list_path)

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        return f"{self.list_path}:{self.entries[index][2]}"

    def read(self, index: int) -> tuple[np.ndarray, float]:
        name, label, _ = self.entries[index]
        img = read_image(self.root_folder + name, self.color, self.new_height, self.new_width,
                         self.describe(index))
        return img, float(label)

    def read_bytes(self, index: int) -> tuple[bytes | None, float]:
        """The image file's bytes and label, for decoding elsewhere (GPU)."""
        name, label, _ = self.entries[index]
        try:
            with open(self.root_folder + name, "rb") as f:
                return f.read(), float(label)
        except OSError as exc:
            raise DataError(f"{self.describe(index)}: {exc.strerror}: '{self.root_folder + name}'") from None


class HDF5Source:
    """Rows of the HDF5 files listed in a text file, datasets named as the layer's tops (Caffe's HDF5Data).

    Files are loaded whole, one at a time (Caffe does the same), as float32.
    """

    def __init__(self, list_path: str, names: list[str]):
        self.list_path, self.names = list_path, list(names)
        try:
            with open(list_path, encoding="utf-8") as f:
                self.files = [line.strip() for line in f if line.strip()]
        except OSError as exc:
            raise DataError(f"HDF5 source list '{list_path}': {exc.strerror} (paths are relative to the working "
                            f"directory '{os.getcwd()}', as in Caffe)") from None
        if not self.files:
            raise DataError(f"HDF5 source list '{list_path}' names no files")
        self.sizes, self.row_shapes = self._scan()
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])
        self._loaded: tuple[int, dict[str, np.ndarray]] | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_loaded"] = None
        return state

    def _scan(self) -> tuple[list[int], dict[str, tuple[int, ...]]]:
        import h5py
        sizes, shapes = [], {}
        for number, name in enumerate(self.files, 1):
            where = f"{self.list_path}:{number}"
            try:
                with h5py.File(name, "r") as h5:
                    rows = None
                    for top in self.names:
                        if top not in h5 or not isinstance(h5[top], h5py.Dataset):
                            raise DataError(f"{where}: '{name}' has no dataset '{top}' (datasets are read by top "
                                            f"name; it has: {', '.join(sorted(h5.keys()))})")
                        ds = h5[top]
                        if ds.ndim == 0 or ds.dtype.kind not in "fiub":
                            raise DataError(f"{where}: '{name}' dataset '{top}' must be a numeric array with rows")
                        if rows is not None and ds.shape[0] != rows:
                            raise DataError(f"{where}: '{name}' datasets have different row counts "
                                            f"({rows} vs {ds.shape[0]} in '{top}')")
                        rows = ds.shape[0]
                        if shapes.setdefault(top, ds.shape[1:]) != ds.shape[1:]:
                            raise DataError(f"{where}: '{name}' dataset '{top}' rows are {ds.shape[1:]}, "
                                            f"earlier files have {shapes[top]}")
            except OSError as exc:
                raise DataError(f"{where}: cannot read HDF5 file '{name}': {exc}") from None
            if not rows:
                raise DataError(f"{where}: '{name}' has no rows")
            sizes.append(int(rows))
        return sizes, shapes

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _file(self, f: int) -> dict[str, np.ndarray]:
        if self._loaded is None or self._loaded[0] != f:
            import h5py
            with h5py.File(self.files[f], "r") as h5:
                self._loaded = (f, {top: np.asarray(h5[top], dtype=np.float32) for top in self.names})
        return self._loaded[1]

    def rows(self, indices: list[int]) -> dict[str, np.ndarray]:
        """The rows at global ``indices`` stacked per top: ``{name: (len(indices), *row_shape)}``."""
        out = {top: np.empty((len(indices),) + tuple(self.row_shapes[top]), np.float32) for top in self.names}
        for i, index in enumerate(indices):
            f = int(np.searchsorted(self.offsets, index, side="right") - 1)
            data = self._file(f)
            for top in self.names:
                out[top][i] = data[top][index - self.offsets[f]]
        return out
