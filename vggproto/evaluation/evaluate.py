"""ILSVRC-style evaluation as in Sect. 3.2 / 4 of the paper: top-1 / top-5 error of one model or a fusion.

Modes (per test scale Q, the image's smallest side isotropically rescaled to Q):

* ``center``: the centre crop (the net's input size); with ``flip`` also its mirror image.
* ``dense``: the net made fully convolutional (:mod:`vggproto.net.dense`) on the whole image; the raw class score
  map (input of the final Softmax) is averaged over positions ("spatially averaged (sum-pooled)"), then soft-maxed;
  the posteriors of the image and its horizontal flip are averaged.
* ``crops``: a g×g regular grid of crops and their flips (2·g² views, 50 for g = 5), posteriors averaged.
* ``dense+crops``: the average of the dense and the crops posteriors (Table 5's "multi-crop & dense").

Several scales: posteriors averaged over scales; ``fuse``: averaged over models (Table 6's ensembles).  Views of
equal shape (all crops; whole images of equal size at one scale) share forward passes.  A pass holds at most
``batch`` 224×224 views' worth of pixels (a whole image at Q = 512 counts as about seven), so memory stays bounded
whatever the mode and scales: activations grow with pixels, not with views (a net of 28×28 crops passes 64 of
them where a VGG passes one 224² crop).  Progress is counted in
views (a dense+crops run at three scales has 156 per image), so a long run on a few images still moves.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from vggproto.errors import DataError, InputShapeError, VGGProtoError
from vggproto.evaluation.views import ImageListDataset, center_crop, grid_crops, image_loader, with_flips
from vggproto.vgg.configs import MEAN_BGR

log = logging.getLogger("vggproto.evaluation.evaluate")

MODES: tuple[str, ...] = ("center", "dense", "crops", "dense+crops")
#: ``--batch`` counts views of this side's square of pixels: the VGG crop, whatever the net's own crop size
BATCH_VIEW_SIDE = 224


# ------------------------------------------------------------------------------------------------ error arithmetic

def topk_hits(posterior: np.ndarray, label: int, ks: Sequence[int] = (1, 5)) -> list[bool]:
    """Whether ``label`` is among the top-k classes of ``posterior`` for each k.

    # Caffe: src/caffe/layers/accuracy_layer.cpp — correct iff fewer than k classes score strictly higher,
    # so ties with the true class count in its favour.
    """
    better = int(np.count_nonzero(posterior > posterior[label]))
    return [better < k for k in ks]


@dataclass
class ErrorCount:
    """Running top-1 / top-5 misses over ``images``."""

    images: int = 0
    top1_misses: int = 0
    top5_misses: int = 0

    def add(self, posterior: np.ndarray, label: int) -> None:
        hit1, hit5 = topk_hits(posterior, label)
        self.images += 1
        self.top1_misses += not hit1
        self.top5_misses += not hit5

    def errors(self) -> dict[str, float]:
        """Errors in percent, as the paper's tables print them."""
        n = max(self.images, 1)
        return {"top1_error": 100.0 * self.top1_misses / n, "top5_error": 100.0 * self.top5_misses / n}


def fuse(posteriors: Iterable[np.ndarray]) -> np.ndarray:
    """Average of soft-max posteriors (scales, views, evaluation modes or models alike)."""
    stacked = np.stack(list(posteriors))
    return stacked.mean(axis=0)


# ------------------------------------------------------------------------------------------------ models

