"""Reading and writing weights in every container ``vggproto convert`` knows, as ``{layer: [blob arrays]}``.

Containers: Caffe caffemodel (V1 or V2) and Caffe HDF5 (``/data/<layer>/<i>``) through
:mod:`vggproto.weights.caffemodel`; PyTorch ``.pt`` (``torch.save`` of a flat dict of tensors, loadable with
``torch.load(..., weights_only=True)``) and ``.safetensors``, both keyed ``<layer>.weight`` (blob 0),
``<layer>.bias`` (blob 1), ``<layer>.<i>`` (blob i >= 2); and torchvision VGG state dicts (``features.N.weight``
...), recognised by their keys.

Input formats are detected from the content (HDF5 / zip / safetensors header), never trusted from the extension.
Writers stream one array at a time and replace the target atomically, so a failed conversion leaves no partial file.
"""
from __future__ import annotations

import json
import logging
import mmap
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from vggproto.caffe.files import atomic_path, sniff
from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import WeightsError
from vggproto.weights.fit import Weights

log = logging.getLogger("vggproto.convert.convert")

#: Output format names accepted by ``--to``.
FORMATS = ("caffemodel", "h5", "pt", "safetensors", "torchvision", "onnx", "ncnn")
_BY_EXTENSION = {".param": "ncnn", ".caffemodel": "caffemodel", ".h5": "h5", ".hdf5": "h5", ".pt": "pt", ".pth": "pt",
                 ".safetensors": "safetensors", ".onnx": "onnx"}
_BLOB_KEYS = {0: "weight", 1: "bias"}
_KEY = re.compile(r"^(?P<layer>.+)\.(?P<blob>weight|bias|\d+)$")
_ST_DTYPES = {"F32": "<f4", "F64": "<f8", "F16": "<f2", "BF16": "<u2"}
_LAYER_ORDER_KEY = "vggproto.layer_order"
#: What a writer calls once per layer as that layer's bytes are written (progress for large conversions).
OnLayer = Callable[[str], None]


# ----------------------------------------------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------------------------------------------

def output_format(path: str | os.PathLike, to: str | None = None) -> str:
    """The format to write: ``to`` if given, else from the extension (``.pt``/``.pth``: a Caffe-named state dict)."""
    if to is not None:
        if to not in FORMATS:
            raise WeightsError(f"unknown output format '{to}'; supported: {', '.join(FORMATS)}")
        return to
    suffix = Path(path).suffix.lower()
    if suffix not in _BY_EXTENSION:
        raise WeightsError(f"{path}: cannot infer the output format from '{suffix or 'no extension'}'; "
                           f"use --to {'|'.join(FORMATS)} or one of {', '.join(sorted(_BY_EXTENSION))}")
    return _BY_EXTENSION[suffix]


def input_format(path: str | os.PathLike) -> str:
    """Detect a weight file's container from its first bytes: h5, pt, torchvision, safetensors or caffemodel."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read: {exc.strerror}") from None
    kind = sniff(head)
    if kind == "hdf5":
        return "h5"
    if kind in ("zip", "pickle"):  # torch.save zip, or legacy pickle
        keys = load_torch_state(path).keys()
        from vggproto.weights.torchvision import is_torchvision_state_dict
        return "torchvision" if is_torchvision_state_dict(keys) else "pt"
    if kind == "safetensors":
        keys = [k for k in _safetensors_header(path)[0] if k != "__metadata__"]
        from vggproto.weights.torchvision import is_torchvision_state_dict
        return "torchvision" if is_torchvision_state_dict(keys) else "safetensors"
    return "caffemodel"


# ----------------------------------------------------------------------------------------------------------------
# State-dict naming
# ----------------------------------------------------------------------------------------------------------------

def blob_key(layer: str, index: int) -> str:
    """``<layer>.weight`` for blob 0, ``<layer>.bias`` for blob 1, ``<layer>.<i>`` beyond (positional, any type)."""
    return f"{layer}.{_BLOB_KEYS.get(index, index)}"


def weights_to_state_dict(weights: Mapping[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    """Flatten ``{layer: [blobs]}`` into state-dict keys, preserving layer and blob order."""
    return {blob_key(layer, i): blob for layer, blobs in weights.items() for i, blob in enumerate(blobs)}


def layer_ends(keys: Iterable[str]) -> dict[str, str]:
    """``{last key of a layer: layer}`` for each run of keys sharing a layer (the key before its last dot:
    ``conv1_1.weight``, ``conv1_1.bias`` -> ``conv1_1``; ``features.0.bias`` -> ``features.0``), so that a writer
    streaming keys in order knows where a layer's bytes end; its length is the number of layers written."""
    keys = list(keys)
    layers = [key.rpartition(".")[0] or key for key in keys]
    return {key: layer for key, layer, after in zip(keys, layers, [*layers[1:], None]) if layer != after}


