"""The one registry mapping a Caffe layer type string to the class that builds it.

Every layer module decorates its classes with ``@register("Type")``; :func:`build_layer` looks the type up.
Registering a type twice is a programming error; an unknown type is a user error naming the layer and listing
what is supported.

The contract every layer class follows (see :class:`CaffeLayer`):
  * ``__init__(self, spec)`` reads the typed protobuf fields of ``spec.param`` (so schema defaults apply),
    validates them against ``spec.bottom_shapes`` (raising ``spec.error(...)``), creates its parameter blobs in
    Caffe blob order in ``self.blobs`` (filled with Caffe's fillers) and sets ``self.top_shapes``.
  * ``forward(self, *bottoms)`` returns a tuple with one tensor per top.
"""
from __future__ import annotations

import difflib
import importlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Sequence

import torch
from google.protobuf.message import Message
from torch import nn

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.data.options import DataOptions
from vggproto.errors import NetError, VGGProtoError


@dataclass
class LayerSpec:
    """What a layer builder needs to know: its definition, its inputs' shapes and where it came from."""

    param: caffe_pb2.LayerParameter
    bottom_shapes: list[Shape]
    phase: int = caffe_pb2.TEST
    path: str | None = None          # the prototxt file, for errors and for resolving relative data paths
    line: int | None = None          # line of the layer block in that file
    generator: torch.Generator | None = None   # RNG for fillers (seeded by the net's random_seed)
    options: DataOptions = field(default_factory=DataOptions)  # how this process runs the net (rank, dry run…)
    dialect: str = "bvlc"            # the fork schema the net follows (vggproto.caffe.dialects): fork layers
                                     # whose defaults differ between forks read it

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    @property
    def train(self) -> bool:
        return self.phase == caffe_pb2.TRAIN

    def plugin_param(self, name: str) -> Message:
        """A private fork's parameter of this layer, registered with :func:`vggproto.caffe.plugins.register_param`
        (a default instance when the layer sets none)."""
        from vggproto.caffe.plugins import plugin_param
        return plugin_param(self.param, name)

    def error(self, message: str) -> NetError:
        """A NetError located at this layer: ``path:line: layer 'name' (Type): message``."""
        return NetError(message, path=self.path, line=self.line, layer=self.name, layer_type=self.type)


class CaffeLayer(nn.Module):
    """Base class of every layer: holds the spec, the parameter blobs (Caffe order) and the top shapes."""

    #: Loss layers get ``loss_weight`` 1 on their first top by default (Caffe's LossLayer).
    is_loss: ClassVar[bool] = False
    #: Layers whose tops are data sources (no bottoms, new values every forward).
    is_data: ClassVar[bool] = False
    #: Layers whose tops the caller provides through ``Net.forward(**inputs)`` (Input, MemoryData).
    feeds: ClassVar[bool] = False
    #: Set by the Net: this in-place layer may overwrite its bottom's memory when no autograd graph is built
    #: (the bottom is a fresh Convolution/InnerProduct output that nothing else has read).
    may_overwrite: bool = False
    #: Why this layer's top shapes are unknown (None entries in ``top_shapes``) in a shapes-only build: a Python
    #: layer's code is not run there, and layers fed by it cannot be built.
    shapes_unknown: str = ""

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.blobs = nn.ParameterList()
        self.top_shapes: list[Shape] = []

    def add_blob(self, shape: Sequence[int], filler: caffe_pb2.FillerParameter | None = None,
                 learnable: bool = True) -> nn.Parameter:
        """Append a parameter blob of ``shape`` filled by ``filler`` (Caffe default: constant 0)."""
        from vggproto.layers.fillers import fill
        check_blob_size(self.spec, shape, f"parameter blob {len(self.blobs)}")
        tensor = torch.empty(tuple(int(d) for d in shape), dtype=torch.float32)
        fill(tensor, filler if filler is not None else caffe_pb2.FillerParameter(), self.spec.generator)
        blob = nn.Parameter(tensor, requires_grad=learnable)
        self.blobs.append(blob)
        return blob

    def extra_repr(self) -> str:
        return f"{self.spec.type} '{self.spec.name}' tops={self.top_shapes}"


