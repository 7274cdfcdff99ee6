"""Fast, exact reading and writing of Caffe weights (caffemodel and Caffe HDF5).

A caffemodel is one serialized ``NetParameter`` of ~550 MB for VGG-16.  Decoding it through protobuf copies every
float into a Python-visible repeated field (≈1.8 s, 2× the file in memory).  Here the file is ``mmap``-ed and
walked with :mod:`vggproto.caffe.wire`; each packed float run becomes a zero-copy numpy view of the mapping (private,
copy-on-write, so arrays are writable and the file is never modified).  Only the small per-layer structure goes
through protobuf.  Writing streams each blob straight from its array into a temp file that is renamed into place.

Shapes follow Caffe (``src/caffe/blob.cpp`` FromProto): legacy num/channels/height/width win when present and
give a 4-D array, else ``shape``; ``double_data`` is used when non-empty.  Loading such arrays into a net's
blobs (Caffe's ``ShapeEquals``) is :mod:`vggproto.weights.fit`.
"""
from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
from google.protobuf.message import DecodeError

from vggproto.caffe import dialects
from vggproto.caffe.files import atomic_path, describe, is_hdf5, sniff
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.wire import (
    LENGTH,
    Field,
    Part,
    WireError,
    encode_tag,
    encode_varint,
    iter_fields,
    part_size,
    read_field,
    split_message,
    write_part,
)
from vggproto.errors import WeightsError
from vggproto.weights.blob import array_to_blob, blob_array, blob_fields, blob_part, blob_to_array  # noqa: F401
from vggproto.weights.fit import Weights

log = logging.getLogger("vggproto.weights.caffemodel")

# (field number of the layer list in NetParameter, name field, blobs field, embedded V0 layer field)
_V1 = (2, 4, 6, 1)
_V2 = (100, 1, 7, None)
_V0 = (None, 1, 50, None)


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
    if is_hdf5(buf):
        return "hdf5"
    kind = sniff(buf[:16])
    if kind is not None:
        raise WeightsError(f"{path}: this is {describe(kind)}, not a caffemodel or Caffe HDF5 weights file")
    return "protobuf"


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


def _layer_arrays(buf, u8, layer: _Layer, path: str) -> list[np.ndarray]:
    arrays = []
    for index, (start, end) in enumerate(layer.blobs):
        try:
            arrays.append(blob_array(blob_fields(buf, u8, start, end)))
        except WireError as exc:
            raise WeightsError(f"{path}: layer '{layer.name}' blob {index}: {exc}") from None
        except ValueError as exc:
            raise WeightsError(f"{path}: layer '{layer.name}' blob {index} (at byte offset {start}) {exc}") \
                from None
    return arrays


# --------------------------------------------------------------------------------------------------------------
# Public reading API
# --------------------------------------------------------------------------------------------------------------

def _read(path, keep: bool) -> tuple[Weights, list | None, list | None]:
    path = os.fspath(path)
    buf = _open_map(path)
    if _sniff(buf, path) == "hdf5":
        from vggproto.weights.hdf5 import read_hdf5_weights
        return read_hdf5_weights(path, buf), None, None
    layers, header = _scan_net(buf, path, keep)
    u8 = np.frombuffer(buf, np.uint8)
    weights: Weights = {}
    for _, layer in layers:
        if layer.blobs:
            weights[layer.name] = _layer_arrays(buf, u8, layer, path)
    log.debug("%s: read %d layers with blobs", path, len(weights))
    return weights, layers, header


def read_weights(path: str | os.PathLike, *, copy: bool = False) -> Weights:
    """Read every layer's blobs: ``{layer name: [float32 arrays in Caffe blob order]}`` in file order.

    Works for V0/V1 (``layers``) and V2 (``layer``) caffemodels and Caffe HDF5 weights (detected by content).
    Layers without blobs are omitted; when a name repeats, the later layer wins (as Caffe's
    CopyTrainedLayersFrom overwrites).  Arrays are writable zero-copy views of a private (copy-on-write)
    mapping of the file, so they may be unaligned; ``copy=True`` returns owned, aligned arrays instead (at the
    cost of a second copy in memory while reading).
    """
    weights = _read(path, keep=False)[0]
    if copy:
        weights = {name: [np.array(a) for a in arrays] for name, arrays in weights.items()}
    return weights


