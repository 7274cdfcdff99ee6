"""Caffe's ``convert_imageset`` and ``compute_image_mean`` tools as library functions.

``convert_imageset`` writes Datums exactly as Caffe does (keys ``%08d_<path as listed>``, raw BGR CHW uint8 via
``cv2.imread`` + ``cv2.resize`` INTER_LINEAR, or the original file bytes / re-encoded bytes with ``encoded``),
committing every 1000 records.  ``compute_mean`` is the per-pixel float32 mean over all datums.
# Caffe: tools/convert_imageset.cpp, src/caffe/util/io.cpp ReadImageToDatum, tools/compute_image_mean.cpp
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np

from vggproto.caffe.files import atomic_directory, check_output
from vggproto.data.datum import datum_to_image, encoded_datum, image_to_datum, mean_blob, opencv, parse_datum
from vggproto.data.db import DBReader, open_writer
from vggproto.data.progress import Progress
from vggproto.data.progress import progress as progress_of
from vggproto.data.sources import parse_list_file, read_image
from vggproto.errors import DataError, VGGProtoError

log = logging.getLogger("vggproto.data.convert")
CAFFE_LINE = "Processed {n} files."   # Caffe: convert_imageset.cpp, every 1000 files


@dataclass
class ConvertReport:
    written: int = 0
    bad: list[str] = field(default_factory=list)


def _match_ext(name: str, encoding: str) -> bool:
    # Caffe: io.cpp matchExt — case-insensitive, "jpg" also matches ".jpeg"
    ext = name.rsplit(".", 1)[-1].lower()
    return ext == encoding or (encoding == "jpg" and ext == "jpeg")


def _datum_for(path: str, label: int, height: int, width: int, color: bool, encoding: str, where: str):
    """The Datum Caffe's ReadImageToDatum makes for one image."""
    img = read_image(path, color, height, width, where)
    if encoding:
        if (img.shape[2] == 3) == color and not height and not width and _match_ext(path, encoding):
            with open(path, "rb") as f:   # the original file bytes (Caffe's ReadFileToDatum)
                return encoded_datum(f.read(), label)
        cv2 = opencv()
        ok, buf = cv2.imencode("." + encoding, img)
        if not ok:
            raise DataError(f"{where}: cannot encode '{path}' as {encoding}")
        return encoded_datum(buf.tobytes(), label)
    return image_to_datum(img, label)


def convert_imageset(root: str, list_file: str, db_path: str, resize_height: int = 0, resize_width: int = 0,
                     shuffle: bool = False, gray: bool = False, encoded: bool = False, encode_type: str = "",
                     check_size: bool = False, skip_bad: bool = False, seed: int = 0,
                     progress: bool = True, backend: str = "lmdb", force: bool = False) -> ConvertReport:
    """Write the images of ``list_file`` (paths relative to ``root``) into a new LMDB (or LevelDB) at
    ``db_path``; ``Processed N files.`` every 1000 written images in a log, a bar on a terminal.

    The database is built under a temporary name and renamed into place when complete, so a bad image, a full
    disk or Ctrl-C never leaves half a database behind; an existing one is replaced only with ``force``."""
    if (resize_height > 0) != (resize_width > 0):
        raise DataError("--resize-height and --resize-width must be given together")
    if not os.path.isdir(db_path):   # an existing database folder is atomic_directory's to refuse
        check_output(db_path, inputs=(list_file,), kind="lmdb", force=force)
    entries = parse_list_file(list_file)
    if shuffle:
        entries = [entries[i] for i in np.random.default_rng(seed).permutation(len(entries))]
    report, size = ConvertReport(), None
    with atomic_directory(db_path, replace=force) as building, open_writer(os.fspath(building), backend) as db, \
            Progress(len(entries), "convert", 1000, CAFFE_LINE, progress) as bar:
        for index, (name, label, line) in enumerate(entries):
            where = f"{list_file}:{line}"
            enc = encode_type.lower()
            if encoded and not enc:   # Caffe guesses the encoding from the file name
                enc = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            try:
                datum = _datum_for(root + name, label, resize_height, resize_width, not gray, enc, where)
                if check_size and not datum.encoded:
                    shape = (datum.channels, datum.height, datum.width)
                    if size is not None and shape != size:
                        raise DataError(f"{where}: '{name}' is {'x'.join(map(str, shape))}, the first image is "
                                        f"{'x'.join(map(str, size))} (--check-size)")
                    size = size or shape
            except VGGProtoError as exc:
                if not skip_bad:
                    raise
                report.bad.append(str(exc))
                log.warning("skipping: %s", exc)
                continue
            db.put(f"{index:08d}_{name}".encode(), datum.SerializeToString())
            report.written += 1
            bar.update(1)
        logged = bar.mode == "lines"
    if not logged:   # in a log, Progress wrote the last count as Caffe does
        log.info("Processed %d files.", report.written)
    if report.bad:
        log.warning("%d bad images skipped", len(report.bad))
    return report


def compute_mean(db_path: str, backend: str = "lmdb", progress: bool = True) -> np.ndarray:
    """Per-pixel mean (C, H, W float32) of every Datum of a database, accumulated in float32 like Caffe."""
    reader = DBReader(db_path, backend)
    total: np.ndarray | None = None
    for i in progress_of(range(len(reader)), what="mean", every=10000, line=CAFFE_LINE, enabled=progress):
        where = f"database '{db_path}' key {reader.keys[i].decode(errors='replace')!r}"
        img = datum_to_image(parse_datum(reader.get(i), where), where)
        chw = img.transpose(2, 0, 1).astype(np.float32)
        if total is None:
            total = np.zeros_like(chw)
        elif chw.shape != total.shape:
            raise DataError(f"{where}: image is {'x'.join(map(str, chw.shape))}, the first is "
                            f"{'x'.join(map(str, total.shape))}; all images must have one size (write the "
                            "database with convert-imageset --resize-height H --resize-width W)")
        total += chw
    return total / np.float32(len(reader))


def compute_mean_file(db_path: str, out_path: str | None, backend: str = "lmdb", force: bool = False) -> list[str]:
    """Caffe's compute_image_mean: write the mean image of a database to ``out_path`` (None: only report, as the
    tool does without OUTPUT_FILE) and return the lines the tool logs (the channel count and each channel's
    mean, as ``mean_value`` entries for a prototxt)."""
    if out_path:
        check_output(out_path, inputs=(db_path,), kind="binary", force=force)
    mean = compute_mean(db_path, backend)
    if out_path:
        write_mean(mean, out_path)
    channels = mean.reshape(mean.shape[0], -1).mean(axis=1, dtype=np.float64)
    return [f"Number of channels: {mean.shape[0]}",
            *(f"mean_value channel [{c}]: {float(value):g}" for c, value in enumerate(channels))]


def write_mean(mean_chw: np.ndarray, out_path: str) -> None:
    """Write a mean image as Caffe's legacy 1xCxHxW ``.binaryproto``."""
    from vggproto.caffe.files import atomic_write_bytes
    atomic_write_bytes(out_path, mean_blob(mean_chw).SerializeToString())
