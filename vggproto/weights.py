"""Fast, exact reading and writing of Caffe weights (caffemodel and Caffe HDF5).

A caffemodel is one serialized ``NetParameter`` of ~550 MB for VGG-16.  Decoding it through protobuf copies every
float into a Python-visible repeated field (≈1.8 s, 2× the file in memory).  Here the file is ``mmap``-ed and
walked with :mod:`vggproto.wire`; each packed float run becomes a zero-copy numpy view of the mapping (private,
copy-on-write, so arrays are writable and the file is never modified).  Only the small per-layer structure goes
through protobuf.  Writing streams each blob straight from its array into a temp file that is renamed into place.

Shapes follow Caffe (``src/caffe/blob.cpp`` FromProto): legacy num/channels/height/width win when present and
give a 4-D array, else ``shape``; ``double_data`` is used when non-empty.  :func:`fit_blob` is Caffe's
``ShapeEquals`` for loading such arrays into a layer.
"""
from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from vggproto._pb import caffe_pb2
from vggproto.errors import WeightsError
from vggproto.wire import (FIXED32, FIXED64, LENGTH, VARINT, Field, Part, WireError, encode_tag, encode_varint,
                           fixed_run, iter_fields, part_size, read_field, split_message, unpacked_values,
                           write_part)

log = logging.getLogger("vggproto.weights")

Weights = dict[str, list[np.ndarray]]
_MAGIC = {b"\xff\xd8\xff": "a JPEG image", b"\x89PNG": "a PNG image", b"GIF8": "a GIF image",
          b"PK\x03\x04": "a zip archive (a PyTorch .pt file?)", b"\x1f\x8b": "a gzip file",
          b"\x93NUMPY": "a numpy .npy file"}
# (field number of the layer list in NetParameter, name field, blobs field, embedded V0 layer field)
_V1 = (2, 4, 6, 1)
_V2 = (100, 1, 7, None)
_V0 = (None, 1, 50, None)
_FLOAT_TAG, _DOUBLE_TAG = 5 << 3 | FIXED32, 8 << 3 | FIXED64  # unpacked data / double_data
_DIFF_TAGS = {6 << 3 | FIXED32: 4, 9 << 3 | FIXED64: 8}        # unpacked diff / double_diff


# --------------------------------------------------------------------------------------------------------------
# Opening and sniffing
# --------------------------------------------------------------------------------------------------------------

