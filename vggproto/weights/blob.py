"""One BlobProto <-> one float32 numpy array, with Caffe's rules (Caffe: src/caffe/blob.cpp FromProto/ToProto).

Decoding walks the blob's wire bytes (see :mod:`vggproto.caffe.wire`): packed runs become zero-copy views of the
buffer, unpacked runs are gathered with one strided numpy copy.  Shape: legacy num/channels/height/width when
any is present (a 4-D array), else ``shape``, else a scalar; values: ``double_data`` when non-empty (converted to
float32), else ``data``.  A count that disagrees with the shape is an error, as in Caffe.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import numpy.typing as npt

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import (
    FIXED32,
    FIXED64,
    LENGTH,
    VARINT,
    Buffer,
    Field,
    Part,
    WireError,
    fixed_run,
    read_field,
    unpacked_values,
    write_part,
)
from vggproto.errors import WeightsError

_FLOAT_TAG, _DOUBLE_TAG = 5 << 3 | FIXED32, 8 << 3 | FIXED64  # unpacked data / double_data
_DIFF_TAGS = {6 << 3 | FIXED32: 4, 9 << 3 | FIXED64: 8}        # unpacked diff / double_diff


@dataclass
class BlobFields:
    """What a BlobProto's bytes hold: legacy dims, ``shape``, value runs (views or copies), whether diff is set."""
    legacy: list = field(default_factory=lambda: [None, None, None, None])
    shape: tuple | None = None
    floats: list = field(default_factory=list)
    doubles: list = field(default_factory=list)
    has_diff: bool = False


def _int32(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def blob_fields(buf: Buffer, u8: np.ndarray, start: int, end: int) -> BlobFields:
    """Walk the BlobProto in ``buf[start:end]`` (``u8``: a uint8 view of ``buf`` for run detection)."""
    out = BlobFields()
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


def _blob_field(buf, raw, out: BlobFields) -> None:
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


def blob_array(fields: BlobFields) -> np.ndarray:
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


def blob_to_array(blob: caffe_pb2.BlobProto) -> np.ndarray:
    """A BlobProto as a writable float32 array, with Caffe's shape and data rules (see module docstring)."""
    data = bytearray(blob.SerializeToString())
    u8 = np.frombuffer(data, np.uint8)
    try:
        return blob_array(blob_fields(data, u8, 0, len(data)))
    except (WireError, ValueError) as exc:
        raise WeightsError(f"BlobProto {exc}") from None


def _float32(array) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu()
    return np.asarray(array, dtype="<f4", order="C")


def blob_part(array: npt.ArrayLike, number: int, diff: npt.ArrayLike | None = None) -> Field:
    """A BlobProto field with packed float ``data``, packed ``diff`` (when given: Caffe's Blob::ToProto with
    write_diff) and ``shape``, in protobuf's canonical field order.

    ``array`` is anything numpy can read; torch tensors are detached and moved to the CPU first."""
    values = _float32(array)
    parts: list[Part] = [Field(5, [values])] if values.size else []
    if diff is not None and values.size:
        parts.append(Field(6, [_float32(diff).reshape(values.shape)]))
    parts.append(Field(7, [caffe_pb2.BlobShape(dim=values.shape).SerializeToString()]))
    return Field(number, parts)


def array_to_blob(array: npt.ArrayLike) -> caffe_pb2.BlobProto:
    """A float32 BlobProto with ``shape`` and packed ``data`` (built from bytes: no per-value Python work)."""
    buffer = io.BytesIO()
    for child in blob_part(array, 1).parts:      # the blob's fields, without the enclosing tag and length
        write_part(buffer, child)
    blob = caffe_pb2.BlobProto()
    with buffer.getbuffer() as view:
        blob.ParseFromString(view)
    return blob
