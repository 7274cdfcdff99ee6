"""Caffe ``Datum`` and mean-file (``BlobProto``) encoding and decoding.

Images inside vggproto's data pipeline are numpy arrays in OpenCV layout: ``(H, W, C)``, channels in the order
the record holds them (BGR for everything written by ``convert_imageset`` / read by ``cv2.imread``).  A raw
Datum stores planar CHW bytes, so decoding is a transpose; an encoded Datum holds the original file bytes.
"""
from __future__ import annotations

from types import ModuleType

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import DataError

# OpenCV imread/imdecode flags (numeric so that this module does not import cv2 at load time).
IMREAD_UNCHANGED, IMREAD_GRAYSCALE, IMREAD_COLOR = -1, 0, 1


def opencv() -> ModuleType:
    """The cv2 module, or a DataError saying how to get it (image decoding and resizing need OpenCV)."""
    try:
        import cv2
    except ImportError:
        raise DataError("image decoding/resizing needs OpenCV: pip install opencv-python-headless") from None
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is not None:  # vggproto names each undecodable image itself: no second, raw C++ line
        logging.setLogLevel(logging.LOG_LEVEL_FATAL)
    return cv2


def parse_datum(value: bytes, where: str) -> caffe_pb2.Datum:
    """Parse a serialized Datum; a DataError naming ``where`` if the bytes are not a Datum."""
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as exc:  # protobuf raises DecodeError (a subclass of Exception) on garbage
        raise DataError(f"{where}: not a Caffe Datum ({exc})") from None
    return datum


def decode_image_bytes(data: bytes, flag: int, where: str) -> np.ndarray:
    """Decode encoded image bytes with OpenCV (libjpeg-turbo) to HWC uint8, BGR for colour images.

    # Caffe: src/caffe/util/io.cpp DecodeDatumToCVMat — cv::imdecode, BGR, no conversion of the values.
    """
    cv2 = opencv()
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, flag) if buf.size else None
    if img is None:
        raise DataError(f"{where}: could not decode image ({len(data)} bytes); not a JPEG/PNG/BMP file?")
    return img if img.ndim == 3 else img[:, :, None]


def datum_to_image(datum: caffe_pb2.Datum, where: str, color: bool | None = None) -> np.ndarray:
    """The image of a Datum as HWC (uint8 for byte data, float32 for ``float_data``).

    ``color``: for encoded datums, True forces 3 channels, False forces gray, None keeps the file's own channel
    count (Caffe's DecodeDatumToCVMatNative).  Raw datums are returned as stored.
    """
    if datum.encoded:
        flag = IMREAD_UNCHANGED if color is None else (IMREAD_COLOR if color else IMREAD_GRAYSCALE)
        img = decode_image_bytes(datum.data, flag, where)
        if img.shape[2] == 4 and color is None:   # an alpha channel: Caffe would keep it; nets expect 3
            raise DataError(f"{where}: encoded image has 4 channels (alpha); set transform_param.force_color")
        return img
    c, h, w = datum.channels, datum.height, datum.width
    if c <= 0 or h <= 0 or w <= 0:
        raise DataError(f"{where}: raw Datum has no shape (channels={c} height={h} width={w})")
    n = c * h * w
    if datum.data:
        if len(datum.data) != n:
            raise DataError(f"{where}: raw Datum holds {len(datum.data)} bytes, expected {c}x{h}x{w} = {n}")
        chw = np.frombuffer(datum.data, dtype=np.uint8).reshape(c, h, w)
    elif len(datum.float_data) == n:
        chw = np.asarray(datum.float_data, dtype=np.float32).reshape(c, h, w)
    else:
        raise DataError(f"{where}: Datum has neither {n} data bytes nor {n} float_data values")
    return chw.transpose(1, 2, 0)


def image_to_datum(img: np.ndarray, label: int) -> caffe_pb2.Datum:
    """A raw Datum (planar CHW uint8) from an HWC uint8 image, fields set as Caffe's CVMatToDatum sets them.

    # Caffe: src/caffe/util/io.cpp CVMatToDatum — channels/height/width, encoded=false, data = CHW bytes.
    """
    if img.ndim == 2:
        img = img[:, :, None]
    datum = caffe_pb2.Datum()
    datum.channels, datum.height, datum.width = int(img.shape[2]), int(img.shape[0]), int(img.shape[1])
    datum.encoded = False
    datum.data = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.uint8).tobytes()
    datum.label = int(label)
    return datum


def encoded_datum(data: bytes, label: int) -> caffe_pb2.Datum:
    """An encoded Datum holding image file bytes (Caffe's ReadFileToDatum: shape fields left unset)."""
    datum = caffe_pb2.Datum()
    datum.data = data
    datum.label = int(label)
    datum.encoded = True
    return datum


def read_mean_file(path: str) -> np.ndarray:
    """The mean image of a ``.binaryproto`` BlobProto as a float32 (C, H, W) array.

    Accepts the legacy 4-D ``num/channels/height/width`` header (what compute_image_mean writes) and ``shape``.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"mean file '{path}': {exc.strerror}") from None
    blob = caffe_pb2.BlobProto()
    try:
        blob.ParseFromString(raw)
    except Exception as exc:
        raise DataError(f"mean file '{path}': not a BlobProto ({exc})") from None
    dims = list(blob.shape.dim) if blob.HasField("shape") else [blob.num, blob.channels, blob.height, blob.width]
    values = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
    while len(dims) > 3 and dims[0] == 1:
        dims = dims[1:]
    if len(dims) != 3 or int(np.prod(dims)) != values.size or values.size == 0:
        raise DataError(f"mean file '{path}': expected a 1xCxHxW blob with data, got shape {dims} and "
                        f"{values.size} values")
    return values.reshape(dims)


def mean_blob(mean_chw: np.ndarray) -> caffe_pb2.BlobProto:
    """A legacy 1xCxHxW BlobProto of a mean image, the layout compute_image_mean writes."""
    blob = caffe_pb2.BlobProto()
    blob.num = 1
    blob.channels, blob.height, blob.width = (int(d) for d in mean_chw.shape)
    blob.data.extend(np.asarray(mean_chw, dtype=np.float32).ravel().tolist())
    return blob
