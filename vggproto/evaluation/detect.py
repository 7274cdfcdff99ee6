"""``vggproto detect``: the boxes an SSD deploy net (MobileNet-SSD, VGG-SSD, ...) finds in one image.

The image is read as BGR 0-255 (``cv2.imread``), resized with ``cv2.resize`` (bilinear, aspect ratio not kept) to
the net's input W×H (or ``size``), the mean pixel subtracted and the result multiplied by ``input_scale``, as the
SSD READMEs prepare images: weiliu89's VGG-SSD mean 104,117,123 and scale 1 (the defaults), chuanqi305's
MobileNet-SSD mean 127.5 and scale 0.007843.  The rows of the net's DetectionOutput top scoring at least
``threshold`` become boxes in the original image's pixels (normalised corners × image width/height, not clipped,
as DetectionOutput does not clip).  Labels are named by a text file (one name per line, label 0 first) or by an
SSD ``labelmap_*.prototxt`` (``LabelMap``: each item's display_name, else its name).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from vggproto.errors import DataError, VGGProtoError

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net

#: weiliu89/caffe's SSD mean pixel (B, G, R), the ``--mean-value`` default.
SSD_MEAN = (104.0, 117.0, 123.0)


@dataclass
class Box:
    """One detection in image pixels."""

    label: int
    name: str
    score: float
    xmin: float
    ymin: float
    xmax: float
    ymax: float

    def line(self) -> str:
        """``label score xmin ymin xmax ymax``; spaces in the label name become ``_`` so the line splits in 6."""
        name = re.sub(r"\s+", "_", self.name)
        return f"{name} {self.score:.4f} {self.xmin:.1f} {self.ymin:.1f} {self.xmax:.1f} {self.ymax:.1f}"


def parse_size(text: str) -> tuple[int, int]:
    """``300x300`` (W×H) -> ``(300, 300)``; a VGGProtoError for anything else."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match or min(int(match[1]), int(match[2])) < 1:
        raise VGGProtoError(f"--size takes WxH with positive integers (e.g. 300x300), got '{text}'")
    return int(match[1]), int(match[2])


def label_names(path: str | os.PathLike) -> dict[int, str]:
    """``{label: name}`` from a names file (line i names label i) or an SSD ``LabelMap`` prototxt."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise DataError(f"--labels '{path}': {exc.strerror}") from None
    if re.search(r"^\s*item\s*\{", text, flags=re.MULTILINE):
        from vggproto.caffe.proto import caffe_pb2
        from vggproto.caffe.prototxt import parse_text
        labelmap = parse_text(text, caffe_pb2.LabelMap(), os.fspath(path))
        return {item.label: item.display_name or item.name for item in labelmap.item}
    return dict(enumerate(line.strip() for line in text.splitlines()))


def load_detector(model: str | os.PathLike, weights: str | os.PathLike,
                  device: str = "cpu") -> tuple[Net, str, str, tuple[int, int]]:
    """``(net, input blob, detection blob, input (width, height))`` for an SSD deploy net with weights."""
    from vggproto.net.interpreter import Net
    net = Net(model, weights, phase="TEST")
    for p in net.parameters():
        p.requires_grad_(False)
    inputs = net.input_names
    if len(inputs) != 1 or len(net.blob_shapes[inputs[0]]) != 4 or net.blob_shapes[inputs[0]][1] != 3:
        raise VGGProtoError(f"{model}: detect needs a net with one N x 3 x H x W Input, got "
                            f"{[net.blob_shapes[i] for i in inputs] or 'none'}")
    tops = [p.top[0] for p in net.net_param.layer if p.type == "DetectionOutput" and p.top]
    if len(tops) != 1:
        raise VGGProtoError(f"{model}: detect needs a net with one DetectionOutput layer, got {len(tops)}")
    shape = net.blob_shapes[inputs[0]]
    return net.to(device), inputs[0], tops[0], (int(shape[3]), int(shape[2]))


def prepare(img: np.ndarray, size: tuple[int, int], mean: Sequence[float], input_scale: float) -> np.ndarray:
    """HWC BGR uint8 -> 1×3×H×W float32: resized to ``size`` (W, H), minus ``mean``, times ``input_scale``."""
    import cv2
    resized = cv2.resize(img, size, interpolation=cv2.INTER_LINEAR).astype(np.float32)
    out = (resized - np.asarray(mean, dtype=np.float32)) * np.float32(input_scale)
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None])


def boxes_from(rows: np.ndarray, width: int, height: int, threshold: float, names: dict[int, str]) -> list[Box]:
    """DetectionOutput rows ``[image, label, score, xmin, ymin, xmax, ymax]`` scoring >= ``threshold`` (the
    −1 "nothing found" row never does) as boxes in a ``width`` × ``height`` image, in the net's row order."""
    out = []
    for _, label, score, x0, y0, x1, y1 in rows.reshape(-1, 7).tolist():
        if label < 0 or score < threshold:
            continue
        out.append(Box(int(label), names.get(int(label), str(int(label))), score,
                       x0 * width, y0 * height, x1 * width, y1 * height))
    return out


def draw_boxes(img: np.ndarray, boxes: Sequence[Box], path: str | os.PathLike) -> None:
    """Write ``img`` with each box drawn and captioned ``name score`` (OpenCV) to ``path``."""
    import cv2
    canvas = img.copy()
    for box in boxes:
        hue = (box.label * 47) % 180   # one colour per label
        colour = cv2.cvtColor(np.uint8([[[hue, 255, 230]]]), cv2.COLOR_HSV2BGR)[0, 0].tolist()
        p0, p1 = (round(box.xmin), round(box.ymin)), (round(box.xmax), round(box.ymax))
        cv2.rectangle(canvas, p0, p1, colour, 2)
        cv2.putText(canvas, f"{box.name} {box.score:.2f}", (p0[0] + 2, max(p0[1] - 4, 12)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)
    if not cv2.imwrite(os.fspath(path), canvas):
        raise DataError(f"--draw '{path}': cannot write the image (use a .png or .jpg name in an existing folder)")


def detect(image: str | os.PathLike, model: str | os.PathLike, weights: str | os.PathLike,
           threshold: float = 0.5, mean: Sequence[float] = SSD_MEAN, input_scale: float = 1.0,
           size: tuple[int, int] | None = None, labels: str | os.PathLike | None = None, device: str = "cpu",
           draw: str | os.PathLike | None = None, force: bool = False, engine: Callable | None = None) -> list[Box]:
    """The boxes the SSD net ``model`` finds in ``image`` scoring at least ``threshold``; drawn into ``draw``;
    ``engine`` runs the net (``vggproto.commands.engine_option.engine_hook``: the split engine for SSD)."""
    from vggproto.data.sources import read_image
    if draw is not None:
        from vggproto.caffe.files import check_output
        check_output(draw, inputs=(image, model, weights, labels), force=force)
    img = read_image(os.fspath(image), True, where=os.fspath(image))
    net, input_blob, output, net_size = load_detector(model, weights, device)
    if engine is not None:
        net = engine(net, (output,))
    names = label_names(labels) if labels is not None else {}
    batch = prepare(img, size or net_size, mean, input_scale)
    with torch.inference_mode():
        net.forward(**{input_blob: torch.from_numpy(batch).to(device)})
        rows = net.blobs[output].float().cpu().numpy()
    boxes = boxes_from(rows, img.shape[1], img.shape[0], threshold, names)
    if draw is not None:
        draw_boxes(img, boxes, draw)
    return boxes