def _open_map(path: str) -> mmap.mmap:
    """Map ``path`` privately (copy-on-write): arrays viewing it are writable, the file stays untouched."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                raise WeightsError(f"{path}: empty file, expected a caffemodel or Caffe HDF5 weights")
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, expected a weights file") from None
    except PermissionError:
        raise WeightsError(f"{path}: permission denied") from None


def _sniff(buf: mmap.mmap, path: str) -> str:
    """Return 'hdf5' or 'protobuf'; refuse well-known non-weight formats by their magic bytes."""
    head = buf[:16]
    for magic, what in _MAGIC.items():
        if head.startswith(magic):
            raise WeightsError(f"{path}: this is {what}, not a caffemodel or Caffe HDF5 weights file")
    from vggproto.weights_hdf5 import is_hdf5
    return "hdf5" if is_hdf5(buf) else "protobuf"


def _looks_like_text(buf: mmap.mmap) -> bool:
    head = buf[:4096]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:
            return False
        text = head[:exc.start].decode("utf-8")
    return all(ch.isprintable() or ch in "\t\r\n" for ch in text) and any(ch in text for ch in ":{")


# --------------------------------------------------------------------------------------------------------------
# Scanning a NetParameter
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    name: str = ""
    blobs: list = field(default_factory=list)     # (start, end) payload spans of BlobProto messages
    header: list = field(default_factory=list)    # serialized non-blob fields (kept only when asked)


def _scan_layer(buf, start: int, end: int, kind: tuple, keep: bool) -> _Layer:
    _, name_no, blob_no, v0_no = kind
    layer = _Layer()
    for raw in iter_fields(buf, start, end):
        if raw.number == blob_no:
            if raw.wire_type != LENGTH:
                raise WireError(f"blobs field has wire type {raw.wire_type}, expected a message", raw.start)
            layer.blobs.append((raw.data_start, raw.end))
        elif v0_no is not None and raw.number == v0_no and raw.wire_type == LENGTH:
            inner = _scan_layer(buf, raw.data_start, raw.end, _V0, keep)  # a V0 layer embedded in a V1 one
            layer.name = layer.name or inner.name
            layer.blobs.extend(inner.blobs)
            if keep:
                body = b"".join(inner.header)
                layer.header.append(encode_tag(raw.number, LENGTH) + encode_varint(len(body)) + body)
        else:
            if raw.number == name_no and raw.wire_type == LENGTH:
                layer.name = bytes(buf[raw.data_start:raw.end]).decode("utf-8", errors="replace")
            if keep:
                layer.header.append(bytes(buf[raw.start:raw.end]))
    return layer


def _scan_net(buf, path: str, keep: bool) -> tuple[list[tuple[int, _Layer]], list[bytes]]:
    """Return ([(layer field number, layer)], top-level non-layer fields) of the NetParameter in ``buf``."""
    layers, header = [], []
    pos, end = 0, len(buf)
    try:
        while pos < end:
            raw = read_field(buf, pos, end)
            pos = raw.end
            kind = _V1 if raw.number == _V1[0] else _V2 if raw.number == _V2[0] else None
            if kind is None:
                if keep:
                    header.append(bytes(buf[raw.start:raw.end]))
                continue
            if raw.wire_type != LENGTH:
                raise WireError(f"layer field {raw.number} has wire type {raw.wire_type}, expected a message",
                                raw.start)
            try:
                layers.append((raw.number, _scan_layer(buf, raw.data_start, raw.end, kind, keep)))
            except WireError as exc:
                raise WeightsError(f"{path}: layer #{len(layers)}: {exc}") from None
    except WireError as exc:
        if _looks_like_text(buf):
            raise WeightsError(f"{path}: this looks like a text prototxt (a net description), not binary "
                               f"weights; pass the .caffemodel") from None
        raise WeightsError(f"{path}: not a valid caffemodel: {exc}") from None
    if not layers:
        hint = "this looks like a text prototxt" if _looks_like_text(buf) else "no 'layer'/'layers' entries"
        raise WeightsError(f"{path}: not a caffemodel: {hint}")
    return layers, header


# --------------------------------------------------------------------------------------------------------------
# Blobs
# --------------------------------------------------------------------------------------------------------------

@dataclass
class _BlobFields:
    legacy: list = field(default_factory=lambda: [None, None, None, None])
    shape: tuple | None = None
    floats: list = field(default_factory=list)
    doubles: list = field(default_factory=list)
    has_diff: bool = False


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _blob_fields(buf, u8: np.ndarray, start: int, end: int) -> _BlobFields:
    out = _BlobFields()
    pos = start
    while pos < end:
        tag = buf[pos]
        if tag in (_FLOAT_TAG, _DOUBLE_TAG):                 # unpacked run: copy with a strided view
            width, dtype, sink = (4, "<f4", out.floats) if tag == _FLOAT_TAG else (8, "<f8", out.doubles)
            count = fixed_run(u8, pos, end, tag, width)
            if count:
                sink.append(unpacked_values(buf, pos, count, width, dtype))
                pos += count * (width + 1)
                continue
        if tag in _DIFF_TAGS:                                # unpacked diff: skip the run
            count = fixed_run(u8, pos, end, tag, _DIFF_TAGS[tag])
            if count:
                out.has_diff = True
                pos += count * (_DIFF_TAGS[tag] + 1)
                continue
        raw = read_field(buf, pos, end)
        pos = raw.end
        _blob_field(buf, raw, out)
    return out


def _blob_field(buf, raw, out: _BlobFields) -> None:
    number, wire = raw.number, raw.wire_type
    if 1 <= number <= 4 and wire == VARINT:
        out.legacy[number - 1] = _int32(raw.value)
    elif number in (5, 8) and wire == LENGTH:
        width, dtype = (4, "<f4") if number == 5 else (8, "<f8")
        nbytes = raw.end - raw.data_start
        if nbytes % width:
            raise WireError(f"packed {'data' if number == 5 else 'double_data'} of {nbytes} bytes is not a "
                            f"multiple of {width}", raw.start)
        run = np.frombuffer(buf, dtype=dtype, count=nbytes // width, offset=raw.data_start)
        (out.floats if number == 5 else out.doubles).append(run)
    elif number in (6, 9):
        out.has_diff = True
    elif number == 7 and wire == LENGTH:
        shape = caffe_pb2.BlobShape()
        shape.ParseFromString(bytes(buf[raw.data_start:raw.end]))
        out.shape = tuple(int(d) for d in shape.dim)
    elif number <= 9:
        raise WireError(f"BlobProto field {number} has unexpected wire type {wire}", raw.start)


def _join(runs: list) -> np.ndarray | None:
    if not runs:
        return None
    return runs[0] if len(runs) == 1 else np.concatenate(runs)


def _blob_array(fields: _BlobFields) -> np.ndarray:
    """Assemble the float32 array of a blob; raises ValueError with the reason when it is inconsistent."""
    if any(v is not None for v in fields.legacy):
        # Caffe: src/caffe/blob.cpp FromProto — legacy 4-D dims take precedence over `shape`
        shape = tuple(v or 0 for v in fields.legacy)
    else:
        shape = fields.shape or ()
    count = int(np.prod(shape, dtype=np.int64))
    doubles = _join(fields.doubles)
    # Caffe: src/caffe/blob.cpp FromProto — double_data is used when non-empty, else data
    values = doubles.astype(np.float32) if doubles is not None and doubles.size else _join(fields.floats)
    have = 0 if values is None else values.size
    if have != count:
        if have == 0 and count and fields.has_diff:
            raise ValueError(f"holds only 'diff' values and no 'data' (shape {_fmt(shape)}); Caffe loads 'data'")
        if have == 0 and count:
            raise ValueError(f"has shape {_fmt(shape)} ({count} values) but no data")
        raise ValueError(f"holds {have} values but its shape {_fmt(shape)} needs {count}")
    if values is None:
        values = np.zeros(0, np.float32)
    return values.reshape(shape)


def _fmt(shape: Sequence[int]) -> str:
    return "x".join(str(d) for d in shape) if shape else "scalar"


def _layer_arrays(buf, u8, layer: _Layer, path: str) -> list[np.ndarray]:
    arrays = []
    for index, (start, end) in enumerate(layer.blobs):
        try:
            arrays.append(_blob_array(_blob_fields(buf, u8, start, end)))
        except WireError as exc:
            raise WeightsError(f"{path}: layer '{layer.name}' blob {index}: {exc}") from None
        except ValueError as exc:
            raise WeightsError(f"{path}: layer '{layer.name}' blob {index} (at byte offset {start}) {exc}") \
                from None
    return arrays


def blob_to_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """A BlobProto as a writable float32 array, with Caffe's shape and data rules (see module docstring)."""
    data = bytearray(blob.SerializeToString())
    u8 = np.frombuffer(data, np.uint8)
    try:
        return _blob_array(_blob_fields(data, u8, 0, len(data)))
    except (WireError, ValueError) as exc:
        raise WeightsError(f"BlobProto {exc}") from None