def state_dict_to_weights(state: Mapping[str, np.ndarray], source: str = "state dict") -> Weights:
    """Inverse of :func:`weights_to_state_dict`; layers in first-key order, blobs must be numbered 0..n-1."""
    found: dict[str, dict[int, np.ndarray]] = {}
    for key, array in state.items():
        match = _KEY.match(key)
        if not match:
            raise WeightsError(f"{source}: key '{key}' is not <layer>.weight, <layer>.bias or <layer>.<index>")
        blob = match.group("blob")
        index = {"weight": 0, "bias": 1}.get(blob, None)
        found.setdefault(match.group("layer"), {})[int(blob) if index is None else index] = array
    weights: Weights = {}
    for layer, blobs in found.items():
        if sorted(blobs) != list(range(len(blobs))):
            names = [blob_key(layer, i) for i in sorted(blobs)]
            raise WeightsError(f"{source}: layer '{layer}' has blobs {names}; blob indices must run 0..n-1 "
                               f"(weight, bias, 2, 3, ...)")
        weights[layer] = [blobs[i] for i in range(len(blobs))]
    return weights


def _as_float32(key: str, array: np.ndarray, source: str) -> np.ndarray:
    if array.dtype == np.float32:
        return array
    if array.dtype.kind != "f":
        raise WeightsError(f"{source}: '{key}' has dtype {array.dtype}; Caffe weights are floating point")
    if array.dtype.itemsize > 4:
        log.warning("%s: '%s' is %s; Caffe stores float32, values are rounded", source, key, array.dtype)
    return array.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# PyTorch .pt
# ----------------------------------------------------------------------------------------------------------------

