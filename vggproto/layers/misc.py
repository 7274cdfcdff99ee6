"""BVLC layers that move items or pixels around without parameters: BatchReindex, Filter and Im2col.

* ``BatchReindex`` (Caffe: src/caffe/layers/batch_reindex_layer.cpp): top[n] = bottom0[index[n]] for a 1-D index
  bottom; an index may repeat (its gradients add up) and must lie in [0, N).
* ``Filter`` (filter_layer.cpp): the items (first axis) of every bottom but the last whose entry in the last
  bottom, the selector, is non-zero; the tops change size with the selector (at construction they keep all N
  items, as Caffe's first Reshape).  Backward: the selected items get their top's gradient, the others zero.
* ``Im2col`` (im2col_layer.cpp + util/im2col.cpp): the convolution_param patches of each spatial position as
  channels, in Caffe's (c, k_0, k_1, …) major-to-minor order, for any number of spatial axes after ``axis``.

BatchReindex's index and Filter's selector get no gradient: Caffe stops with a fatal error when the backward pass
would need one (the index comes from a learned layer, or its ``propagate_down`` is set to true), and so does the
backward pass here (:func:`refuse_backprop`).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F

from vggproto.caffe.shapes import Shape
from vggproto.errors import NetError
from vggproto.layers.base import ANY, TRACED
from vggproto.layers.common import canonical_axis, conv_geometry, count
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


class _Refuse(torch.autograd.Function):
    """Identity on a top, whose backward raises the layer's error (Caffe's LOG(FATAL) in Backward_cpu)."""

    @staticmethod
    def forward(ctx, top: torch.Tensor, index: torch.Tensor, error: NetError) -> torch.Tensor:
        ctx.error = error
        return top.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> None:
        raise ctx.error


def needs_index_grad(spec: LayerSpec, index: torch.Tensor, bottom: int, others_need: bool) -> bool:
    """Whether a backward pass through this layer would ask Caffe for the gradient of bottom ``bottom``.

    Caffe's net.cpp gives a bottom a gradient when its blob needs one (here: the tensor requires grad) or, when
    the layer sets ``propagate_down``, when that says true -- and then only if the layer runs backward at all
    (``others_need``: one of its other bottoms needs a gradient).
    """
    if not torch.is_grad_enabled():
        return False
    down = spec.param.propagate_down
    if len(down) > bottom:   # Caffe: src/caffe/net.cpp AppendBottom — an explicit propagate_down replaces the need
        return bool(down[bottom]) and (others_need or index.requires_grad)
    return index.requires_grad


def refuse_backprop(spec: LayerSpec, tops: Sequence[torch.Tensor], index: torch.Tensor, bottom: int,
                    what: str, source: str) -> tuple[torch.Tensor, ...]:
    """``tops`` as they are, or -- when a backward pass would need the gradient of the index-like bottom
    ``bottom`` (see :func:`needs_index_grad`) -- tops whose backward raises one clear error instead."""
    if not needs_index_grad(spec, index, bottom, any(t.requires_grad for t in tops)):
        return tuple(tops)
    error = spec.error(f"cannot backpropagate to {what} (bottom {bottom}, '{spec.param.bottom[bottom]}'), as in "
                       f"Caffe ({source}); give it propagate_down: false")
    return tuple(_Refuse.apply(t, index, error) for t in tops)


@register("BatchReindex")
class BatchReindex(CaffeLayer):
    """top[n] = bottom0[int(index[n])]; top shape (len(index), *bottom0.shape[1:])."""

    n_bottoms = 2
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        data, index = (tuple(s) for s in spec.bottom_shapes)
        self._check(data, index)
        # Caffe: batch_reindex_layer.cpp Reshape — top = (index count, bottom0's other axes)
        self.top_shapes = [(index[0], *data[1:])]

    def _check(self, data: Shape, index: Shape) -> None:
        if len(data) < 1:
            raise self.spec.error(f"bottom 0 needs a first (batch) axis, got shape {tuple(data)}")
        if len(index) != 1:
            # Caffe: batch_reindex_layer.cpp Reshape — CHECK_EQ(1, bottom[1]->num_axes())
            raise self.spec.error(f"bottom 1 (the index) must be 1-D, got shape {tuple(index)}")

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor]:
        self._check(tuple(x.shape), tuple(index.shape))
        values = index.detach()
        # Caffe: batch_reindex_layer.cpp check_batch_reindex — CHECK_GE(index, 0), CHECK_LT(index, N) on the float
        bad = ~((values >= 0) & (values < x.shape[0]))
        if bool(bad.any()):
            at = int(bad.nonzero()[0, 0])
            raise self.spec.error(f"index {float(values[at]):g} at position {at} of bottom 1 "
                                  f"('{self.spec.param.bottom[1]}') is outside the batch [0, {x.shape[0]}) of "
                                  f"bottom 0 ('{self.spec.param.bottom[0]}')")
        # Caffe: static_cast<int> truncates; Backward adds the top diff into each index's item (repeats add up)
        top = x.index_select(0, values.to(x.device).long())
        return refuse_backprop(self.spec, [top], index, 1, "the index", "batch_reindex_layer.cpp")


@register("Filter")
class Filter(CaffeLayer):
    """The items of bottoms 0..K-1 whose selector entry (bottom K) is non-zero, in their order."""

    n_bottoms = (2, ANY)
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shapes = [tuple(s) for s in spec.bottom_shapes]
        if len(spec.param.top) != len(shapes) - 1:
            # Caffe: filter_layer.cpp LayerSetUp — CHECK_EQ(top.size(), bottom.size() - 1)
            raise spec.error(f"needs one top per filtered bottom ({len(shapes) - 1}), got {len(spec.param.top)}")
        self._check(shapes)
        # Caffe: filter_layer.cpp Reshape — the first reshape (selector unknown) keeps all bottom[0]->shape(0)
        self.top_shapes = [(shapes[0][0], *s[1:]) for s in shapes[:-1]]

    def _check(self, shapes: list[Shape]) -> None:
        # Caffe: filter_layer.cpp Reshape — selector (N, 1, 1, …); every bottom has the selector's N
        selector = shapes[-1]
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self.spec.error(f"the selector (last bottom) must have shape (N) or (N, 1, ...), got "
                                  f"{tuple(selector)}")
        for i, shape in enumerate(shapes[:-1]):
            if len(shape) < 1 or shape[0] != selector[0]:
                raise self.spec.error(f"bottom {i} has shape {tuple(shape)}: each bottom needs the selector's "
                                      f"first axis {selector[0]}")

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        *data, selector = bottoms
        self._check([tuple(b.shape) for b in bottoms])
        # Caffe: filter_layer.cpp Reshape — `if (*selector)`: any non-zero value (NaN too) selects its item
        keep = (selector.detach().reshape(-1) != 0).nonzero().reshape(-1)
        # Caffe: filter_layer.cpp Backward_cpu — selected items get their top diff back, the others zero (as
        # index_select's backward does)
        tops = [x.index_select(0, keep.to(x.device)) for x in data]
        return refuse_backprop(self.spec, tops, selector, len(data), "the selector", "filter_layer.cpp")


def c_div(a: int, b: int) -> int:
    """C++ integer division (truncates toward zero), which Caffe's shape arithmetic uses."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def im2col(x: torch.Tensor, axis: int, kernel: Sequence[int], stride: Sequence[int], pad: Sequence[int],
           dilation: Sequence[int], out: Sequence[int]) -> torch.Tensor:
    """Caffe's im2col over the spatial axes after ``axis``: (…, C, S…) -> (…, C·∏k, out…), zeros outside.

    Written as one strided slice per kernel offset of the zero-padded input, so any number of spatial axes work
    and autograd's backward adds overlapping patches up, as Caffe's col2im does.
    # Caffe: src/caffe/util/im2col.cpp im2col_cpu / im2col_nd_cpu — column channel c·K + k, k row-major
    """
    outer, channels, sizes = x.shape[:axis], x.shape[axis], x.shape[axis + 1:]
    # an ONNX trace would freeze count(outer), the batch; -1 keeps it dynamic (eagerly the same but for N = 0)
    flat = x.reshape(-1 if torch.onnx.is_in_onnx_export() else count(outer), channels, *sizes)
    pads: list[int] = []
    for n, k, s, p, d, o in reversed(list(zip(sizes, kernel, stride, pad, dilation, out))):
        reach = (k - 1) * d + (o - 1) * s + 1          # the padded length the windows read
        pads += [p, max(0, reach - n - p)]              # a window past the padding reads zeros, as in Caffe
    padded = F.pad(flat, pads)
    columns = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        window = tuple(slice(j * d, j * d + (o - 1) * s + 1, s) for j, d, o, s in zip(offsets, dilation, out, stride))
        columns.append(padded[(slice(None), slice(None)) + window])
    stacked = torch.stack(columns, dim=2)              # (N, C, K, out…): channel-major, then kernel offset
    return stacked.reshape(*outer, channels * len(columns), *out)


