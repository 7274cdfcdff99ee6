"""Localisation layers (Appendix A of the paper), vggproto extensions (BVLC Caffe has neither type):

* ``BoxData``: images, classes and ground-truth boxes from a box list file (:mod:`vggproto.data.boxes`) through
  Caffe's DataTransformer and the VGG augmentation; the box follows the rescale / crop / mirror.  Parameters are
  read from ``image_data_param`` (``source``, ``batch_size``, ``shuffle``, ``root_folder``, ``is_color``,
  ``rand_skip``) and ``transform_param``.  Tops: ``data, box`` or ``data, label, box``; ``box`` is N×4
  ``(cx, cy, w, h)`` relative to the crop.
* ``ClassBox``: per-class regression (PCR) picks, for each sample, the four outputs of its class out of the
  N×4K prediction: bottoms ``(prediction, label)``, top N×4.  Followed by a ``EuclideanLoss`` against the box,
  the other 4(K-1) outputs get an exactly zero gradient (a gather's backward scatters into zeros).
"""
from __future__ import annotations

import logging

import torch

from vggproto.data.boxes import BoxBatchMaker, BoxListSource
from vggproto.data.build import make_feed, make_stream, rand_skip, rank_batch, require_file, seeds
from vggproto.data.sources import permutation_order
from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError
from vggproto.layers.base import TRACED
from vggproto.layers.common import count
from vggproto.layers.data import FeedLayer, layer_where, located
from vggproto.layers.registry import CaffeLayer, LayerSpec, register

log = logging.getLogger("vggproto.layers.box_data")


@register("BoxData")
class BoxDataLayer(FeedLayer):
    """Image + class + box batches from a box list file (see the module docstring)."""

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p, opts = spec.param.image_data_param, spec.options
        where = layer_where(spec)
        self._check_tops(2, 3)
        transformer = DataTransformer(spec.param.transform_param, spec.train, where,
                                      load_mean=not opts.dry_run)
        if not transformer.crop:
            raise spec.error("BoxData needs transform_param.crop_size (boxes are normalised by the square crop)")
        batch = rank_batch(p.batch_size, opts, spec.train, where)
        channels = 3 if (p.is_color and not transformer.force_gray) or transformer.force_color else 1
        shape = (channels, transformer.crop, transformer.crop)
        self.feed = None
        if not opts.dry_run:
            try:
                source = BoxListSource(require_file(p.source, "image_data_param.source", where), p.root_folder,
                                       channels == 3)
            except DataError as exc:
                raise located(exc, where) from None
            log.info("A total of %d boxes in %d images.", len(source), len(source.entries))
            seed, shuffle_seed = seeds(opts)
            order = permutation_order(len(source), shuffle_seed) if p.shuffle else None
            stream = make_stream(len(source), opts, spec.train, rand_skip(p.rand_skip, len(source), seed, where),
                                 order)
            maker = BoxBatchMaker(source, stream, transformer, batch, shape, seed, len(spec.param.top) == 3)
            self.feed = make_feed(maker, batch, opts)
        self.top_shapes = [(batch, *shape)] + [(batch,)] * (len(spec.param.top) - 2) + [(batch, 4)]
        if not opts.dry_run:   # a shapes-only build read no data: no data size to report
            log.info("output data size: %d,%d,%d,%d", batch, *shape)


@register("ClassBox")
class ClassBoxLayer(CaffeLayer):
    """The four box outputs of each sample's class (per-class regression)."""
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        if len(spec.param.bottom) != 2 or len(spec.param.top) != 1:
            raise spec.error("needs 2 bottoms (N x 4K box predictions, N labels) and 1 top")
        pred, label = spec.bottom_shapes
        per_sample = count(pred, 1)
        if not pred or per_sample % 4:
            raise spec.error(f"bottom 0 has shape {tuple(pred)}: it needs 4 outputs per class (N x 4K)")
        if count(label) != pred[0]:
            raise spec.error(f"bottom 1 has {count(label)} labels for {pred[0]} samples; one class per sample")
        self.classes = per_sample // 4
        self.top_shapes = [(pred[0], 4)]

    def forward(self, pred: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor]:
        lab = label.detach().reshape(-1).long()
        if bool(((lab < 0) | (lab >= self.classes)).any()):
            bad = lab[(lab < 0) | (lab >= self.classes)][0].item()
            raise DataError(f"layer '{self.spec.name}' (ClassBox): label {bad} is outside the {self.classes} "
                            f"classes [0, {self.classes - 1}] of the {4 * self.classes}-output prediction")
        grouped = pred.reshape(pred.shape[0], self.classes, 4)
        index = lab.to(pred.device).view(-1, 1, 1).expand(-1, 1, 4)
        return (grouped.gather(1, index).reshape(pred.shape[0], 4),)
