"""Running localisation over images or a box list file: per-image detections, ILSVRC errors, drawings.

A box list file (:mod:`vggproto.data.boxes`) with ground truth gives the two errors of Appendix A: the top-k
localisation error (Table 9) and the "GT class" error (Table 8: the box predicted for the true class only).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from vggproto.errors import DataError, VGGProtoError
from vggproto.localize.predict import Detection, LocalizeOptions, LocErrorCount, LocModel, localize_image

if TYPE_CHECKING:
    from vggproto.data.boxes import BoxEntry
    from vggproto.evaluation.evaluate import Model

log = logging.getLogger("vggproto.localize.predict")


@dataclass
class ImageResult:
    """Detections of one image, plus its ground truth when known."""

    path: str
    detections: list[Detection]
    label: int | None = None
    gt_boxes: list[list[float]] = field(default_factory=list)
    gt_class_detection: Detection | None = None

    def as_dict(self) -> dict:
        out = {"image": self.path, "detections": [d.as_dict() for d in self.detections]}
        if self.label is not None:
            out["label"], out["gt_boxes"] = self.label, self.gt_boxes
            if self.gt_class_detection is not None:
                out["gt_class_detection"] = self.gt_class_detection.as_dict()
        return out


@dataclass
class RunResult:
    images: list[ImageResult]
    count: LocErrorCount
    seconds: float

    def as_dict(self, options: LocalizeOptions, models: Sequence[str]) -> dict:
        out = {"mode": options.mode, "scales": list(options.scales), "top": options.top,
               "merge_threshold": options.merge_threshold, "models": list(models), "images": len(self.images),
               "seconds": round(self.seconds, 3), "results": [r.as_dict() for r in self.images]}
        if self.count.images:
            out.update(self.count.errors())
            out["error_units"] = "percent"
        return out


def localize_entries(entries: Sequence[BoxEntry], loc_models: Sequence[LocModel], cls_models: Sequence[Model],
                     options: LocalizeOptions, names: Sequence[str] | None = None, root: str = "",
                     progress: bool = False) -> RunResult:
    """Localise every entry (:class:`vggproto.data.boxes.BoxEntry`); entries with ground truth are scored."""
    from vggproto.data.progress import progress as progress_of
    from vggproto.data.sources import read_image
    count, results = LocErrorCount(), []
    started = time.perf_counter()
    with torch.inference_mode():
        for entry in progress_of(entries, what="localize", every=100, enabled=progress):
            path = os.path.join(root, entry.path) if root else entry.path
            img = read_image(path, True, where=path)
            dets = localize_image(img, loc_models, cls_models, options, names)
            result = ImageResult(entry.path, dets)
            if entry.label is not None and len(entry.boxes):
                result.label, result.gt_boxes = entry.label, [[float(v) for v in b] for b in entry.boxes]
                result.gt_class_detection = localize_image(img, loc_models, cls_models, options, names,
                                                           classes=[entry.label])[0]
                count.add(dets, result.gt_class_detection, entry.label, entry.boxes, options.top)
            results.append(result)
    return RunResult(results, count, time.perf_counter() - started)


def image_entries(paths: Sequence[str]) -> list[BoxEntry]:
    """Entries without ground truth for plain image paths."""
    from vggproto.data.boxes import BoxEntry
    return [BoxEntry(os.fspath(p), None, np.zeros((0, 4)), 0) for p in paths]


def check_classes(entries: Sequence[BoxEntry], classes: int, list_path: str) -> None:
    for entry in entries:
        if entry.label is not None and not 0 <= entry.label < classes:
            raise DataError(f"{list_path}:{entry.line}: class {entry.label} is out of range; the classification "
                            f"net has {classes} classes")


def localize_files(images: Sequence[str], list_path: str | None, loc_models: Sequence[tuple[str, str]],
                   cls_models: Sequence[tuple[str, str]], options: LocalizeOptions, device: str = "cpu", *,
                   labels: str | None = None, root: str = "", draw_dir: str | None = None,
                   json_path: str | None = None, force: bool = False,
                   engine: Callable | None = None) -> tuple[RunResult, dict]:
    """``vggproto localize``: boxes for the top classes of ``images`` or of a box list (scored where it has
    ground truth), from the union of the ``(deploy, weights)`` localisation nets and the fused classifiers;
    optionally drawn into ``draw_dir`` and written to ``json_path``; ``engine`` runs the nets (:func:`load_model`).
    Returns the run and its JSON summary."""
    from vggproto.data.boxes import parse_box_list
    from vggproto.evaluation.classify import class_names
    from vggproto.evaluation.evaluate import load_model
    from vggproto.localize.predict import load_loc_model
    if bool(images) == bool(list_path):
        raise VGGProtoError("give IMAGES or --list (not both)")
    if options.top < 1:
        raise VGGProtoError(f"--top must be at least 1, got {options.top}")
    if json_path:
        from vggproto.caffe.files import check_output
        models = (f for model in (*loc_models, *cls_models) for f in model)
        check_output(json_path, inputs=(list_path, labels, *images, *models), kind="text", force=force)
    locs = [load_loc_model(m, w, device, engine) for m, w in loc_models]
    clss = [load_model(m, w, device, engine=engine) for m, w in cls_models]
    classes = clss[0].num_classes
    entries = parse_box_list(list_path, need_boxes=False) if list_path else image_entries(images)
    if list_path:
        check_classes(entries, classes, list_path)
    result = localize_entries(entries, locs, clss, options, class_names(classes, labels), root, progress=True)
    for item in result.images if draw_dir else ():
        draw(item, draw_dir, root)
    summary = result.as_dict(options, [m.label for m in locs])
    if json_path:
        from vggproto.caffe.files import atomic_write_bytes
        atomic_write_bytes(json_path, json.dumps(summary, indent=1).encode())
    return result, summary


_PALETTE = ((0, 200, 0), (0, 165, 255), (255, 128, 0), (200, 0, 200), (0, 220, 220))


def draw(result: ImageResult, out_dir: str | os.PathLike, root: str = "") -> Path:
    """Write ``out_dir/<image stem>.png``: ground truth in white, the detections in colours (best first), each
    labelled with its class name and posterior."""
    from vggproto.data.datum import opencv
    from vggproto.data.sources import read_image
    cv2 = opencv()
    img = read_image(os.path.join(root, result.path) if root else result.path, True, where=result.path).copy()
    thick = max(1, round(min(img.shape[:2]) / 200))
    for box in result.gt_boxes:
        cv2.rectangle(img, _pt(box[:2]), _pt(box[2:]), (255, 255, 255), thick)
    for det, colour in reversed(list(zip(result.detections, _PALETTE))):
        cv2.rectangle(img, _pt(det.box[:2]), _pt(det.box[2:]), colour, thick)
        cv2.putText(img, f"{det.name[:24]} {det.score:.2f}", _pt((det.box[0] + 2, det.box[1] + 12 * thick)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour, thick)
    out = Path(out_dir) / (Path(result.path).stem + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), img):
        raise DataError(f"cannot write '{out}'")
    return out


def _pt(xy) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))