@dataclass
class Model:
    """One dense net with its weights, ready to score views."""

    net: torch.nn.Module
    input_blob: str
    score_blob: str
    crop_size: int
    num_classes: int
    label: str

    def posteriors(self, views: torch.Tensor, max_pixels: int) -> torch.Tensor:
        """Per-view soft-max posteriors (N×K) of N views: score maps averaged over space, then soft-max; each
        forward pass takes as many views as fit in ``max_pixels`` input pixels (at least one)."""
        out = []
        batch = max(1, max_pixels // (views.shape[2] * views.shape[3]))
        for start in range(0, views.shape[0], batch):
            try:
                self.net.forward(**{self.input_blob: views[start:start + batch]})
            except (RuntimeError, InputShapeError) as exc:   # e.g. a kernel larger than the input: the scale
                # is too small (the interpreter locates what PyTorch refused: net/reshape.py)
                raise DataError(f"{self.label}: cannot run the net on views of size {tuple(views.shape[2:])} "
                                f"({str(exc).splitlines()[0]}); use a larger scale") from None
            scores = self.net.blobs[self.score_blob]
            if scores.dim() == 4:
                if scores.shape[2] * scores.shape[3] == 0:
                    raise DataError(f"{self.label}: input {tuple(views.shape[2:])} is too small for the net "
                                    f"(empty score map); use a larger scale")
                scores = scores.mean(dim=(2, 3))
            out.append(torch.softmax(scores.reshape(scores.shape[0], -1).double(), dim=1))
        return torch.cat(out)


def load_model(model_path: str, weights: str, device: str = "cpu", channels_last: bool = False,
               engine: Callable | None = None) -> Model:
    """The dense version of a deploy net (or a given dense net) with classification or dense weights;
    ``channels_last`` keeps its 4-D weights (so its activations) in NHWC memory: same scores, faster passes;
    ``engine`` (``vggproto.commands.engine_option.engine_hook``) puts the net on another inference engine."""
    from vggproto.net.dense import load_dense
    net, dense = load_dense(model_path, weights, device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    if engine is not None:
        net = engine(net, (dense.score_blob,))
    shapes = net.blob_shapes
    crop = int(dense.input_shape[-1]) if len(dense.input_shape) == 4 else 0
    classes = int(shapes[dense.score_blob][1]) if len(shapes[dense.score_blob]) > 1 else 0
    return Model(net, dense.input_blob, dense.score_blob, crop, classes, f"{model_path}:{weights}")


# ------------------------------------------------------------------------------------------------ the run

@dataclass
class EvalOptions:
    """What to evaluate: mode, test scales Q, flips, grid size, preprocessing and batching."""

    mode: str = "dense"
    scales: tuple[int, ...] = (256, 384, 512)
    flip: bool | None = None            # None: on for dense/crops (the paper), off for center
    grid: int = 5
    crop_size: int = 0                  # 0: the first model's input size
    mean: tuple[float, ...] = MEAN_BGR
    input_scale: float = 1.0            # multiplies (pixel - mean), as transform_param.scale
    batch: int = 50
    workers: int = 2
    skip_bad: bool = False
    root: str = ""
    progress: bool = True
    keep_posteriors: bool = False       # keep each image's final (fused) posterior in EvalResult.posteriors
    channels_last: bool = False         # models in NHWC memory (load_model)

    def components(self) -> list[str]:
        return ["dense", "crops"] if self.mode == "dense+crops" else [self.mode]

    def flips(self) -> bool:
        return self.mode != "center" if self.flip is None else self.flip

    def views_per_image(self) -> int:
        """Forward-pass views of one image: per scale, 1 (dense, center) or g² (crops) per component, x2 flipped."""
        per_scale = sum(self.grid ** 2 if c == "crops" else 1 for c in self.components())
        return per_scale * len(self.scales) * (2 if self.flips() else 1)


@dataclass
class EvalResult:
    """Summary of a run: fused errors plus per-model and per-component errors, bad images, speed."""

    counts: dict[str, ErrorCount] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    seconds: float = 0.0
    posteriors: dict[int, np.ndarray] = field(default_factory=dict)   # list index -> posterior (keep_posteriors)

    def as_dict(self, options: EvalOptions, models: Sequence[Model]) -> dict:
        final = self.counts["fused"] if len(models) > 1 else self.counts[_key(0, None)]
        out = {"mode": options.mode, "scales": list(options.scales), "flip": options.flips(),
               "grid": options.grid if "crops" in options.components() else None, "images": final.images,
               **final.errors(), "error_units": "percent", "skipped": len(self.bad), "bad_images": self.bad,
               "seconds": round(self.seconds, 3),
               "images_per_second": round(final.images / self.seconds, 3) if self.seconds else None, "models": []}
        for m, model in enumerate(models):
            entry = {"model": model.label, **self.counts[_key(m, None)].errors()}
            if len(options.components()) > 1:
                entry["components"] = {c: self.counts[_key(m, c)].errors() for c in options.components()}
            out["models"].append(entry)
        return out


def _key(model: int, component: str | None) -> str:
    return f"model{model}" if component is None else f"model{model}/{component}"


def _views(image: torch.Tensor, component: str, options: EvalOptions, crop: int) -> torch.Tensor:
    if component == "dense":
        return with_flips(image[None], options.flips())
    if component == "crops":
        return with_flips(grid_crops(image, crop, options.grid), options.flips())
    return with_flips(center_crop(image, crop), options.flips())


class _Accumulator:
    """Per-image posterior sums, finalised into the error counts once every (component, scale) is in."""

    def __init__(self, n_models: int, options: EvalOptions):
        self.n_models, self.components, self.keep = n_models, options.components(), options.keep_posteriors
        self.expected = len(options.scales) * len(self.components)
        self.pending: dict[int, tuple[int, dict, int]] = {}
        self.result = EvalResult()
        keys = [_key(m, c) for m in range(n_models) for c in [None, *self.components]] + ["fused"]
        self.result.counts = {k: ErrorCount() for k in keys}

    def add(self, index: int, label: int, component: str, posts: list[np.ndarray]) -> None:
        _, sums, seen = self.pending.get(index, (label, {}, 0))
        for m, post in enumerate(posts):
            key = (m, component)
            sums[key] = sums[key] + post if key in sums else post.copy()
        seen += 1
        if seen < self.expected:
            self.pending[index] = (label, sums, seen)
            return
        self.pending.pop(index, None)
        self._finish(index, label, sums)

    def _finish(self, index: int, label: int, sums: dict) -> None:
        per_model = []
        for m in range(self.n_models):
            comps = [sums[(m, c)] / (self.expected // len(self.components)) for c in self.components]
            for c, post in zip(self.components, comps):
                self.result.counts[_key(m, c)].add(post, label)
            combined = fuse(comps)
            self.result.counts[_key(m, None)].add(combined, label)
            per_model.append(combined)
        final = fuse(per_model)
        self.result.counts["fused"].add(final, label)
        if self.keep:
            self.result.posteriors[index] = final


class _Packer:
    """Collects views of equal shape (one bucket per shape, e.g. per scale) and scores each bucket together.

    Sizes are counted in input pixels, ``max_pixels`` per forward pass (``--batch`` 224² views): a bucket is
    scored as soon as one more item like the last would not fit in a pass, so passes are as full as whole items
    allow and never split into a full pass and a small remainder (VGG's 18-view crop sets at ``--batch 50``:
    passes of 36, not 50 + 4); an item larger than a pass alone is split by :meth:`Model.posteriors`.  When all buckets
    together hold more than four passes' worth the oldest bucket is scored, so whole images of many different
    sizes do not pile up.  ``views_done`` counts the views run for the progress display: each one once per model.
    """

    def __init__(self, models: Sequence[Model], max_pixels: int, sink: _Accumulator, device: str):
        self.models, self.max_pixels, self.sink, self.device = models, max_pixels, sink, device
        self.buckets: dict[tuple, tuple[list, list]] = {}   # view shape -> (items, view tensors), oldest first
        self.pending = 0                                     # pixels waiting in all buckets
        self.views_done = 0

    def add(self, index: int, label: int, component: str, views: torch.Tensor) -> None:
        shape = tuple(views.shape[1:])
        items, tensors = self.buckets.setdefault(shape, ([], []))
        items.append((index, label, component, views.shape[0]))
        tensors.append(views)
        item_pixels = views.shape[0] * shape[-1] * shape[-2]
        self.pending += item_pixels
        if sum(v.shape[0] for v in tensors) * shape[-1] * shape[-2] + item_pixels > self.max_pixels:
            self._score(shape)
        while self.pending > 4 * self.max_pixels:
            self._score(next(iter(self.buckets)))

    def flush(self) -> None:
        """Score everything still pending."""
        for shape in list(self.buckets):
            self._score(shape)

    def _score(self, shape: tuple) -> None:
        items, tensors = self.buckets.pop(shape)
        batch = torch.cat(tensors).to(self.device, non_blocking=True)
        self.pending -= batch.shape[0] * shape[-1] * shape[-2]
        self.views_done += batch.shape[0] * len(self.models)
        posts = [model.posteriors(batch, self.max_pixels).cpu().numpy() for model in self.models]
        start = 0
        for index, label, component, n in items:
            per_model = [p[start:start + n].mean(axis=0) for p in posts]
            self.sink.add(index, label, component, per_model)
            start += n


def check_labels(entries: Sequence[tuple[str, int, int]], list_path: str, classes: int) -> None:
    """Every label must be a class index of the net (0 .. classes - 1)."""
    for name, label, line in entries:
        if not 0 <= label < classes:
            raise DataError(f"{list_path}:{line}: label {label} of '{name}' is out of range; the net has "
                            f"{classes} classes (labels 0..{classes - 1})")


def evaluate(models: Sequence[Model], list_path: str, options: EvalOptions, device: str = "cpu",
             limit: int | None = None) -> EvalResult:
    """Run the evaluation of ``models`` (fused when several) over a Caffe list file ``<path> <label>``."""
    from vggproto.data.sources import parse_list_file
    if options.mode not in MODES:
        raise VGGProtoError(f"unknown --mode '{options.mode}'; supported: {', '.join(MODES)}")
    if not options.scales or any(q <= 0 for q in options.scales):
        raise VGGProtoError(f"--scales must be positive integers, got {list(options.scales)}")
    crop = options.crop_size or models[0].crop_size
    if options.mode != "dense" and any(q < crop for q in options.scales):
        raise VGGProtoError(f"--scales {list(options.scales)}: every Q must be at least the crop size {crop}")
    classes = {m.num_classes for m in models}
    if len(classes) != 1:
        raise VGGProtoError(f"fused models disagree on the number of classes: {sorted(classes)}")
    entries = parse_list_file(list_path)[:limit]
    check_labels(entries, list_path, classes.pop())
    sink = _Accumulator(len(models), options)
    packer = _Packer(models, options.batch * BATCH_VIEW_SIDE ** 2, sink, device)
    dataset = ImageListDataset(entries, list_path, options.root, options.scales, options.mean,
                             options.input_scale)
    started = time.perf_counter()
    per_image = options.views_per_image() * len(models)   # views run: each fused model scores every view
    with torch.inference_mode(), _progress(len(entries) * per_image, options.progress) as bar:
        for index, label, views, error in image_loader(dataset, options.workers):
            if error:
                if not options.skip_bad:
                    raise DataError(f"{error} (use --skip-bad to skip unreadable images)")
                log.warning("skipping bad image: %s", error)
                sink.result.bad.append(error)
                bar.update(per_image)
                continue
            for q in options.scales:
                for component in options.components():
                    packer.add(index, label, component, _views(views[q], component, options, crop))
                    bar.update(packer.views_done)
                    packer.views_done = 0
        packer.flush()
        bar.update(packer.views_done)
    sink.result.seconds = time.perf_counter() - started
    if not sink.result.counts["fused"].images:
        raise DataError(f"{list_path}: no readable image ({len(sink.result.bad)} skipped)")
    return sink.result


def _progress(total_views: int, enabled: bool):
    """A bar on a terminal, a line with rate and ETA every 500 views in a log (:mod:`vggproto.data.progress`)."""
    from vggproto.data.progress import Progress
    return Progress(total_views, "evaluate", every=500, enabled=enabled, unit="view",
                    line="{what}: {n}/{total} views, {rate:.1f} views/s, ETA {eta}")


def format_table(summary: dict) -> str:
    """The paper's table layout: one row per model (and component), then the fusion."""
    scales = ",".join(str(q) for q in summary["scales"])
    lines = [f"mode {summary['mode']}, Q = {scales}, flip {'on' if summary['flip'] else 'off'}, "
             f"{summary['images']} images" + (f" ({summary['skipped']} skipped)" if summary["skipped"] else ""),
             f"{'':<40} {'top-1 err (%)':>14} {'top-5 err (%)':>14}"]
    for model in summary["models"]:
        for name, errs in model.get("components", {}).items():
            lines.append(f"{_short(model['model']) + ' ' + name:<40} {errs['top1_error']:>14.2f} "
                         f"{errs['top5_error']:>14.2f}")
        lines.append(f"{_short(model['model']):<40} {model['top1_error']:>14.2f} {model['top5_error']:>14.2f}")
    if len(summary["models"]) > 1:
        lines.append(f"{'fusion (average of posteriors)':<40} {summary['top1_error']:>14.2f} "
                     f"{summary['top5_error']:>14.2f}")
    return "\n".join(lines)


def _short(label: str) -> str:
    """The weights file's name (the JSON keeps the full ``deploy:weights`` label)."""
    name = os.path.basename(label.rsplit(":", 1)[-1])
    return name if len(name) <= 38 else "..." + name[-35:]
