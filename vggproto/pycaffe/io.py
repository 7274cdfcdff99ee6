"""pycaffe's ``caffe.io``: images in, blobs out (Transformer), and numpy <-> BlobProto/Datum conversions.

Images are H x W x K float arrays in [0, 1] (RGB), as pycaffe's skimage-based loader gives; the Transformer turns
them into the net's K x H x W input with Caffe's order of steps (resize, transpose, channel swap, raw scale, mean,
input scale) and back.  Images are read with Pillow and resized with torch's interpolation (pixel-centre aligned,
as skimage), so resized values can differ from pycaffe's in the last digits at the borders.
"""
from __future__ import annotations

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2


def load_image(filename: str, color: bool = True) -> np.ndarray:
    """An image as float32 H x W x 3 (``color``) or H x W x 1 in [0, 1]; colour images read as grey use skimage's
    luminance weights (0.2125, 0.7154, 0.0721), as pycaffe's loader does."""
    from PIL import Image
    with Image.open(filename) as image:
        grey = image.mode in ("L", "1", "I", "F", "LA", "P") and (image.mode != "P" or not color)
        array = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[:, :, np.newaxis]
    if color and array.shape[2] == 1:
        return np.tile(array, (1, 1, 3))
    if not color and array.shape[2] == 3:
        return (array @ np.array([0.2125, 0.7154, 0.0721], dtype=np.float32))[:, :, np.newaxis]
    return array


def resize_image(im: np.ndarray, new_dims: tuple[int, int], interp_order: int = 1) -> np.ndarray:
    """``im`` (H x W x K) resized to ``new_dims`` (nearest for order 0, bilinear for 1, spline otherwise)."""
    new_dims = (int(new_dims[0]), int(new_dims[1]))
    im = np.asarray(im, dtype=np.float32)
    if im.shape[:2] == new_dims:
        return im.copy()
    if interp_order > 1:
        from scipy.ndimage import zoom
        scale = (new_dims[0] / im.shape[0], new_dims[1] / im.shape[1]) + (1,) * (im.ndim - 2)
        return zoom(im, scale, order=interp_order).astype(np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(im.reshape(*im.shape[:2], -1).transpose(2, 0, 1)))[None]
    if interp_order == 0:
        out = torch.nn.functional.interpolate(tensor, size=new_dims, mode="nearest")
    else:
        out = torch.nn.functional.interpolate(tensor, size=new_dims, mode="bilinear", align_corners=False)
    return out[0].numpy().transpose(1, 2, 0).reshape(*new_dims, *im.shape[2:])


def oversample(images: list[np.ndarray] | np.ndarray, crop_dims: tuple[int, int]) -> np.ndarray:
    """pycaffe's 10-view crops per image: 4 corners and the centre, then the same five mirrored."""
    crop_dims = np.array(crop_dims)
    first = np.asarray(images[0])
    im_shape = np.array(first.shape[:2])
    corners = []
    for y in (0, im_shape[0] - crop_dims[0]):
        for x in (0, im_shape[1] - crop_dims[1]):
            corners.append((y, x))
    centre = tuple((im_shape / 2.0 - crop_dims / 2.0).astype(int))
    boxes = [*corners, centre] * 2
    crops = np.empty((10 * len(images), int(crop_dims[0]), int(crop_dims[1]), first.shape[-1]), dtype=np.float32)
    index = 0
    for im in images:
        for y, x in boxes:
            crops[index] = im[y:y + crop_dims[0], x:x + crop_dims[1], :]
            index += 1
        crops[index - 5:index] = crops[index - 5:index, :, ::-1, :]
    return crops


