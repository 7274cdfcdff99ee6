"""The two types every layer is made of: :class:`LayerSpec` (what a builder is given) and :class:`CaffeLayer` (the
base class, which checks a layer's declared arity and bottom rank once, so constructors start at their fields).

The contract every layer class follows:
  * class attributes ``n_bottoms``, ``n_tops`` and ``bottom_ndim`` say how many blobs it takes and the rank of
    bottom 0 (checked by ``CaffeLayer.__init__``, with one message for every layer);
  * class attributes ``onnx`` (how it exports, read by :mod:`vggproto.convert.onnx`) and ``backward`` (whether
    a gradient flows back through it) state its capabilities, so that no other module keeps a list of types;
  * ``__init__(self, spec)`` reads the typed protobuf fields of ``spec.param`` (so schema defaults apply),
    validates them against ``spec.bottom_shapes`` (raising ``spec.error(...)``), creates its parameter blobs in
    Caffe blob order in ``self.blobs`` (filled with Caffe's fillers) and sets ``self.top_shapes``;
  * ``forward(self, *bottoms)`` returns a tuple with one tensor per top.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence, Union

import torch
from google.protobuf.message import Message
from torch import nn

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.data.options import DataOptions
from vggproto.errors import NetError
from vggproto.layers.limits import blob_size_problem

ANY = math.inf  # no upper bound on a blob count: n_bottoms = (2, ANY)

#: ``CaffeLayer.onnx`` of a type that exports: traced as it runs, then verified in onnxruntime.
TRACED = "traced"
#: ``CaffeLayer.onnx`` of data and loss layers: why :func:`vggproto.convert.onnx.refusal` refuses them.
NO_ONNX_DATA = "a data layer reads files or makes data at run time; replace it by an Input layer"
NO_ONNX_LOSS = "a loss layer has no place in a deploy graph; export the net without it (its deploy version)"
#: The ONNX opset Caffe's operations map onto (Conv, pooling, Gemm, Reduce*, TopK, Gather, ...).
ONNX_OPSET = 13

#: A blob count: exactly ``n``, or ``(low, high)``; None: not declared.
Arity = Union[int, tuple[int, float], None]


def check_count(spec: LayerSpec, kind: str, n: int, arity: int | tuple[int, float]) -> None:
    """A NetError unless ``n`` (the number of ``kind`` blobs: "bottom" or "top") is within ``arity``."""
    low, high = (arity, arity) if isinstance(arity, int) else arity
    if not low <= n <= high:
        want = str(low) if low == high else f"at least {low}" if high == ANY else f"{low} to {high}"
        raise spec.error(f"needs {want} {kind} blob(s), got {n}")


def check_blob_size(spec: LayerSpec, shape: Sequence[int], what: str) -> None:
    """Refuse, before anything is allocated, a blob the memory-limit policy (:mod:`vggproto.layers.limits`)
    refuses, as an error located at the layer."""
    problem = blob_size_problem(spec.param, shape, what)
    if problem is not None:
        raise spec.error(problem)


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
    #: layer's code is not run there, a data layer reads no data, and layers fed by them cannot be built.
    shapes_unknown: str = ""
    #: How many bottoms and tops the layer takes, checked once here before the subclass reads its fields:
    #: ``n`` exactly, or ``(low, high)`` (``high`` :data:`ANY`: no upper limit).  None: the layer checks itself
    #: (a count that depends on its parameters).
    n_bottoms: ClassVar[Arity] = None
    n_tops: ClassVar[Arity] = None
    #: The number of axes bottom 0 must have (4: N, C, H, W), or None for any.
    bottom_ndim: ClassVar[int | None] = None
    #: How the type exports to ONNX: :data:`TRACED`, or the clause saying why it never can (refused before
    #: anything is traced).  None: not declared -- a plugin's layer, traced and verified like any other; every
    #: vggproto type declares it (tests/test_layer_facts.py).  Answers that depend on the layer's parameters or
    #: phase are :meth:`onnx_refusal` and :meth:`onnx_opset` overrides.
    onnx: ClassVar[str | None] = None
    #: Whether training sends a gradient back through the type (to a bottom or a parameter blob), as Caffe's
    #: Backward does: False for the types whose Caffe Backward computes nothing (data layers, Accuracy, ArgMax,
    #: Threshold, PriorBox, ...).  None: not declared (a plugin's layer).
    backward: ClassVar[bool | None] = None

    @classmethod
    def onnx_refusal(cls, param: caffe_pb2.LayerParameter, phase: str) -> str | None:
        """Why a layer ``param`` of this type cannot be exported in ``phase`` ("TRAIN" or "TEST"), as a clause;
        None when it can."""
        return None if cls.onnx in (None, TRACED) else cls.onnx

    @classmethod
    def onnx_opset(cls, param: caffe_pb2.LayerParameter) -> int:
        """The lowest ONNX opset that expresses a layer ``param`` of this type."""
        return ONNX_OPSET

    def __init__(self, spec: LayerSpec):
        super().__init__()
        self.spec = spec
        self.blobs = nn.ParameterList()
        self.top_shapes: list[Shape] = []
        if self.n_bottoms is not None:
            check_count(spec, "bottom", len(spec.bottom_shapes), self.n_bottoms)
        if self.n_tops is not None:
            check_count(spec, "top", len(spec.param.top), self.n_tops)
        if self.bottom_ndim is not None and len(spec.bottom_shapes[0]) != self.bottom_ndim:
            axes = " (N, C, H, W)" if self.bottom_ndim == 4 else ""
            raise spec.error(f"needs a {self.bottom_ndim}-D bottom{axes}, got shape {tuple(spec.bottom_shapes[0])}")

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
