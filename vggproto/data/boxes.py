"""Box list files and the batches of the ``BoxData`` layer: image, class and ground-truth box, with the box moved
by exactly the rescale / crop / mirror the image gets (Appendix A of the paper).

List-file format (one image per line, whitespace-separated, ``#`` starts a comment line)::

    <image path> <class> <x1> <y1> <x2> <y2> [<x1> <y1> <x2> <y2> ...]

Boxes are corner boxes of the decoded image in continuous pixel coordinates (:mod:`vggproto.data.box_geometry`:
``x2``/``y2`` exclusive; ILSVRC's 1-based inclusive ``xmin..xmax`` are ``xmin - 1 .. xmax``).  The path may not
contain spaces.
For training, a line with k boxes gives k records (one per box, as every ground-truth box is a training
target); evaluation keeps all boxes of an image.  A line with a path only (no class, no box) is accepted by
:func:`parse_box_list` with ``need_boxes=False`` (images to localise without ground truth).

The layer's third top is the paper's 4-D box vector ``(cx, cy, w, h)`` of the box clipped to the crop the net
sees, divided by the crop side: values in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vggproto.data.batches import Batch
from vggproto.data.box_geometry import corners_to_target, transform_boxes
from vggproto.data.sources import RecordStream, read_image, read_list_lines
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError


@dataclass
class BoxEntry:
    """One line of a box list file."""

    path: str
    label: int | None
    boxes: np.ndarray          # K×4 corner boxes (K = 0 when the line has none)
    line: int


def parse_box_list(path: str, need_boxes: bool = True) -> list[BoxEntry]:
    """The entries of a box list file; DataErrors name ``file:line`` and the expected format."""
    entries = []
    for number, text in enumerate(read_list_lines(path, "box list"), 1):
        words = text.split()
        if not words or words[0].startswith("#"):
            continue
        entries.append(_parse_line(words, f"{path}:{number}", number, need_boxes))
    if not entries:
        raise DataError(f"box list '{path}' lists no images")
    return entries


def _parse_line(words: list[str], where: str, number: int, need_boxes: bool) -> BoxEntry:
    expected = "expected '<image path> <class> <x1> <y1> <x2> <y2> [more boxes]'"
    rest = words[1:]
    if not rest and not need_boxes:
        return BoxEntry(words[0], None, np.zeros((0, 4)), number)
    if (len(rest) - 1) % 4 or (need_boxes and len(rest) < 5):
        raise DataError(f"{where}: {expected}, got {len(words)} fields")
    try:
        label = int(rest[0])
        coords = np.array([float(v) for v in rest[1:]], dtype=np.float64).reshape(-1, 4)
    except ValueError:
        raise DataError(f"{where}: {expected}; the class must be an integer and the corners numbers") from None
    if label < 0:
        raise DataError(f"{where}: class {label} is negative")
    bad = (coords[:, 2] <= coords[:, 0]) | (coords[:, 3] <= coords[:, 1])
    if bad.any():
        raise DataError(f"{where}: box {coords[bad][0].tolist()} has x2 <= x1 or y2 <= y1 (corners are x1 y1 x2 y2)")
    return BoxEntry(words[0], label, coords, number)


class BoxListSource:
    """Records ``(image, class, box)`` of a box list file, one per ground-truth box."""

    def __init__(self, list_path: str, root_folder: str = "", color: bool = True):
        self.list_path, self.root_folder, self.color = list_path, root_folder, color
        self.entries = parse_box_list(list_path)
        self.records = [(e, k) for e in self.entries for k in range(len(e.boxes))]

    def __len__(self) -> int:
        return len(self.records)

    def describe(self, index: int) -> str:
        return f"{self.list_path}:{self.records[index][0].line}"

    def read(self, index: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Decoded HWC BGR image, class and its corner box (4,)."""
        entry, k = self.records[index]
        img = read_image(self.root_folder + entry.path, self.color, where=self.describe(index))
        h, w = img.shape[:2]
        box = entry.boxes[k]
        if box[0] >= w or box[1] >= h or box[2] <= 0 or box[3] <= 0:
            raise DataError(f"{self.describe(index)}: box {box.tolist()} lies outside the {w}x{h} image")
        return img, float(entry.label), box


def transformed_record(transformer: DataTransformer, img: np.ndarray, box: np.ndarray, seed: int, j: int,
                       where: str) -> tuple[np.ndarray, np.ndarray]:
    """The transformed image and its normalised ``(cx, cy, w, h)`` box target.

    The transformer draws its random decisions from a generator seeded by ``(seed, j)``; drawing them again from an
    identically seeded generator (:meth:`DataTransformer.draw` is the first thing ``__call__`` does) tells where
    the crop and the mirror put the box, without duplicating the image transform.
    """
    h, w, c = img.shape
    decision = transformer.draw(h, w, c, _rng(seed, j), where)
    out = transformer(img, _rng(seed, j), where)
    moved = transform_boxes(box, (h, w), decision.size, (decision.h0, decision.w0),
                            (decision.crop_h, decision.crop_w), decision.mirror)
    if decision.crop_h != decision.crop_w:
        raise DataError(f"{where}: box targets need square crops (set transform_param.crop_size)")
    return out, corners_to_target(moved, decision.crop_w)[0].astype(np.float32)


def _rng(seed: int, j: int) -> np.random.Generator:
    return np.random.default_rng([seed & 0xFFFFFFFF, j])


class BoxBatchMaker:
    """Batches of (image, class, box target) — picklable, a pure function of the start position."""

    def __init__(self, source: BoxListSource, stream: RecordStream, transformer: DataTransformer,
                 batch_size: int, shape: tuple[int, int, int], seed: int, with_label: bool):
        self.source, self.stream, self.transformer = source, stream, transformer
        self.batch_size, self.shape, self.seed, self.with_label = batch_size, shape, seed, with_label

    def __call__(self, start: int) -> Batch:
        data = np.empty((self.batch_size,) + self.shape, dtype=np.float32)
        labels = np.empty((self.batch_size,), dtype=np.float32)
        targets = np.empty((self.batch_size, 4), dtype=np.float32)
        for i in range(self.batch_size):
            j = start + i
            index = self.stream.index(j)
            where = self.source.describe(index)
            img, labels[i], box = self.source.read(index)
            out, targets[i] = transformed_record(self.transformer, img, box, self.seed, j, where)
            if out.shape != self.shape:
                raise DataError(f"{where}: transformed image is {'x'.join(map(str, out.shape))} but the batch is "
                                f"{'x'.join(map(str, self.shape))} (set crop_size)")
            data[i] = out
        tops = [data, labels, targets] if self.with_label else [data, targets]
        return Batch(start, tops)