def _blob_part(array, number: int) -> Field:
    """A BlobProto field with ``shape`` and packed float ``data``, in protobuf's canonical field order."""
    values = np.asarray(array, dtype="<f4", order="C")
    parts: list[Part] = [Field(5, [values])] if values.size else []
    parts.append(Field(7, [caffe_pb2.BlobShape(dim=values.shape).SerializeToString()]))
    return Field(number, parts)


def array_to_blob(array) -> caffe_pb2.BlobProto:
    """A float32 BlobProto with ``shape`` and packed ``data`` (built from bytes: no per-value Python work)."""
    part = _blob_part(array, 1)
    blob = caffe_pb2.BlobProto()
    chunks = []
    for child in part.parts:
        chunks.append(encode_tag(child.number, LENGTH) + encode_varint(child.payload_size()))
        chunks.extend(c.tobytes() if isinstance(c, np.ndarray) else c for c in child.parts)
    blob.ParseFromString(b"".join(chunks))
    return blob


# --------------------------------------------------------------------------------------------------------------
# Public reading API
# --------------------------------------------------------------------------------------------------------------

def _read(path, keep: bool) -> tuple[Weights, list | None, list | None]:
    path = os.fspath(path)
    buf = _open_map(path)
    if _sniff(buf, path) == "hdf5":
        from vggproto.weights_hdf5 import read_hdf5_weights
        return read_hdf5_weights(path, buf), None, None
    layers, header = _scan_net(buf, path, keep)
    u8 = np.frombuffer(buf, np.uint8)
    weights: Weights = {}
    for _, layer in layers:
        if layer.blobs:
            weights[layer.name] = _layer_arrays(buf, u8, layer, path)
    log.debug("%s: read %d layers with blobs", path, len(weights))
    return weights, layers, header