class Transformer:
    """Caffe's input preprocessing per input blob: ``inputs`` maps blob names to their (N, K, H, W) shapes."""

    def __init__(self, inputs: dict[str, tuple[int, ...]]):
        self.inputs = {name: tuple(shape) for name, shape in inputs.items()}
        self.transpose: dict = {}
        self.channel_swap: dict = {}
        self.raw_scale: dict = {}
        self.mean: dict = {}
        self.input_scale: dict = {}

    def _check(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise Exception(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """H x W x K image -> K x H x W net input (resize, transpose, swap, raw scale, mean, input scale)."""
        self._check(in_)
        caffe_in = np.asarray(data).astype(np.float32, copy=False)
        in_dims = self.inputs[in_][2:]
        if caffe_in.shape[:2] != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if self.transpose.get(in_) is not None:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if self.channel_swap.get(in_) is not None:
            caffe_in = caffe_in[self.channel_swap[in_], :, :]
        if self.raw_scale.get(in_) is not None:
            caffe_in = caffe_in * self.raw_scale[in_]
        if self.mean.get(in_) is not None:
            caffe_in = caffe_in - self.mean[in_]
        if self.input_scale.get(in_) is not None:
            caffe_in = caffe_in * self.input_scale[in_]
        return caffe_in.astype(np.float32, copy=False)

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`preprocess` (without the resize)."""
        self._check(in_)
        decaf_in = np.asarray(data).copy().squeeze()
        if self.input_scale.get(in_) is not None:
            decaf_in = decaf_in / self.input_scale[in_]
        if self.mean.get(in_) is not None:
            decaf_in = decaf_in + self.mean[in_]
        if self.raw_scale.get(in_) is not None:
            decaf_in = decaf_in / self.raw_scale[in_]
        if self.channel_swap.get(in_) is not None:
            decaf_in = decaf_in[np.argsort(self.channel_swap[in_]), :, :]
        if self.transpose.get(in_) is not None:
            decaf_in = decaf_in.transpose(np.argsort(self.transpose[in_]))
        # pycaffe's result is float32 (its blobs are): float64 arithmetic gives 1.0000000126 where float32 gives
        # 1.0, which skimage.img_as_ubyte refuses
        return decaf_in.astype(np.float32, copy=False)

    def set_transpose(self, in_: str, order: tuple[int, ...]) -> None:
        self._check(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = order

    def set_channel_swap(self, in_: str, order: tuple[int, ...]) -> None:
        self._check(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = order

    def set_raw_scale(self, in_: str, scale: float) -> None:
        self._check(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """A per-channel (K,) mean, or a K x H x W (or H x W) mean image; an image of another size than the input
        is resized to it, as current pycaffe does (``classify.py``'s 256 x 256 mean on a 227 input)."""
        self._check(in_)
        mean = np.asarray(mean)
        channels, in_dims = self.inputs[in_][1], tuple(self.inputs[in_][2:])
        if mean.ndim == 1:
            if mean.shape[0] != channels:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            mean = mean.reshape((1, *mean.shape)) if mean.ndim == 2 else mean
            if mean.ndim != 3:
                raise ValueError("Mean shape invalid")
            if mean.shape[0] != channels:
                raise ValueError("Mean shape incompatible with input shape.")
            if mean.shape[1:] != in_dims:
                # pycaffe rescales to [0, 1] around skimage's resize and back; bilinear resizing commutes with
                # that affine map, so resizing directly gives its values (and a constant mean stays constant
                # where pycaffe's 0/0 gives NaN)
                mean = resize_image(mean.transpose(1, 2, 0), in_dims).transpose(2, 0, 1)
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        self._check(in_)
        self.input_scale[in_] = scale


# ---------------------------------------------------------------------------------------------- protobuf arrays

def blobproto_to_array(blob: caffe_pb2.BlobProto, return_diff: bool = False) -> np.ndarray:
    """A BlobProto's data (or diff) as a float array of its shape (legacy num/channels/height/width if none)."""
    values = np.array(blob.diff if return_diff else blob.data, dtype=np.float32)
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        return values.reshape(blob.num, blob.channels, blob.height, blob.width)
    return values.reshape(tuple(blob.shape.dim))


def array_to_blobproto(arr: np.ndarray, diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """A BlobProto with ``arr``'s shape and values (and ``diff``)."""
    arr = np.asarray(arr)
    blob = caffe_pb2.BlobProto()
    blob.shape.dim.extend(arr.shape)
    blob.data.extend(arr.astype(float).flat)
    if diff is not None:
        blob.diff.extend(np.asarray(diff).astype(float).flat)
    return blob


def arraylist_to_blobprotovector_str(arraylist: list[np.ndarray]) -> bytes:
    """Serialized BlobProtoVector of the arrays."""
    vec = caffe_pb2.BlobProtoVector()
    vec.blobs.extend([array_to_blobproto(arr) for arr in arraylist])
    return vec.SerializeToString()


def blobprotovector_str_to_arraylist(text: bytes) -> list[np.ndarray]:
    """The arrays of a serialized BlobProtoVector."""
    vec = caffe_pb2.BlobProtoVector()
    vec.ParseFromString(text)
    return [blobproto_to_array(blob) for blob in vec.blobs]


def array_to_datum(arr: np.ndarray, label: int | None = None) -> caffe_pb2.Datum:
    """A K x H x W array as a Datum: bytes for uint8, float_data otherwise."""
    arr = np.asarray(arr)
    if arr.ndim != 3:
        raise ValueError("Incorrect array shape.")
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = arr.shape
    if arr.dtype == np.uint8:
        datum.data = arr.tobytes()
    else:
        datum.float_data.extend(arr.astype(float).flat)
    if label is not None:
        datum.label = label
    return datum


def datum_to_array(datum: caffe_pb2.Datum) -> np.ndarray:
    """A Datum's pixels as a K x H x W array (uint8 for byte data)."""
    shape = (datum.channels, datum.height, datum.width)
    if len(datum.data):
        return np.frombuffer(datum.data, dtype=np.uint8).reshape(shape)
    return np.array(datum.float_data).astype(float).reshape(shape)
