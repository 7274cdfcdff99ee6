"""File handling shared by every reader and writer: the one atomic write and the one magic-byte sniff.

Caffe writes its outputs in place; vggproto never leaves a half-written net, caffemodel, snapshot or feature file
behind: every writer writes a hidden temporary file beside the target and renames it over the target only when
the whole file is written (``os.replace`` is atomic on POSIX and Windows within one directory).  Readers decide
what a file is from its first bytes, never from its name alone, so a PNG passed as a prototxt or a .pt passed
as a caffemodel gets one line saying what it really is.
"""
from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"

# first bytes -> (kind, what to call it in an error message)
_MAGIC: dict[bytes, tuple[str, str]] = {
    b"\xff\xd8\xff": ("jpeg", "a JPEG image"),
    b"\x89PNG": ("png", "a PNG image"),
    b"GIF8": ("gif", "a GIF image"),
    HDF5_SIGNATURE: ("hdf5", "an HDF5 file"),
    b"PK\x03\x04": ("zip", "a zip archive (a PyTorch .pt file?)"),
    b"\x80\x02": ("pickle", "a Python pickle (a legacy PyTorch .pt file?)"),
    b"\x1f\x8b": ("gzip", "a gzip file"),
    b"\x93NUMPY": ("npy", "a numpy .npy file"),
}


def temporary_path(path: str | os.PathLike) -> Path:
    """The hidden temporary name a write to ``path`` goes through (``.NAME.PID.tmp`` in the same folder)."""
    target = Path(path)
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write to; rename it over ``path`` when the block succeeds,
    remove it when the block raises (the target is then untouched)."""
    target = Path(path)
    tmp = temporary_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, flushed to disk before the rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def is_hdf5(buf: bytes | memoryview) -> bool:
    """True when the HDF5 superblock signature sits at 0, 512, 1024, 2048... (HDF5 spec: user block sizes)."""
    offset = 0
    while offset + len(HDF5_SIGNATURE) <= len(buf):
        if buf[offset:offset + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE:
            return True
        offset = 512 if offset == 0 else offset * 2
    return False


def is_safetensors(head: bytes) -> bool:
    """safetensors: a little-endian u64 header length, then a JSON object."""
    return len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < 1 << 30


def sniff(head: bytes) -> str | None:
    """The container kind of a file from its first bytes ('jpeg', 'png', 'gif', 'hdf5', 'zip', 'pickle',
    'gzip', 'npy', 'safetensors'), or None when the bytes name none of them (text or a protobuf, then)."""
    for magic, (kind, _) in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return "safetensors" if is_safetensors(head) else None


def describe(kind: str) -> str:
    """How an error message names a container kind returned by :func:`sniff`."""
    for known, what in _MAGIC.values():
        if known == kind:
            return what
    return "a safetensors file" if kind == "safetensors" else kind