def read_weights(path: str | os.PathLike) -> Weights:
    """Read every layer's blobs: ``{layer name: [float32 arrays in Caffe blob order]}`` in file order.

    Works for V0/V1 (``layers``) and V2 (``layer``) caffemodels and Caffe HDF5 weights (detected by content).
    Layers without blobs are omitted; when a name repeats, the later layer wins (as Caffe's
    CopyTrainedLayersFrom overwrites).  Arrays are zero-copy views of a private mapping of the file.
    """
    return _read(path, keep=False)[0]


def read_caffemodel(path: str | os.PathLike) -> tuple[caffe_pb2.NetParameter, Weights]:
    """Read the net structure (every layer field except blob payloads, upgraded as Caffe does) and the weights.

    HDF5 weights carry no structure: the net then only lists the layer names.
    """
    from vggproto.upgrade import upgrade_net
    weights, layers, header = _read(path, keep=True)
    net = caffe_pb2.NetParameter()
    if layers is None:
        net.layer.extend(caffe_pb2.LayerParameter(name=name) for name in weights)
        return net, weights
    chunks = list(header)
    for number, layer in layers:
        body = b"".join(layer.header)
        chunks.append(encode_tag(number, LENGTH) + encode_varint(len(body)) + body)
    try:
        net.ParseFromString(b"".join(chunks))
    except DecodeError as exc:
        raise WeightsError(f"{os.fspath(path)}: the layer structure cannot be decoded: {exc}") from None
    upgrade_net(net, path=os.fspath(path))
    return net, weights


def fit_blob(array: np.ndarray, target_shape: Sequence[int]) -> np.ndarray | None:
    """Caffe's ShapeEquals: ``array`` itself if its shape is ``target_shape``; for a 4-D (legacy) array whose
    dims equal the target's right-aligned LegacyShape (missing leading axes count as 1) the reshaped view;
    otherwise None (Caffe refuses to copy)."""
    target = tuple(int(d) for d in target_shape)
    if tuple(array.shape) == target:
        return array
    # Caffe: src/caffe/blob.cpp ShapeEquals + LegacyShape — legacy dims compare right-aligned, at most 4 axes
    if array.ndim != 4 or len(target) > 4:
        return None
    legacy = (1,) * (4 - len(target)) + target
    return array.reshape(target) if tuple(array.shape) == legacy else None


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def write_parts(path: str | os.PathLike, parts: Iterable[Part]) -> int:
    """Stream top-level message ``parts`` to a temp file beside ``path``, then rename; return bytes written."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    total = 0
    try:
        with open(tmp, "wb") as handle:
            for part in parts:
                write_part(handle, part)
                total += part_size(part)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return total


def _net_parts(weights: Mapping[str, Sequence], net_param: caffe_pb2.NetParameter | None) -> list[Part]:
    head = caffe_pb2.NetParameter()
    layers: list[caffe_pb2.LayerParameter] = []
    if net_param is not None:
        head.CopyFrom(net_param)
        if head.layers:
            from vggproto.upgrade import upgrade_net
            upgrade_net(head)
        layers = list(head.layer)
        head.ClearField("layer")
    listed = {layer.name for layer in layers}
    extra = [name for name in weights if name not in listed]
    if net_param is not None and extra:
        log.warning("weights for layers not in the net are appended as name-only layers: %s", ", ".join(extra))
    layers += [caffe_pb2.LayerParameter(name=name) for name in extra]
    before, _, after = split_message(head.SerializeToString(), 100)
    parts: list[Part] = [before]
    for layer in layers:
        layer.ClearField("blobs")
        lo, _, hi = split_message(layer.SerializeToString(), 7)
        blobs = [_blob_part(array, 7) for array in weights.get(layer.name, ())]
        parts.append(Field(100, [lo, *blobs, hi]))
    parts.append(after)
    return parts


def write_weights(path: str | os.PathLike, weights: Mapping[str, Sequence],
                  net_param: caffe_pb2.NetParameter | None = None) -> None:
    """Write ``weights`` as Caffe HDF5 (``.h5``) or a V2 caffemodel.

    The caffemodel carries ``net_param``'s fields and every one of its layers (blobs replaced by ``weights``),
    or, without ``net_param``, one name-only layer per entry.  Blobs carry ``shape`` and packed float ``data``.
    Each blob is streamed from its array (float32 arrays are not copied); the file appears atomically.
    """
    if Path(path).suffix.lower() == ".h5":
        from vggproto.weights_hdf5 import write_hdf5_weights
        names = [layer.name for layer in net_param.layer] if net_param is not None else []
        write_hdf5_weights(path, weights, names)
        return
    size = write_parts(path, _net_parts(weights, net_param))
    log.info("Wrote %d bytes of weights to %s", size, os.fspath(path))
