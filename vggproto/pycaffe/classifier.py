"""pycaffe's ``caffe.Classifier`` and ``caffe.Detector``: a TEST net plus its Transformer, for images and windows.

Classifier: images resized to ``image_dims``, then the centre crop or pycaffe's 10 oversampled views (their
predictions averaged).  Detector: crops of (ymin, xmin, ymax, xmax) windows, optionally with R-CNN's context
padding (the window grown so that ``context_pad`` pixels of surroundings land around it, mean-filled outside the
image), each warped to the net input.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np

from vggproto.pycaffe import io as caffe_io
from vggproto.pycaffe.net import TEST, Net


def _transformer(net: Net, mean: Any, input_scale: Any, raw_scale: Any, channel_swap: Any) -> caffe_io.Transformer:
    in_ = net.inputs[0]
    transformer = caffe_io.Transformer({in_: net.blobs[in_].data.shape})
    transformer.set_transpose(in_, (2, 0, 1))
    if mean is not None:
        transformer.set_mean(in_, mean)
    if input_scale is not None:
        transformer.set_input_scale(in_, input_scale)
    if raw_scale is not None:
        transformer.set_raw_scale(in_, raw_scale)
    if channel_swap is not None:
        transformer.set_channel_swap(in_, channel_swap)
    return transformer


class Classifier(Net):
    """``Classifier(model, weights, image_dims, mean, input_scale, raw_scale, channel_swap).predict(images)``."""

    def __init__(self, model_file: str | os.PathLike, pretrained_file: str | os.PathLike | None,
                 image_dims: Sequence[int] | None = None, mean: np.ndarray | None = None,
                 input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.crop_dims = np.array(self.blobs[self.inputs[0]].data.shape[2:])
        self.image_dims = np.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs: Sequence[np.ndarray], oversample: bool = True) -> np.ndarray:
        """Class scores (N x classes) of H x W x K images in [0, 1] (or whatever raw_scale expects)."""
        dims = tuple(int(d) for d in self.image_dims)
        images = np.zeros((len(inputs), *dims, inputs[0].shape[2]), dtype=np.float32)
        for index, image in enumerate(inputs):
            images[index] = caffe_io.resize_image(image, dims)
        if oversample:
            images = caffe_io.oversample(images, self.crop_dims)
        else:
            centre = np.array(dims) / 2.0
            crop = (np.tile(centre, 2) + np.concatenate([-self.crop_dims / 2.0, self.crop_dims / 2.0])).astype(int)
            images = images[:, crop[0]:crop[2], crop[1]:crop[3], :]
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(images), images.shape[3], *images.shape[1:3]), dtype=np.float32)
        for index, image in enumerate(images):
            caffe_in[index] = self.transformer.preprocess(in_, image)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        if oversample:
            predictions = predictions.reshape((len(predictions) // 10, 10, -1)).mean(1)
        return predictions


class Detector(Net):
    """``Detector(model, weights, mean, input_scale, raw_scale, channel_swap, context_pad).detect_windows(...)``."""

    def __init__(self, model_file: str | os.PathLike, pretrained_file: str | os.PathLike | None,
                 mean: np.ndarray | None = None, input_scale: float | None = None, raw_scale: float | None = None,
                 channel_swap: Sequence[int] | None = None, context_pad: int | None = None):
        super().__init__(model_file, TEST, weights=pretrained_file)
        self.transformer = _transformer(self, mean, input_scale, raw_scale, channel_swap)
        self.configure_crop(context_pad)

    def detect_windows(self, images_windows: Sequence[tuple[Any, Sequence]]) -> list[dict]:
        """Predictions for every window of every image: ``[(filename or H x W x K array, windows), ...]``."""
        crops = []
        for image, windows in images_windows:
            loaded = caffe_io.load_image(image).astype(np.float32) if isinstance(image, str) else np.asarray(image)
            crops += [self.crop(loaded, np.asarray(window)) for window in windows]
        in_ = self.inputs[0]
        caffe_in = np.zeros((len(crops), crops[0].shape[2], *self.blobs[in_].data.shape[2:]), dtype=np.float32)
        for index, crop in enumerate(crops):
            caffe_in[index] = self.transformer.preprocess(in_, crop)
        predictions = self.forward_all(**{in_: caffe_in})[self.outputs[0]]
        detections, index = [], 0
        for image, windows in images_windows:
            for window in windows:
                detections.append({"window": window, "prediction": predictions[index],
                                   "filename": image if isinstance(image, str) else None})
                index += 1
        return detections

    def detect_selective_search(self, image_fnames: Sequence[str]) -> list[dict]:
        """pycaffe's R-CNN flow: windows from the external ``selective_search_ijcv_with_python`` module (its
        ``get_windows`` runs MATLAB, hence absolute paths), then :meth:`detect_windows` on them."""
        try:
            import selective_search_ijcv_with_python as selective_search
        except ModuleNotFoundError as exc:
            if exc.name != "selective_search_ijcv_with_python":
                raise
            raise ModuleNotFoundError("detect_selective_search needs the selective_search_ijcv_with_python module "
                                      "on PYTHONPATH (github.com/sergeyk/selective_search_ijcv_with_python); or "
                                      "compute windows yourself and call detect_windows", name=exc.name) from None
        image_fnames = [os.path.abspath(name) for name in image_fnames]
        windows_list = selective_search.get_windows(image_fnames, cmd="selective_search_rcnn")
        return self.detect_windows(list(zip(image_fnames, windows_list)))

    def configure_crop(self, context_pad: int | None) -> None:
        """The crop size (H x W x K) and, with context padding, the mean colour filling outside the image."""
        in_ = self.inputs[0]
        transpose = self.transformer.transpose[in_]
        inverse = [transpose[t] for t in transpose]
        self.crop_dims = np.array(self.blobs[in_].data.shape[1:])[inverse]
        self.context_pad = context_pad
        if not context_pad:
            return
        mean = self.transformer.mean.get(in_)
        if mean is None:
            self.crop_mean = np.zeros(self.crop_dims, dtype=np.float32)
            return
        crop_mean = mean.copy().transpose(inverse)
        swap = self.transformer.channel_swap.get(in_)
        if swap is not None:
            crop_mean = crop_mean[:, :, [list(swap).index(i) for i in range(crop_mean.shape[2])]]
        if self.transformer.raw_scale.get(in_) is not None:
            crop_mean = crop_mean / self.transformer.raw_scale[in_]
        self.crop_mean = crop_mean

    def crop(self, im: np.ndarray, window: np.ndarray) -> np.ndarray:
        """The window (ymin, xmin, ymax, xmax) of ``im``, grown by the context padding when configured."""
        if not self.context_pad:
            return im[int(window[0]):int(window[2]), int(window[1]):int(window[3])]
        size = self.blobs[self.inputs[0]].width   # R-CNN's square warp
        scale = size / (1.0 * size - self.context_pad * 2)
        half_h, half_w = (window[2] - window[0] + 1) / 2.0, (window[3] - window[1] + 1) / 2.0
        centre = (window[0] + half_h, window[1] + half_w)
        box = np.round(np.tile(centre, 2) + scale * np.array((-half_h, -half_w, half_h, half_w)))
        scale_h, scale_w = size / (box[2] - box[0] + 1), size / (box[3] - box[1] + 1)
        pad_y, pad_x = round(max(0, -box[0]) * scale_h), round(max(0, -box[1]) * scale_w)
        im_h, im_w = im.shape[:2]
        box = np.clip(box, 0.0, [im_h, im_w, im_h, im_w])
        crop_h = min(round((box[2] - box[0] + 1) * scale_h), size - pad_y)
        crop_w = min(round((box[3] - box[1] + 1) * scale_w), size - pad_x)
        context = im[int(box[0]):int(box[2]), int(box[1]):int(box[3])]
        out = np.ones(self.crop_dims, dtype=np.float32) * self.crop_mean
        out[pad_y:pad_y + crop_h, pad_x:pad_x + crop_w] = caffe_io.resize_image(context, (crop_h, crop_w))
        return out
