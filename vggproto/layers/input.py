"""Source layers without bottoms: Input, MemoryData (fed by ``net.forward(name=tensor)``), DummyData, Parameter.

Layers whose tops the caller provides set ``feeds = True``; the net hands them the given tensors (or the blob's
previous value, pycaffe style) and they check the rank against the declared shape.
"""
from __future__ import annotations

from typing import ClassVar

import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.layers.base import NO_ONNX_DATA, TRACED
from vggproto.layers.common import blob
from vggproto.layers.fillers import fill
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


class FedLayer(CaffeLayer):
    """A layer whose tops are supplied by the caller of ``Net.forward``."""

    feeds: ClassVar[bool] = True
    is_data = True
    onnx = TRACED   # its tops become the graph's inputs
    backward = False   # Caffe: input_layer.hpp, memory_data_layer.hpp
    #: whether a fed top must keep the declared number of axes (the interpreter re-checks an Input's new ones)
    fixed_rank: ClassVar[bool] = True

    def next_batch(self) -> tuple[torch.Tensor, ...] | None:
        """Tops the layer supplies itself when the caller feeds none (MemoryData after ``set_arrays``)."""
        return None

    def forward(self, *tops: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for name, tensor, shape in zip(self.spec.param.top, tops, self.top_shapes):
            if self.fixed_rank and tensor.dim() != len(shape):
                raise self.spec.error(f"input '{name}' must have {len(shape)} axes like {shape}, "
                                      f"got shape {tuple(tensor.shape)}")
        return tuple(tops)


@register("Input")
class Input(FedLayer):
    """Caffe: src/caffe/layers/input_layer.cpp — one shape per top, or one shape shared by all tops."""

    n_bottoms = 0
    fixed_rank = False   # Caffe: input_layer.hpp — Reshape is a no-op, a reshaped blob keeps any shape

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shapes = [tuple(int(d) for d in s.dim) for s in spec.param.input_param.shape]
        n_top = len(spec.param.top)
        if n_top == 0:
            raise spec.error("needs at least one top")
        if len(shapes) == 1:
            shapes = shapes * n_top
        if len(shapes) != n_top:
            raise spec.error(f"input_param.shape must be given once or once per top ({n_top}), got {len(shapes)}")
        for shape in shapes:
            if any(d < 0 for d in shape):  # Caffe: Blob::Reshape CHECK_GE(shape[i], 0)
                raise spec.error(f"input_param.shape.dim must be >= 0 (Caffe's Blob::Reshape), got shape {shape}")
        self.top_shapes = shapes


@register("MemoryData")
class MemoryData(FedLayer):
    """Caffe: src/caffe/layers/memory_data_layer.cpp — tops data (batch, channels, height, width) and label
    (batch,), no transformation.  Either fed whole through ``net.forward(data=..., label=...)``, or, as in
    Caffe's ``Reset`` (pycaffe ``set_input_arrays``), given N images once with :meth:`set_arrays`, then each
    forward takes the next ``batch_size`` of them, wrapping around."""

    n_bottoms = 0
    n_tops = 2

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.memory_data_param
        if min(p.batch_size, p.channels, p.height, p.width) <= 0:
            raise spec.error("memory_data_param batch_size, channels, height and width must all be positive")
        self.top_shapes = [(p.batch_size, p.channels, p.height, p.width), (p.batch_size,)]
        self._arrays: tuple[torch.Tensor, torch.Tensor] | None = None
        self._pos = 0

    def set_arrays(self, data: torch.Tensor, labels: torch.Tensor) -> None:
        """Caffe: MemoryDataLayer::Reset — N images (N, C, H, W) and N labels, N a multiple of batch_size."""
        batch, *chw = self.top_shapes[0]
        if data.dim() != 4 or tuple(data.shape[1:]) != tuple(chw):
            raise self.spec.error(f"set_arrays: data must have shape (N, {', '.join(map(str, chw))}), "
                                  f"got {tuple(data.shape)}")
        labels = labels.reshape(-1)
        if len(labels) != len(data):
            raise self.spec.error(f"set_arrays: {len(data)} images but {len(labels)} labels")
        if len(data) == 0 or len(data) % batch:
            raise self.spec.error(f"set_arrays: the number of images ({len(data)}) must be a positive multiple "
                                  f"of memory_data_param.batch_size ({batch})")
        self._arrays, self._pos = (data, labels), 0

    def next_batch(self) -> tuple[torch.Tensor, ...] | None:
        if self._arrays is None:
            return None
        data, labels = self._arrays
        batch = self.top_shapes[0][0]
        tops = data[self._pos:self._pos + batch], labels[self._pos:self._pos + batch]
        self._pos = (self._pos + batch) % len(data)     # Caffe: memory_data_layer.cpp Forward_cpu
        return tops


@register("DummyData")
class DummyData(CaffeLayer):
    """Caffe: src/caffe/layers/dummy_data_layer.cpp — tops filled by fillers; constant fillers once, the others
    refilled at every forward."""

    n_bottoms = 0
    onnx = NO_ONNX_DATA
    backward = False   # Caffe: dummy_data_layer.hpp, Backward_cpu does nothing

    is_data = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.dummy_data_param
        n_top = len(spec.param.top)
        self.top_shapes = self._shapes(spec, p, n_top)
        fillers = list(p.data_filler) or [caffe_pb2.FillerParameter()]
        if len(fillers) == 1:
            fillers = fillers * n_top
        if len(fillers) != n_top:
            raise spec.error(f"dummy_data_param.data_filler must be given 0, 1 or {n_top} times, got {len(fillers)}")
        self.fillers = fillers
        self.register_buffer("_device_probe", torch.zeros(0), persistent=False)

    @staticmethod
    def _shapes(spec: LayerSpec, p: caffe_pb2.DummyDataParameter, n_top: int) -> list[tuple[int, ...]]:
        legacy = [list(p.num), list(p.channels), list(p.height), list(p.width)]
        if p.shape and any(legacy):
            raise spec.error("dummy_data_param: give either shape or num/channels/height/width, not both")
        if p.shape:
            shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
        else:
            if any(len(values) not in (1, n_top) for values in legacy):
                raise spec.error(f"dummy_data_param num/channels/height/width must each be given 1 or {n_top} "
                                 f"times (or use shape)")
            shapes = [tuple(int(v[i] if len(v) > 1 else v[0]) for v in legacy) for i in range(n_top)]
        if len(shapes) == 1:
            shapes = shapes * n_top
        if len(shapes) != n_top:
            raise spec.error(f"dummy_data_param.shape must be given 1 or {n_top} times, got {len(shapes)}")
        return shapes

    def forward(self) -> tuple[torch.Tensor, ...]:
        probe = self._device_probe   # follows the net's device and dtype
        tops = []
        for shape, filler in zip(self.top_shapes, self.fillers):
            if filler.type == "constant":
                tops.append(torch.full(shape, filler.value, device=probe.device, dtype=probe.dtype))
            else:
                tops.append(fill(torch.empty(shape), filler, None).to(probe))
        return tuple(tops)


@register("Parameter")
class Parameter(CaffeLayer):
    """Caffe: src/caffe/layers/parameter_layer.cpp — exposes one learnable blob (zero-initialised) as its top."""

    n_bottoms = 0
    n_tops = 1
    onnx = TRACED
    backward = True   # its blob learns (Caffe: parameter_layer.hpp)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shape = tuple(int(d) for d in spec.param.parameter_param.shape.dim)
        self.add_blob(shape)
        self.top_shapes = [shape]

    def forward(self) -> tuple[torch.Tensor]:
        return (blob(self, 0),)
