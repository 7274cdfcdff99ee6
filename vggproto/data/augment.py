"""The VGG paper's training augmentation (Simonyan & Zisserman 2015, Sect. 3.1), pieces used by the transformer.

* Isotropic rescaling: the smallest image side becomes S; S is fixed or drawn uniformly per image from
  ``[scale_min, scale_max]`` (scale jittering, S_min = 256, S_max = 512 in the paper); at test time Q.
* Random RGB colour shift of Krizhevsky et al. (2012): add ``sum_i alpha_i * lambda_i * p_i`` with
  ``alpha_i ~ N(0, sigma)`` drawn once per image, ``lambda_i, p_i`` the eigenvalues/eigenvectors of the RGB pixel
  covariance of the training set (0-255 scale).  Nets read BGR, so the RGB shift is reversed before adding.
"""
from __future__ import annotations

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.data.datum import opencv
from vggproto.errors import DataError

# ImageNet RGB pixel-covariance eigen-decomposition as published with AlexNet re-implementations
# (eigenvalues 0.2175, 0.0188, 0.0045 on the [0, 1] scale, times 255); one eigenvector per row, RGB components.
IMAGENET_EIGENVALUES = np.array([55.46, 4.794, 1.148], dtype=np.float64)
IMAGENET_EIGENVECTORS = np.array([[-0.5675, -0.5808, -0.5836],
                                  [0.7192, -0.0045, -0.6948],
                                  [0.4009, -0.8140, 0.4203]], dtype=np.float64)


class VGGAugmentation:
    """Validated settings of a ``vgg_augmentation_param`` and the random draws it needs."""

    def __init__(self, param: caffe_pb2.VGGAugmentationParameter, crop_size: int, where: str):
        self.scale_min = int(param.scale_min)
        self.scale_max = int(param.scale_max) if param.scale_max else self.scale_min
        self.test_scale = int(param.test_scale)
        self.color_std = float(param.color_shift_std)
        if self.scale_max < self.scale_min:
            raise DataError(f"{where}: vgg_augmentation_param scale_max {self.scale_max} < scale_min "
                            f"{self.scale_min}")
        for name, s in (("scale_min", self.scale_min), ("test_scale", self.test_scale)):
            if s and crop_size and s < crop_size:
                raise DataError(f"{where}: vgg_augmentation_param {name} {s} is smaller than crop_size {crop_size}")
        if (self.scale_min or self.test_scale) and not crop_size:
            raise DataError(f"{where}: vgg_augmentation_param rescaling needs transform_param.crop_size "
                            f"(rescaled images have varying shapes)")
        if self.color_std < 0:
            raise DataError(f"{where}: vgg_augmentation_param color_shift_std must be >= 0")
        self.eigenvalues = _floats(param.eigenvalue, 3, IMAGENET_EIGENVALUES, "eigenvalue", where)
        self.eigenvectors = _floats(param.eigenvector, 9, IMAGENET_EIGENVECTORS, "eigenvector", where).reshape(3, 3)

    def draw_scale(self, train: bool, rng: np.random.Generator) -> int:
        """S for this image (0: keep the size)."""
        if not train:
            return self.test_scale
        if self.scale_max > self.scale_min:
            return int(rng.integers(self.scale_min, self.scale_max + 1))
        return self.scale_min

    def draw_color_shift(self, train: bool, rng: np.random.Generator, channels: int) -> np.ndarray | None:
        """The per-pixel BGR shift vector for this image, or None (TEST, disabled, or not a colour image)."""
        if not train or self.color_std == 0 or channels != 3:
            return None
        alpha = rng.normal(0.0, self.color_std, size=3)
        rgb = (alpha * self.eigenvalues) @ self.eigenvectors
        return rgb[::-1].astype(np.float32)


def _floats(values, n: int, default: np.ndarray, name: str, where: str) -> np.ndarray:
    if len(values) == 0:
        return default.ravel().copy()
    if len(values) != n:
        raise DataError(f"{where}: vgg_augmentation_param needs {n} {name} values, got {len(values)}")
    return np.asarray(values, dtype=np.float64)


def rescaled_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(height, width) after isotropic rescaling of the smallest side to ``size`` (0: unchanged)."""
    if size <= 0 or min(h, w) == size:
        return h, w
    if h <= w:
        return size, max(1, int(round(w * size / h)))
    return max(1, int(round(h * size / w))), size


def resize(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize`` INTER_LINEAR of an HWC image to (height, width), keeping the channel axis."""
    cv2 = opencv()
    out = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return out if out.ndim == 3 else out[:, :, None]


def rescale_smallest_side(img: np.ndarray, size: int) -> np.ndarray:
    """Isotropically resize an HWC image so that its smallest side is ``size`` (INTER_LINEAR; no-op if equal)."""
    target = rescaled_size(img.shape[0], img.shape[1], size)
    return img if target == img.shape[:2] else resize(img, target)