@register("Im2col")
class Im2col(CaffeLayer):
    """Caffe's Im2col layer: convolution_param kernel/stride/pad/dilation/axis (num_output, group and the fillers
    are not used); ``force_nd_im2col`` picks Caffe's N-d routine, which gives the same values."""

    n_bottoms = 1
    n_tops = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.convolution_param
        shape = tuple(spec.bottom_shapes[0])
        self.axis = canonical_axis(spec, p.axis, shape, "convolution_param.axis")
        n_sp = len(shape) - self.axis - 1
        if n_sp < 1:
            # Caffe: im2col_layer.cpp LayerSetUp — CHECK_GE(num_spatial_axes_, 1)
            raise spec.error(f"needs at least one spatial axis after axis {self.axis}, bottom shape {shape}")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(spec, p, n_sp)
        if min(self.kernel) <= 0 or min(self.stride) <= 0:
            # Caffe: im2col_layer.cpp LayerSetUp — CHECK_GT on kernel and stride (a dilation of 0 is accepted)
            raise spec.error(f"kernel size {self.kernel} and stride {self.stride} must be positive")
        out = self._out(shape)
        channels = shape[self.axis] * count(self.kernel)
        self.top_shapes = [(*shape[:self.axis], channels, *out)]

    def _out(self, shape: Shape) -> list[int]:
        out = []
        for i, size in enumerate(shape[self.axis + 1:]):
            extent = self.dilation[i] * (self.kernel[i] - 1) + 1
            # Caffe: im2col_layer.cpp Reshape — (in + 2 pad - extent) / stride + 1 in C++ integer division
            out.append(c_div(size + 2 * self.pad[i] - extent, self.stride[i]) + 1)
        if min(out) <= 0:
            raise self.spec.error(f"output would be empty: bottom {tuple(shape)}, kernel {self.kernel}, stride "
                                  f"{self.stride}, pad {self.pad}, dilation {self.dilation}")
        return out

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        # Caffe reshapes on every forward (the input may have changed size); plain ints for the spatial sizes,
        # which a trace for ONNX would otherwise hand over as tensors
        out = self._out(tuple(x.shape[:self.axis + 1]) + tuple(int(d) for d in x.shape[self.axis + 1:]))
        return (im2col(x, self.axis, self.kernel, self.stride, self.pad, self.dilation, out),)
