"""Caffe's DataTransformer (``transform_param``), extended with the VGG paper's augmentation.

Order of operations per image (Caffe's order, with the VGG steps slotted in where the paper puts them):

1. decode (done by the source; encoded datums honour ``force_color`` / ``force_gray``)
2. VGG isotropic rescale: smallest side -> S (TRAIN: S fixed or uniform in [scale_min, scale_max];
   TEST: test_scale Q)  [extension]
3. crop ``crop_size``: TRAIN random offsets ``Rand(H - crop + 1)``, TEST centre ``(H - crop) / 2``
4. VGG colour shift: add ``sum_i alpha_i lambda_i p_i`` (BGR order of the net), TRAIN only  [extension]
5. subtract the mean: ``mean_file`` indexed at the *uncropped* position, or ``mean_value`` per channel
6. multiply by ``scale``
7. mirror: ``mirror && Rand(2)`` flips horizontally -- random in BOTH phases, as in Caffe

Random draws per image, in this order: S (if jittering), crop row, crop column, colour alphas, mirror.

Steps 5-7 commute with the flip as Caffe writes them (mean at the source pixel, flipped destination index).
# Caffe: src/caffe/data_transformer.cpp Transform(const Datum&, Dtype*) / Transform(const cv::Mat&, Blob*)
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.augment import VGGAugmentation, rescaled_size, resize
from vggproto.data.datum import read_mean_file
from vggproto.errors import DataError

log = logging.getLogger("vggproto.data.transform")


@dataclass
class Draw:
    """One image's random decisions: rescaled size, crop window, colour shift (BGR) and mirror flag."""

    size: tuple[int, int]
    h0: int
    w0: int
    crop_h: int
    crop_w: int
    shift: np.ndarray | None
    mirror: bool


class DataTransformer:
    """Turns one decoded HWC image into a CHW float32 array; picklable, RNG passed per call."""

    def __init__(self, param: caffe_pb2.TransformationParameter, train: bool, where: str, load_mean: bool = True):
        self.train, self.where = train, where
        self.scale = float(param.scale)
        self.mirror = bool(param.mirror)
        self.crop = int(param.crop_size)
        self.force_color, self.force_gray = bool(param.force_color), bool(param.force_gray)
        if self.force_color and self.force_gray:
            raise DataError(f"{where}: transform_param force_color and force_gray are exclusive")
        self.mean_file = param.mean_file if param.HasField("mean_file") else ""
        self.mean_values = np.asarray(param.mean_value, dtype=np.float32)
        if self.mean_file and self.mean_values.size:
            raise DataError(f"{where}: transform_param sets both mean_file and mean_value; use one")
        self.mean: np.ndarray | None = None   # CHW float32 mean image
        if self.mean_file and load_mean:
            self.mean = read_mean_file(self.mean_file)
        self.vgg = (VGGAugmentation(param.vgg_augmentation_param, self.crop, where)
                    if param.HasField("vgg_augmentation_param") else None)

    @property
    def decode_color(self) -> bool | None:
        """How encoded images are decoded: True colour, False gray, None native (Caffe's three cases)."""
        return True if self.force_color else False if self.force_gray else None

    def output_shape(self, channels: int, height: int, width: int) -> tuple[int, int, int]:
        """(C, H, W) of a transformed image whose decoded shape is (channels, height, width)."""
        rescaled = self.vgg is not None and (self.vgg.scale_min if self.train else self.vgg.test_scale)
        if self.crop and not rescaled and (height < self.crop or width < self.crop):
            # Caffe: data_transformer.cpp InferBlobShape — CHECK_GE(datum_height, crop_size)
            raise DataError(f"{self.where}: image {height}x{width} is smaller than crop_size {self.crop}")
        if self.crop:
            return channels, self.crop, self.crop
        return channels, height, width

    def draw(self, h: int, w: int, c: int, rng: np.random.Generator, where: str = "") -> Draw:
        """The random decisions for one decoded image of size (h, w, c), in Caffe's draw order.

        Shared by the numpy path below and the CUDA path (:mod:`vggproto.data.gpu`), so both make the same
        choices from the same seed.
        """
        size = self.vgg.draw_scale(self.train, rng) if self.vgg is not None else 0
        rh, rw = rescaled_size(h, w, size)
        h0, w0, ch, cw = self._crop_window(rh, rw, rng, where)
        shift = self.vgg.draw_color_shift(self.train, rng, c) if self.vgg is not None else None
        mirror = bool(self.mirror and rng.integers(2))
        return Draw((rh, rw), h0, w0, ch, cw, shift, mirror)

    def __call__(self, img: np.ndarray, rng: np.random.Generator, where: str = "") -> np.ndarray:
        """Transform one HWC image (uint8 or float) into a new CHW float32 array (a flipped view if mirrored)."""
        h, w, c = img.shape
        d = self.draw(h, w, c, rng, where)
        if d.size != (h, w):
            img = resize(img, d.size)
        # one pass: crop, HWC -> CHW and float32; then per-channel plane ops (fast, contiguous)
        out = np.empty((c, d.crop_h, d.crop_w), np.float32)
        out[...] = img[d.h0:d.h0 + d.crop_h, d.w0:d.w0 + d.crop_w].transpose(2, 0, 1)
        if d.shift is not None:
            out += d.shift[:, None, None]
        self._subtract_mean(out, d.h0, d.w0, (c, d.size[0], d.size[1]), where)
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        return out[:, :, ::-1] if d.mirror else out

    def _crop_window(self, h: int, w: int, rng: np.random.Generator, where: str) -> tuple[int, int, int, int]:
        if not self.crop:
            return 0, 0, h, w
        if h < self.crop or w < self.crop:
            raise DataError(f"{where}: image {h}x{w} is smaller than crop_size {self.crop}")
        if self.train:
            # Caffe: data_transformer.cpp — h_off = Rand(H - crop + 1), then w_off = Rand(W - crop + 1)
            h0 = int(rng.integers(h - self.crop + 1))
            w0 = int(rng.integers(w - self.crop + 1))
        else:
            h0, w0 = (h - self.crop) // 2, (w - self.crop) // 2
        return h0, w0, self.crop, self.crop

    def _subtract_mean(self, out: np.ndarray, h0: int, w0: int, full: tuple[int, int, int], where: str) -> None:
        if self.mean is not None:
            if self.mean.shape != full:
                raise DataError(f"{where}: mean file '{self.mean_file}' is {'x'.join(map(str, self.mean.shape))} "
                                f"but the image is {'x'.join(map(str, full))} (Caffe indexes the mean at the "
                                f"uncropped position)")
            out -= self.mean[:, h0:h0 + out.shape[1], w0:w0 + out.shape[2]]
        elif self.mean_values.size:
            c = out.shape[0]
            if self.mean_values.size == 1:
                out -= self.mean_values[0]
            elif self.mean_values.size == c:
                out -= self.mean_values[:, None, None]
            else:
                raise DataError(f"{self.where}: transform_param has {self.mean_values.size} mean_value entries; "
                                f"need 1 or one per channel ({c})")
