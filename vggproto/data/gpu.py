"""Optional CUDA path: JPEG decode on the GPU (nvJPEG via ``torchvision.io.decode_jpeg(device="cuda")``) and
the DataTransformer's steps as tensor ops on the GPU.

The random decisions come from :meth:`DataTransformer.draw` with the same per-record seeds as the CPU path, so
a GPU batch makes the same crops, flips, scales and colour shifts; pixel values differ from OpenCV's only by
the interpolation's rounding (bilinear in float vs OpenCV's fixed-point INTER_LINEAR) and by nvJPEG's IDCT.
Used when ``torch.cuda.is_available()``; everything here raises a DataError otherwise.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from vggproto.data.transform import DataTransformer
from vggproto.errors import DataError

if TYPE_CHECKING:
    from vggproto.data.batches import Batch
    from vggproto.data.sources import DBSource, ListSource, RecordStream


def cuda_available() -> bool:
    return torch.cuda.is_available()


class TensorTransform:
    """The DataTransformer's steps as tensor ops on any device (CHW uint8/float in, CHW float32 out)."""

    def __init__(self, transformer: DataTransformer, device: str | torch.device = "cpu"):
        self.t, self.device = transformer, torch.device(device)
        self.mean = None
        if transformer.mean is not None:
            self.mean = torch.from_numpy(transformer.mean).to(self.device)
        self.mean_values = (torch.from_numpy(transformer.mean_values).to(self.device)
                            if transformer.mean_values.size else None)

    def __call__(self, img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        c, h, w = img.shape
        d = self.t.draw(h, w, c, rng)
        x = img.float()
        if d.size != (h, w):
            # bilinear, half-pixel centres, no antialias: the sampling of cv2 INTER_LINEAR
            x = F.interpolate(x[None], size=d.size, mode="bilinear", align_corners=False)[0]
            if not img.is_floating_point():
                x = x.round().clamp_(0, 255)   # OpenCV rounds back to uint8
        x = x[:, d.h0:d.h0 + d.crop_h, d.w0:d.w0 + d.crop_w]
        if d.shift is not None:
            x = x + torch.from_numpy(d.shift).to(x.device)[:, None, None]
        if self.mean is not None:
            if tuple(self.mean.shape) != (c,) + d.size:
                raise DataError(f"mean file '{self.t.mean_file}' is {tuple(self.mean.shape)}, image {(c,) + d.size}")
            x = x - self.mean[:, d.h0:d.h0 + d.crop_h, d.w0:d.w0 + d.crop_w]
        elif self.mean_values is not None:
            x = x - (self.mean_values[:, None, None] if self.mean_values.numel() > 1 else self.mean_values[0])
        if self.t.scale != 1.0:
            x = x * self.t.scale
        if d.mirror:
            x = x.flip(2)
        return x


class CudaJpegTransform:
    """Decode a list of JPEG byte strings on the GPU and transform them into one (N, C, H, W) float32 batch."""

    def __init__(self, transformer: DataTransformer, device: str = "cuda"):
        if not cuda_available():
            raise DataError("GPU decoding needs CUDA (torch.cuda.is_available() is False); use the CPU pipeline")
        self.t, self.device = transformer, torch.device(device)
        self.ops = TensorTransform(transformer, self.device)

    def decode(self, jpegs: list[bytes]) -> list[torch.Tensor]:
        """nvJPEG batch decode to (C, H, W) uint8 tensors in BGR order (the channel order of Caffe nets)."""
        return decode_jpegs(jpegs, self.t.force_gray, self.device)

    def __call__(self, jpegs: list[bytes], seeds: list[tuple[int, int]]) -> torch.Tensor:
        """Batch of the given JPEGs; record k draws from ``default_rng(seeds[k])`` like the CPU path."""
        images = self.decode(jpegs)
        return torch.stack([self.ops(img, np.random.default_rng(list(seed))) for img, seed in zip(images, seeds)])


def decode_jpegs(jpegs: list[bytes], gray: bool, device: torch.device) -> list[torch.Tensor]:
    """JPEG bytes to (C, H, W) uint8 tensors in BGR order on ``device`` (nvJPEG on CUDA, libjpeg-turbo on CPU)."""
    import warnings
    with warnings.catch_warnings():   # torchvision 0.29 flags its image codecs as deprecated (torchcodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg
        mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in jpegs]
        if device.type == "cuda":
            images = decode_jpeg(data, mode=mode, device=device)
        else:
            images = [decode_jpeg(d, mode=mode) for d in data]
    return [img.flip(0) if img.shape[0] == 3 else img for img in images]


class DeviceBatchMaker:
    """Batches decoded and transformed on a torch device (option ``gpu_decode``): JPEG records are decoded there,
    other records are decoded by the source on the CPU and uploaded; the random draws are the CPU path's.  As on
    the CPU path, each batch takes the shape of its first record."""

    def __init__(self, source: DBSource | ListSource, stream: RecordStream, transformer: DataTransformer,
                 batch_size: int, seed: int, device: str | torch.device, with_label: bool = True):
        self.source, self.stream, self.t = source, stream, transformer
        self.batch_size, self.seed, self.with_label = batch_size, seed, with_label
        self.device = torch.device(device)
        self.ops = TensorTransform(transformer, self.device)
        color = getattr(source, "color", None)
        self.gray = bool(transformer.force_gray or color is False)
        self.resize = (getattr(source, "new_height", 0), getattr(source, "new_width", 0))

    def _images(self, indices: list[int]) -> tuple[list[torch.Tensor], list[float]]:
        raw = [self.source.read_bytes(i) for i in indices]
        jpeg_at = [k for k, (data, _) in enumerate(raw) if data is not None and data[:2] == b"\xff\xd8"]
        decoded = dict(zip(jpeg_at, decode_jpegs([raw[k][0] for k in jpeg_at], self.gray, self.device)))
        images = []
        for k, index in enumerate(indices):
            if k not in decoded:   # not a JPEG: the source's own (OpenCV) decode, then upload
                img, _ = self.source.read(index)
                decoded[k] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).to(self.device)
            img = decoded[k]
            if self.resize[0] > 0 and tuple(img.shape[1:]) != self.resize:
                img = F.interpolate(img[None].float(), size=self.resize, mode="bilinear",
                                    align_corners=False)[0].round_().clamp_(0, 255)
            images.append(img)
        return images, [label for _, label in raw]

    def __call__(self, start: int) -> Batch:
        from vggproto.data.batches import Batch, shape_mismatch
        indices = [self.stream.index(start + i) for i in range(self.batch_size)]
        images, labels = self._images(indices)
        outs = [self.ops(img, np.random.default_rng([self.seed & 0xFFFFFFFF, start + k]))
                for k, img in enumerate(images)]
        first = tuple(outs[0].shape)
        for index, out in zip(indices[1:], outs[1:]):
            if tuple(out.shape) != first:
                # Caffe: src/caffe/layers/data_layer.cpp load_batch — the batch has its first datum's shape
                raise shape_mismatch(self.source.describe(index), tuple(out.shape), first,
                                     self.source.describe(indices[0]))
        data = torch.stack(outs)
        label = torch.tensor(labels, dtype=torch.float32, device=self.device)
        return Batch(start, [data, label] if self.with_label else [data])
