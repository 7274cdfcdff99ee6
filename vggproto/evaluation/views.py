"""Test-time views of an image (Sect. 3.2 of the paper): isotropic rescaling to Q, centre crop, g×g crop grids,
horizontal flips; and the dataset that decodes and rescales list-file images in worker processes.

Images follow the official release's convention: BGR 0-255 as ``cv2.imread`` returns them, minus the mean pixel,
rescaled with ``cv2.resize`` INTER_LINEAR (the same routine the training transformer uses), CHW float32.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch

from vggproto.data.augment import rescale_smallest_side
from vggproto.data.sources import read_image


def preprocess(img: np.ndarray, q: int, mean: Sequence[float], scale: float = 1.0) -> np.ndarray:
    """HWC BGR uint8 image -> CHW float32: smallest side rescaled to ``q`` (0: unchanged), mean pixel removed,
    then multiplied by ``scale`` (the net's training ``transform_param.scale``; 1 for the VGG release)."""
    out = rescale_smallest_side(img, q) if q else img
    out = out.astype(np.float32) - np.asarray(mean, dtype=np.float32)
    if scale != 1.0:   # Caffe: src/caffe/data_transformer.cpp — (pixel - mean) * scale
        out *= np.float32(scale)
    return np.ascontiguousarray(out.transpose(2, 0, 1))


def grid_offsets(size: int, crop: int, g: int) -> list[int]:
    """``g`` offsets of a ``crop``-long window on a ``size``-long side: first at 0, last at ``size - crop``, evenly
    spaced (floored); for odd ``g`` the middle one is the centre crop's ``(size - crop) // 2``."""
    if crop > size:
        raise ValueError(f"crop {crop} is larger than the side {size}")
    if g == 1:
        return [(size - crop) // 2]
    return [i * (size - crop) // (g - 1) for i in range(g)]


def crop_boxes(height: int, width: int, crop: int, g: int) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the g×g regular grid of crops, row-major."""
    return [(y, x) for y in grid_offsets(height, crop, g) for x in grid_offsets(width, crop, g)]


def flipped(views: torch.Tensor) -> torch.Tensor:
    """Horizontal flips of N×C×H×W views."""
    return torch.flip(views, dims=[-1])


def with_flips(views: torch.Tensor, flip: bool) -> torch.Tensor:
    """``views`` followed by their horizontal flips (when ``flip``)."""
    return torch.cat([views, flipped(views)]) if flip else views


def center_crop(image: torch.Tensor, crop: int) -> torch.Tensor:
    """The centre crop (Caffe's TEST offsets ``(H - crop) / 2``) of a C×H×W image, as a 1×C×crop×crop batch."""
    # Caffe: src/caffe/data_transformer.cpp — TEST phase crops at ((H - crop) / 2, (W - crop) / 2)
    y, x = (image.shape[1] - crop) // 2, (image.shape[2] - crop) // 2
    return image[None, :, y:y + crop, x:x + crop]


def grid_crops(image: torch.Tensor, crop: int, g: int) -> torch.Tensor:
    """The g² crops of a C×H×W image (row-major grid) as a g²×C×crop×crop batch."""
    boxes = crop_boxes(image.shape[1], image.shape[2], crop, g)
    return torch.stack([image[:, y:y + crop, x:x + crop] for y, x in boxes])


class ImageListDataset(torch.utils.data.Dataset):
    """Item i: ``(i, label, {Q: CHW float32 tensor} or None, error message or "")`` for a list file's entries.

    Decoding and rescaling run in DataLoader worker processes; a bad image is reported, not raised, so the caller
    decides whether it is fatal (``--skip-bad``).
    """

    def __init__(self, entries: Sequence[tuple[str, int, int]], list_path: str, root: str,
                 scales: Sequence[int], mean: Sequence[float], input_scale: float = 1.0):
        self.entries, self.list_path, self.root = list(entries), list_path, root
        self.scales, self.mean, self.input_scale = list(scales), tuple(mean), float(input_scale)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        name, label, line = self.entries[i]
        where = f"{self.list_path}:{line}"
        try:
            img = read_image(os.path.join(self.root, name) if self.root else name, True, where=where)
        except Exception as exc:   # DataError from OpenCV, or anything a broken file triggers
            return i, label, None, str(exc)
        views = {q: torch.from_numpy(preprocess(img, q, self.mean, self.input_scale)) for q in self.scales}
        return i, label, views, ""


def image_loader(dataset: ImageListDataset, workers: int) -> torch.utils.data.DataLoader:
    """In-order loader of single images (no collation), ``workers`` decoding processes."""
    from vggproto.data.loader import worker_init
    return torch.utils.data.DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                                       worker_init_fn=worker_init if workers else None,
                                       prefetch_factor=4 if workers else None)
