"""The memory-limit policy for blobs: how many bytes one blob may take, and what to say when a layer's fields
ask for more (the field whose value made the dimension, the bytes needed, the limit), before anything is allocated.
"""
from __future__ import annotations

import math
import os
from typing import Sequence

from google.protobuf.message import Message

from vggproto.errors import VGGProtoError

MAX_BLOB_ENV = "VGGPROTO_MAX_BLOB_BYTES"


def max_blob_bytes() -> int:
    """The most bytes one blob may take: ``$VGGPROTO_MAX_BLOB_BYTES``, else the machine's physical memory (a
    larger blob could never be allocated, and a meta-device build must not accept what a real one cannot)."""
    text = os.environ.get(MAX_BLOB_ENV, "").strip()
    if text:
        try:
            return int(float(text))
        except ValueError:
            raise VGGProtoError(f"${MAX_BLOB_ENV} must be a number of bytes, got '{text}'") from None
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): 1 TiB
        return 1 << 40


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.4g} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"


def _fields_with_value(message: Message, value: int, prefix: str = "") -> list[str]:
    """Dotted names of the integer fields of ``message`` (nested) holding ``value``: what made a dimension."""
    found = []
    for desc, val in message.ListFields():
        name = prefix + desc.name
        values = list(val) if hasattr(val, "__len__") and not isinstance(val, (str, bytes, Message)) else [val]
        if desc.message_type is not None:
            for sub in values:
                found += _fields_with_value(sub, value, name + ".")
        elif any(isinstance(v, int) and not isinstance(v, bool) and v == value for v in values):
            found.append(name)
    return found


def blob_size_problem(param: Message, shape: Sequence[int], what: str) -> str | None:
    """Why a blob of ``shape`` (``what``, of the layer defined by ``param``) cannot be made, or None: a negative
    dimension, or more bytes than :func:`max_blob_bytes`, naming the field whose value made it so large."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        return f"{what} would have a negative dimension: shape {tuple(dims)}"
    need, limit = math.prod(dims) * 4, max_blob_bytes()  # float32
    if need <= limit:
        return None
    fields = _fields_with_value(param, max(dims)) if dims else []
    cause = f" (from {', '.join(fields)} = {max(dims)})" if fields else ""
    return (f"{what} of shape {tuple(dims)}{cause} would need {_bytes(need)}, more than the "
            f"{_bytes(limit)} limit (the machine's memory, or ${MAX_BLOB_ENV})")
