"""The protobuf wire format, by hand: just enough to walk a caffemodel without decoding its blobs.

A serialized message is a sequence of fields ``tag (varint: number << 3 | wire type)`` + payload, where the
payload is a varint (type 0), 8 bytes (1), a varint length + that many bytes (2) or 4 bytes (5).  Walking that
ourselves over an ``mmap`` lets :mod:`vggproto.weights.caffemodel` turn each packed float run into a zero-copy
numpy view, instead of protobuf copying 500 MB into a Python list (``google/protobuf/io/coded_stream``, encoding
docs).

The writer side builds a small tree of :class:`Field` parts whose sizes are computed before any byte is written,
so huge arrays are streamed straight from their own memory to the file.  Offsets are Python ints: files over
2 GB need nothing special.
"""
from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Iterator, Union

import numpy as np

from vggproto.errors import WeightsError

VARINT, FIXED64, LENGTH, START_GROUP, END_GROUP, FIXED32 = 0, 1, 2, 3, 4, 5
#: What the decoders walk: the whole (usually memory-mapped) file, indexed by byte offset.
Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]
_FIXED_SIZE = {FIXED64: 8, FIXED32: 4}


class WireError(WeightsError):
    """Malformed wire data; ``offset`` is the byte offset in the buffer where the problem starts."""

    def __init__(self, message: str, offset: int):
        self.offset = offset
        super().__init__(f"{message} at byte offset {offset}")


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------

def read_varint(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode the varint at ``pos``; return (value, position after it)."""
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise WireError("truncated varint (the file ends inside a field header)", start)
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise WireError("varint longer than 10 bytes (corrupt data)", start)


@dataclass(frozen=True)
class RawField:
    """One field of a message: ``start`` is where its tag begins, ``value`` the varint / fixed value
    (types 0, 1, 5: the fixed ones as raw little-endian ints), and for type 2 the payload span
    ``[data_start, end)``; ``end`` is always the position after the field."""
    number: int
    wire_type: int
    start: int
    data_start: int
    end: int
    value: int = 0


def read_field(buf: Buffer, pos: int, end: int) -> RawField:
    """Decode the one field whose tag starts at ``pos`` (inside a message ending at ``end``).

    Group wire types (3/4) never occur in caffe.proto; they and the invalid types 6/7 mean the bytes are not a
    caffe message, so they raise :class:`WireError` rather than being skipped.
    """
    start = pos
    tag, pos = read_varint(buf, pos, end)
    number, wire_type = tag >> 3, tag & 7
    if number == 0:
        raise WireError("field number 0 (corrupt data or not a protobuf file)", start)
    if wire_type == VARINT:
        value, pos = read_varint(buf, pos, end)
        return RawField(number, wire_type, start, pos, pos, value)
    if wire_type == LENGTH:
        length, data_start = read_varint(buf, pos, end)
        if data_start + length > end:
            raise WireError(f"truncated: field {number} needs {length} bytes but only {end - data_start} remain",
                            start)
        return RawField(number, wire_type, start, data_start, data_start + length)
    if wire_type in _FIXED_SIZE:
        size = _FIXED_SIZE[wire_type]
        if pos + size > end:
            raise WireError(f"truncated: fixed-width field {number} runs past the end", start)
        return RawField(number, wire_type, start, pos, pos + size, int.from_bytes(buf[pos:pos + size], "little"))
    raise WireError(f"invalid wire type {wire_type} for field {number} (corrupt data or not a caffe protobuf "
                    f"file)", start)


def iter_fields(buf: Buffer, pos: int, end: int) -> Iterator[RawField]:
    """Walk the fields of the message occupying ``buf[pos:end]``."""
    while pos < end:
        raw = read_field(buf, pos, end)
        pos = raw.end
        yield raw


def fixed_run(u8: np.ndarray, pos: int, end: int, tag: int, width: int) -> int:
    """Count consecutive unpacked fixed-width fields with the one-byte ``tag`` starting at ``pos``.

    Unpacked ``repeated float`` is ``tag, 4 bytes`` per value; ``u8`` (a uint8 view of the buffer) lets numpy
    find the run length instead of a Python loop over millions of fields.
    """
    stride = width + 1
    most = (end - pos) // stride
    tags = u8[pos:pos + most * stride:stride]
    bad = np.flatnonzero(tags != tag)
    return int(bad[0]) if bad.size else most


def unpacked_values(buf: Buffer, pos: int, count: int, width: int, dtype: str) -> np.ndarray:
    """Copy ``count`` unpacked fixed-width values starting with the tag byte at ``pos``."""
    view = np.ndarray((count,), dtype=dtype, buffer=buf, offset=pos + 1, strides=(width + 1,))
    return view.copy()


def split_message(data: bytes, number: int) -> tuple[bytes, bytes, bytes]:
    """Partition a serialized message into (fields numbered below ``number``, fields equal, fields above),
    each keeping its relative order; used to splice streamed blobs in at their canonical position."""
    parts: tuple[list, list, list] = ([], [], [])
    for raw in iter_fields(data, 0, len(data)):
        index = 0 if raw.number < number else 1 if raw.number == number else 2
        parts[index].append(data[raw.start:raw.end])
    return b"".join(parts[0]), b"".join(parts[1]), b"".join(parts[2])


# --------------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------------

def encode_varint(value: int) -> bytes:
    """Varint bytes of a non-negative int (negative int32/int64 are sign-extended to 64 bits first)."""
    if value < 0:
        value &= (1 << 64) - 1
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_tag(number: int, wire_type: int) -> bytes:
    return encode_varint(number << 3 | wire_type)


@dataclass
class LazyArray:
    """Raw array bytes produced only when written (e.g. generated weights): the size is known up front, the
    memory is needed only while this one array is being written."""
    nbytes: int
    make: Callable[[], np.ndarray]


Part = Union[bytes, np.ndarray, LazyArray, "Field"]


@dataclass
class Field:
    """A length-delimited field whose payload is the concatenation of ``parts`` (bytes, contiguous arrays
    written raw, or nested fields).  Sizes are known before writing, so nothing is assembled in memory."""
    number: int
    parts: list = field(default_factory=list)
    _size: int | None = None

    def payload_size(self) -> int:
        if self._size is None:
            self._size = sum(part_size(p) for p in self.parts)
        return self._size


def part_size(part: Part) -> int:
    """Bytes ``part`` occupies on the wire."""
    if isinstance(part, Field):
        inner = part.payload_size()
        return len(encode_tag(part.number, LENGTH)) + len(encode_varint(inner)) + inner
    if isinstance(part, (np.ndarray, LazyArray)):
        return part.nbytes
    return len(part)


def write_part(handle: BinaryIO, part: Part) -> None:
    """Stream ``part`` to ``handle``; arrays go out through their own buffer (no copy)."""
    if isinstance(part, Field):
        handle.write(encode_tag(part.number, LENGTH) + encode_varint(part.payload_size()))
        for child in part.parts:
            write_part(handle, child)
    elif isinstance(part, LazyArray):
        array = np.ascontiguousarray(part.make())
        if array.nbytes != part.nbytes:
            raise ValueError(f"lazy array produced {array.nbytes} bytes, {part.nbytes} were announced")
        write_part(handle, array)
    elif isinstance(part, np.ndarray):
        if part.nbytes:
            handle.write(memoryview(np.ascontiguousarray(part)).cast("B"))
    else:
        handle.write(part)