class UnknownShapes(CaffeLayer):
    """Stands, in a shapes-only build (``DataOptions.dry_run``: info, draw, convert), for a layer fed by a blob of
    unknown shape: it cannot be built, so its tops are unknown too; it has no parameters and never runs."""

    def __init__(self, spec: LayerSpec, reason: str):
        super().__init__(spec)
        self.top_shapes = [None] * len(spec.param.top)
        self.shapes_unknown = reason

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise self.spec.error(f"not built ({self.shapes_unknown}): a shapes-only net cannot run")


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


def check_blob_size(spec: LayerSpec, shape: Sequence[int], what: str) -> None:
    """Refuse, before anything is allocated, a blob with a negative dimension or more bytes than
    :func:`max_blob_bytes`, naming the layer, the field whose value made it so large and the size needed."""
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise spec.error(f"{what} would have a negative dimension: shape {tuple(dims)}")
    need, limit = math.prod(dims) * 4, max_blob_bytes()  # float32
    if need <= limit:
        return
    fields = _fields_with_value(spec.param, max(dims)) if dims else []
    cause = f" (from {', '.join(fields)} = {max(dims)})" if fields else ""
    raise spec.error(f"{what} of shape {tuple(dims)}{cause} would need {_bytes(need)}, more than the "
                     f"{_bytes(limit)} limit (the machine's memory, or ${MAX_BLOB_ENV})")


_REGISTRY: dict[str, type[CaffeLayer]] = {}

# Modules that register layer types; imported on first use so that importing the registry stays cheap.
LAYER_MODULES = (
    "vggproto.layers.input", "vggproto.layers.conv", "vggproto.layers.pool", "vggproto.layers.inner_product",
    "vggproto.layers.neuron", "vggproto.layers.norm", "vggproto.layers.shape", "vggproto.layers.loss",
    "vggproto.layers.arith", "vggproto.layers.softmax", "vggproto.layers.recurrent",
    "vggproto.layers.data", "vggproto.layers.box_data", "vggproto.layers.misc",
    # Caffe forks' layers (vggproto.caffe.dialects has their schemas)
    "vggproto.layers.detection", "vggproto.layers.segmentation", "vggproto.layers.rcnn", "vggproto.layers.mobile",
    "vggproto.layers.python",   # Caffe's Python layer: a user class run in the net
)


def register(type_name: str) -> Callable[[type[CaffeLayer]], type[CaffeLayer]]:
    """Class decorator: make ``cls`` the builder of Caffe layers of ``type_name``."""
    def decorate(cls: type[CaffeLayer]) -> type[CaffeLayer]:
        if type_name in _REGISTRY:
            raise RuntimeError(f"layer type '{type_name}' registered twice "
                               f"({_REGISTRY[type_name].__module__} and {cls.__module__})")
        _REGISTRY[type_name] = cls
        return cls
    return decorate


def _load_layer_modules() -> None:
    for name in LAYER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a missing dependency inside an existing module is a real error
                raise


def supported_types() -> list[str]:
    """Every registered Caffe layer type, sorted."""
    _load_layer_modules()
    return sorted(_REGISTRY)


def layer_class(spec: LayerSpec) -> type[CaffeLayer]:
    """The class registered for ``spec.type``; a NetError listing the supported types if there is none."""
    _load_layer_modules()
    cls = _REGISTRY.get(spec.type)
    if cls is None:
        if spec.type == "WindowData":
            hint = f"'{spec.type}' layers are not supported by vggproto. "
        else:
            close = difflib.get_close_matches(spec.type.lower(), [t.lower() for t in _REGISTRY], n=1, cutoff=0.7)
            match = [t for t in _REGISTRY if close and t.lower() == close[0]]
            hint = f"unknown layer type '{spec.type}'" + (f"; did you mean {match[0]}? " if match else ". ")
        raise spec.error(hint + "Supported types: " + ", ".join(sorted(_REGISTRY)))
    return cls


def build_layer(spec: LayerSpec) -> CaffeLayer:
    """Build the layer described by ``spec``."""
    return layer_class(spec)(spec)