def _structure(path, weights: Weights | None, layers: list | None, header: list | None,
               ) -> caffe_pb2.NetParameter:
    """Parse the blob-free layer bytes with protobuf and upgrade them as Caffe's UpgradeNetAsNeeded does."""
    from vggproto.caffe.upgrade import upgrade_net
    net = caffe_pb2.NetParameter()
    if layers is None:
        net.layer.extend(caffe_pb2.LayerParameter(name=name) for name in weights or {})
        return net
    chunks = list(header)
    for number, layer in layers:
        body = b"".join(layer.header)
        chunks.append(encode_tag(number, LENGTH) + encode_varint(len(body)) + body)
    try:
        net.ParseFromString(b"".join(chunks))
    except DecodeError as exc:
        raise WeightsError(f"{os.fspath(path)}: the layer structure cannot be decoded: {exc}") from None
    upgrade_net(net, path=os.fspath(path))
    return net


def read_caffemodel(path: str | os.PathLike) -> tuple[caffe_pb2.NetParameter, Weights]:
    """Read the net structure (every layer field except blob payloads, upgraded as Caffe does) and the weights.

    HDF5 weights carry no structure: the net then only lists the layer names.
    """
    weights, layers, header = _read(path, keep=True)
    return _structure(path, weights, layers, header), weights


def upgrade_caffemodel(src: str | os.PathLike, dst: str | os.PathLike) -> caffe_pb2.NetParameter:
    """Caffe's ``upgrade_net_proto_binary`` without decoding any blob: the structure is upgraded to V2 and each
    blob's bytes are copied verbatim (legacy dims and encodings kept, as Caffe's tool keeps them) from the
    mapped source into the streamed output.  Returns the upgraded net (blobs not filled in)."""
    path = os.fspath(src)
    buf = _open_map(path)
    if _sniff(buf, path) == "hdf5":
        raise WeightsError(f"{path}: HDF5 weights hold no net structure to upgrade; write them with a net instead")
    layers, header = _scan_net(buf, path, keep=True)
    net = _structure(path, None, layers, header)
    pending: dict[str, list[list]] = {}
    for _, layer in layers:
        pending.setdefault(layer.name, []).append(layer.blobs)
    view = memoryview(buf)
    head = caffe_pb2.NetParameter()
    head.CopyFrom(net)
    head.ClearField("layer")
    before, _, after = split_message(head.SerializeToString(), 100)
    parts: list[Part] = [before]
    for layer in net.layer:
        queue = pending.get(layer.name)
        spans = queue.pop(0) if queue else []   # repeated names: in file order
        lo, _, hi = split_message(layer.SerializeToString(), 7)
        parts.append(Field(100, [lo, *(Field(7, [view[start:end]]) for start, end in spans), hi]))
    parts.append(after)
    write_parts(dst, parts)
    return net


# --------------------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------------------

def write_parts(path: str | os.PathLike, parts: Iterable[Part],
                on_part: Callable[[int], None] | None = None) -> int:
    """Stream top-level message ``parts`` to a temp file beside ``path``, then rename; return bytes written.

    ``on_part(i)`` is called once part ``i``'s bytes have been written (lazy arrays are made just before)."""
    total = 0
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        for index, part in enumerate(parts):
            write_part(handle, part)
            total += part_size(part)
            if on_part is not None:
                on_part(index)
    return total


def _wire(message: caffe_pb2.NetParameter | caffe_pb2.LayerParameter, dialect: str) -> bytes:
    """``message`` serialized with the field numbers of ``dialect`` (a fork's caffemodel, readable by the fork)."""
    return dialects.from_superset(message.SerializeToString(), type(message), dialect)