def load_torch_state(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat ``{key: float32 array}`` from a ``torch.save`` file, loaded with ``weights_only=True`` (memory-mapped).

    A checkpoint that nests the weights under ``state_dict`` or ``model`` is unwrapped.
    """
    import torch
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe files
        raise WeightsError(f"{path}: not a loadable PyTorch state dict: {str(exc).splitlines()[0]}") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path}: expected a dict of tensors (a state dict), got {type(obj).__name__}")
    state = {}
    for key, tensor in obj.items():
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        state[key] = _as_float32(key, tensor.detach().numpy(), str(path))
    return state


def save_torch_state(path: str | os.PathLike, state: Mapping[str, np.ndarray], zip_crc: bool = False, *,
                     on_layer: OnLayer | None = None) -> None:
    """``torch.save`` a flat dict of tensors that share memory with ``state`` (no copy), atomically.

    Without ``zip_crc`` the zip records carry no CRC32 (torch's ``set_crc32_options(False)``): computing it is
    ~40% of the time for a 550 MB file, and ``torch.load`` never checks it (PyTorch builds miniz with
    MINIZ_DISABLE_ZIP_READER_CRC32_CHECKS); only generic unzip tools would complain.  ``on_layer`` is called as
    the bytes written pass each layer's tensors (see :class:`_LayerBytes`).
    """
    import torch
    with warnings.catch_warnings():  # memory-mapped input arrays are read-only; torch.save only reads them
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensors = {key: torch.from_numpy(np.ascontiguousarray(array)) for key, array in state.items()}
    options = getattr(torch.serialization, "get_crc32_options", None)
    previous = options() if options else True

    def save(tmp: str) -> None:
        if options:
            torch.serialization.set_crc32_options(zip_crc)
        try:
            # through a file object: torch names the zip's records after a path it is given (the temporary's),
            # and "archive/..." (what torch.save(obj, "x.pt") writes for x.pt) after a file object
            with open(tmp, "wb") as handle:
                if on_layer is None:
                    torch.save(tensors, handle)
                    return
                counted = _LayerBytes(handle, state, on_layer)
                torch.save(tensors, counted)
                counted.finish()
        finally:
            if options:
                torch.serialization.set_crc32_options(previous)
    _atomic(path, save)


class _LayerBytes:
    """The file object ``torch.save`` writes to, calling ``on_layer`` as the bytes written pass each layer's end.

    torch.save writes the whole zip in one call that cannot be hooked per tensor; its writer calls ``write`` (and
    ``seek`` for data-less records) on the file object, the storages in state order (zip format version 1) after
    a small pickle and headers.  So a layer counts as written once the bytes written reach the tensor bytes up to
    its end: early by the pickle and zip headers only (a few KB; nothing for a file of many MB), and never late.
    The bytes are passed straight on (no copy, the output is identical); the cost is one addition per write.
    """

    def __init__(self, handle: Any, state: Mapping[str, np.ndarray], on_layer: OnLayer):
        ends, total, self.marks = layer_ends(state), 0, []
        for key, array in state.items():
            total += array.nbytes
            if key in ends:
                self.marks.append((total, ends[key]))
        self.handle, self.on_layer, self.written, self.done = handle, on_layer, 0, 0

    def write(self, data: Any) -> int:
        count = self.handle.write(data)
        self.written += count
        while self.done < len(self.marks) and self.marks[self.done][0] <= self.written:
            self.done += 1
            self.on_layer(self.marks[self.done - 1][1])
        return count

    def finish(self) -> None:
        """Count the layers still open (the zip's bytes fell short of the estimate: never, but say all)."""
        for _, layer in self.marks[self.done:]:
            self.on_layer(layer)
        self.done = len(self.marks)

    def flush(self) -> None:
        self.handle.flush()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()


# ----------------------------------------------------------------------------------------------------------------
# safetensors (written and read here, streamed / memory-mapped; checked against the safetensors package in tests)
# ----------------------------------------------------------------------------------------------------------------

def _safetensors_header(path: str | os.PathLike) -> tuple[dict, int]:
    with open(path, "rb") as handle:
        size = struct.unpack("<Q", handle.read(8))[0]
        raw = handle.read(size)
    try:
        return json.loads(raw), 8 + size
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsError(f"{path}: corrupt safetensors header: {exc}") from None


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Memory-mapped ``{key: float32 array}``, in the order recorded by vggproto (else the file's data order)."""
    header, start = _safetensors_header(path)
    metadata = header.pop("__metadata__", None) or {}
    file_size = os.path.getsize(path)
    with open(path, "rb") as handle:
        buffer = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) if file_size else b""
    order = json.loads(metadata[_LAYER_ORDER_KEY]) if _LAYER_ORDER_KEY in metadata else None
    if not (order and sorted(order) == sorted(header)):
        order = sorted(header, key=lambda k: header[k]["data_offsets"])
    keys = order
    state = {}
    for key in keys:
        info = header[key]
        dtype = _ST_DTYPES.get(info.get("dtype"))
        begin, end = info["data_offsets"]
        count = int(np.prod(info["shape"], dtype=np.int64))
        if dtype is None:
            raise WeightsError(f"{path}: '{key}' has dtype {info.get('dtype')}; supported: {', '.join(_ST_DTYPES)}")
        if start + end > file_size or end - begin != count * np.dtype(dtype).itemsize:
            raise WeightsError(f"{path}: '{key}' data offsets {begin}..{end} do not match shape {info['shape']} "
                               f"or the file size (truncated?)")
        array = np.frombuffer(buffer, dtype=dtype, count=count, offset=start + begin).reshape(info["shape"])
        if info["dtype"] == "BF16":
            array = (array.astype(np.uint32) << 16).view(np.float32)
        state[key] = _as_float32(key, array, str(path))
    return state


def save_safetensors(path: str | os.PathLike, state: Mapping[str, np.ndarray], *,
                     on_layer: OnLayer | None = None) -> None:
    """Write float32 arrays as safetensors, streamed array by array; the key order goes into the metadata.

    ``on_layer`` is called after the last array of each layer is written (streamed here, so it is exact)."""
    header: dict = {"__metadata__": {"format": "pt", _LAYER_ORDER_KEY: json.dumps(list(state))}}
    offset = 0
    for key, array in state.items():
        if array.dtype != np.float32:
            raise WeightsError(f"'{key}' has dtype {array.dtype}; expected float32")
        header[key] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + array.nbytes]}
        offset += array.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # keep the data 8-byte aligned
    ends = layer_ends(state) if on_layer is not None else {}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            for key, array in state.items():
                handle.write(memoryview(np.ascontiguousarray(array, dtype="<f4")).cast("B"))
                if key in ends:
                    on_layer(ends[key])
    _atomic(path, write)


# ----------------------------------------------------------------------------------------------------------------
# Everything
# ----------------------------------------------------------------------------------------------------------------

def read_any(path: str | os.PathLike) -> tuple[Mapping[str, Any], caffe_pb2.NetParameter | None, str]:
    """``(weights, net_param_or_None, format)`` for any supported input; torchvision keys are kept as a flat dict.

    For ``torchvision`` the first element is the flat ``{key: array}`` state dict (the caller converts it);
    ``net_param`` is the caffemodel's layer structure (blobs cleared), None for other containers.
    """
    fmt = input_format(path)
    if fmt == "h5":
        from vggproto.weights.caffemodel import read_weights
        return read_weights(os.fspath(path)), None, fmt
    if fmt == "caffemodel":
        from vggproto.weights.caffemodel import read_caffemodel
        net_param, weights = read_caffemodel(os.fspath(path))
        return weights, net_param, fmt
    state = load_torch_state(path) if fmt in ("pt", "torchvision") and _is_torch(path) else load_safetensors(path)
    if fmt == "torchvision":
        return state, None, fmt
    return state_dict_to_weights(state, str(path)), None, fmt


def load_weights_file(path: str | os.PathLike) -> Weights:
    """The weights in any file vggproto writes, detected by content: caffemodel (V0/V1/V2) and Caffe HDF5
    (zero-copy), ``.pt``/``.pth`` Caffe-named state dicts (``torch.load(weights_only=True)``), ``.safetensors``
    and torchvision VGG state dicts (converted to Caffe's layout).  What every ``--weights`` and
    ``Net(weights=...)`` reads."""
    fmt = input_format(path)
    if fmt in ("h5", "caffemodel"):
        from vggproto.weights.caffemodel import read_weights
        return read_weights(os.fspath(path))
    state = load_torch_state(path) if _is_torch(path) else load_safetensors(path)
    if fmt == "torchvision":
        from vggproto.weights.torchvision import torchvision_to_caffe
        return torchvision_to_caffe(state)
    return state_dict_to_weights(state, str(path))


def _is_torch(path: str | os.PathLike) -> bool:
    with open(path, "rb") as handle:
        return sniff(handle.read(16)) in ("zip", "pickle")


def write_state(path: str | os.PathLike, state: Mapping[str, np.ndarray], zip_crc: bool = False, *,
                on_layer: OnLayer | None = None) -> None:
    """A flat state dict to ``.safetensors`` (by extension) or else ``torch.save``; ``on_layer`` as theirs."""
    if Path(path).suffix.lower() == ".safetensors":
        save_safetensors(path, state, on_layer=on_layer)
    else:
        save_torch_state(path, state, zip_crc, on_layer=on_layer)


def _atomic(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp)`` on the temporary file of :func:`atomic_path` (renamed over ``path`` on success)."""
    with atomic_path(path) as tmp:
        write(os.fspath(tmp))