def _net_parts(weights: Mapping[str, Sequence], net_param: caffe_pb2.NetParameter | None,
               diffs: Mapping[str, Sequence] | None = None,
               dialect: str = dialects.BVLC) -> tuple[list[Part], list[str | None]]:
    """The NetParameter's top-level parts, and beside each the ``weights`` layer whose blobs it carries (None for
    the net's own fields and layers without weights; a repeated name counts at its first layer), so that a
    writer can tell when each layer's bytes are out."""
    head = caffe_pb2.NetParameter()
    layers: list[caffe_pb2.LayerParameter] = []
    if net_param is not None:
        head.CopyFrom(net_param)
        if head.layers:
            from vggproto.caffe.upgrade import upgrade_net
            upgrade_net(head)
        layers = list(head.layer)
        head.ClearField("layer")
    listed = {layer.name for layer in layers}
    extra = [name for name in weights if name not in listed]
    if net_param is not None and extra:
        log.warning("weights for layers not in the net are appended as name-only layers: %s", ", ".join(extra))
    layers += [caffe_pb2.LayerParameter(name=name) for name in extra]
    before, _, after = split_message(_wire(head, dialect), 100)
    parts: list[Part] = [before]
    names: list[str | None] = [None]
    seen: set[str] = set()
    for layer in layers:
        layer.ClearField("blobs")
        lo, _, hi = split_message(_wire(layer, dialect), 7)
        layer_diffs = (diffs or {}).get(layer.name) or [None] * len(weights.get(layer.name, ()))
        blobs = [blob_part(array, 7, diff) for array, diff in zip(weights.get(layer.name, ()), layer_diffs)]
        parts.append(Field(100, [lo, *blobs, hi]))
        names.append(layer.name if layer.name in weights and layer.name not in seen else None)
        seen.add(layer.name)
    parts.append(after)
    names.append(None)
    return parts, names


def write_weights(path: str | os.PathLike, weights: Mapping[str, Sequence],
                  net_param: caffe_pb2.NetParameter | None = None,
                  diffs: Mapping[str, Sequence] | None = None, dialect: str | None = None, *,
                  on_layer: Callable[[str], None] | None = None) -> None:
    """Write ``weights`` as Caffe HDF5 (``.h5``) or a V2 caffemodel.

    The caffemodel carries ``net_param``'s fields and every one of its layers (blobs replaced by ``weights``),
    or, without ``net_param``, one name-only layer per entry; a fork net's fields take the numbers of
    ``dialect`` (None: the fork whose fields the net uses), so that fork reads the file.  Blobs carry ``shape``
    and packed float ``data``, and packed ``diff`` where ``diffs`` (same layout as ``weights``) gives one: what
    Caffe's solver writes with ``snapshot_diff: true`` (HDF5: datasets ``/diff/<layer>/<i>`` beside ``/data``).
    Each blob is streamed from its array (float32 arrays are not copied); the file appears atomically.
    ``on_layer`` is called once per ``weights`` layer, after its blobs are written (progress for large files).
    """
    if diffs:
        _check_diff_shapes(weights, diffs)
    if Path(path).suffix.lower() == ".h5":
        from vggproto.weights.hdf5 import write_hdf5_weights
        names = [layer.name for layer in net_param.layer] if net_param is not None else []
        write_hdf5_weights(path, weights, names, diffs, on_layer=on_layer)
        return
    chosen = dialects.detect(net_param, dialect, warn=False) if net_param is not None else dialects.BVLC
    parts, names = _net_parts(weights, net_param, diffs, chosen)

    def written(index: int) -> None:
        if names[index] is not None:
            on_layer(names[index])
    size = write_parts(path, parts, written if on_layer is not None else None)
    log.debug("Wrote %d bytes of weights to %s", size, os.fspath(path))   # callers name the final file


def _check_diff_shapes(weights: Mapping[str, Sequence], diffs: Mapping[str, Sequence]) -> None:
    """Every diff belongs to a weight blob of the same shape (Caffe: a Blob's data and diff share its shape)."""
    for name, layer_diffs in diffs.items():
        blobs = weights.get(name)
        if blobs is None or len(blobs) != len(layer_diffs):
            raise WeightsError(f"diffs for layer '{name}' do not match its weights "
                               f"({len(layer_diffs)} diffs, {0 if blobs is None else len(blobs)} blobs)")
        for index, (blob, diff) in enumerate(zip(blobs, layer_diffs)):
            if diff is not None and tuple(np.shape(diff)) != tuple(np.shape(blob)):
                raise WeightsError(f"diff {index} of layer '{name}' has shape {tuple(np.shape(diff))}, its blob "
                                   f"{tuple(np.shape(blob))}")
