"""Layers that only move data around: Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Silence.

They hold no parameters; their backward is autograd's except where Caffe's differs (Crop never sends a gradient
to its reference bottom, which it only reads the shape of; Silence has no tops, so its bottom gets no gradient
from it, which equals Caffe writing zeros into a diff that the auto-inserted Split would otherwise sum).
Top shapes are computed at construction with Caffe's checks; forward re-derives them from the actual bottoms so
a different batch size keeps working as it does after Caffe's Reshape.
"""
from __future__ import annotations

from typing import Sequence

import torch

from vggproto.caffe.shapes import Shape
from vggproto.layers.axes import canonical_axis, count
from vggproto.layers.base import ANY, TRACED
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


def _axis_or_legacy(spec: LayerSpec, param, legacy: str, shape: Shape, name: str) -> int:
    """The axis from ``axis`` or from the deprecated non-negative ``legacy`` field (``concat_dim``, ``slice_dim``)."""
    if param.HasField(legacy):
        if param.HasField("axis"):
            raise spec.error(f"{name}: set either 'axis' or the deprecated '{legacy}', not both")
        value = getattr(param, legacy)
        if value >= len(shape):
            raise spec.error(f"{name}.{legacy}: {value} is out of range for the bottom of shape {shape}")
        return value
    return canonical_axis(spec, param.axis, shape, f"{name}.axis")


@register("Concat")
class Concat(CaffeLayer):
    """Join the bottoms along ``axis``; every other dimension must agree."""

    n_bottoms = (1, ANY)
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        shapes = [tuple(s) for s in spec.bottom_shapes]
        self.axis = _axis_or_legacy(spec, spec.param.concat_param, "concat_dim", shapes[0], "concat_param")
        for i, shape in enumerate(shapes[1:], start=1):
            # Caffe: src/caffe/layers/concat_layer.cpp — same num_axes, same dims except the concat axis
            same = len(shape) == len(shapes[0]) and all(
                a == b for k, (a, b) in enumerate(zip(shape, shapes[0])) if k != self.axis)
            if not same:
                raise spec.error(f"bottom {i} '{spec.param.bottom[i] if i < len(spec.param.bottom) else i}' has "
                                 f"shape {shape} but bottom 0 has shape {shapes[0]}: all dimensions except "
                                 f"concat_param.axis {self.axis} must match")
        top = list(shapes[0])
        top[self.axis] = sum(s[self.axis] for s in shapes)
        self.top_shapes = [tuple(top)]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(bottoms) == 1:
            return (bottoms[0],)
        return (torch.cat(bottoms, dim=self.axis),)


@register("Slice")
class Slice(CaffeLayer):
    """Cut the bottom along ``axis`` at ``slice_point``s, or into equal parts (one per top)."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.slice_param
        shape = tuple(spec.bottom_shapes[0])
        self.axis = _axis_or_legacy(spec, p, "slice_dim", shape, "slice_param")
        self.sizes = self._sizes(spec, list(p.slice_point), max(1, len(spec.param.top)), shape[self.axis])
        self.top_shapes = [shape[:self.axis] + (n,) + shape[self.axis + 1:] for n in self.sizes]

    @staticmethod
    def _sizes(spec: LayerSpec, points: list[int], ntop: int, dim: int) -> list[int]:
        # Caffe: src/caffe/layers/slice_layer.cpp — ntop-1 increasing points, or an even split
        if points:
            if len(points) != ntop - 1:
                raise spec.error(f"slice_param.slice_point has {len(points)} values but the layer has {ntop} "
                                 f"tops: give exactly {ntop - 1} points")
            bounds = [0] + points + [dim]
            for a, b in zip(bounds, bounds[1:]):
                if b <= a:
                    raise spec.error(f"slice_param.slice_point {points} must be strictly increasing and inside "
                                     f"(0, {dim}) for the sliced axis of size {dim}")
            return [b - a for a, b in zip(bounds, bounds[1:])]
        if dim % ntop != 0:
            raise spec.error(f"without slice_param.slice_point the axis of size {dim} must divide evenly into "
                             f"the {ntop} tops")
        return [dim // ntop] * ntop

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(self.sizes) == 1:
            return (bottoms[0],)
        return tuple(torch.split(bottoms[0], self.sizes, dim=self.axis))


@register("Split")
class Split(CaffeLayer):
    """Give the bottom to several consumers; their gradients add up (Caffe: split_layer.cpp sums top diffs)."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.top_shapes = [tuple(spec.bottom_shapes[0])] * len(spec.param.top)

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # Views, not the same object, so a consumer working in place cannot clobber its siblings' input name.
        return tuple(bottoms[0].view_as(bottoms[0]) for _ in self.top_shapes)


@register("Flatten")
class Flatten(CaffeLayer):
    """Merge the axes ``axis`` .. ``end_axis`` (inclusive) into one."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.flatten_param
        shape = tuple(spec.bottom_shapes[0])
        self.start = canonical_axis(spec, p.axis, shape, "flatten_param.axis")
        self.end = canonical_axis(spec, p.end_axis, shape, "flatten_param.end_axis")
        if self.end < self.start:
            raise spec.error(f"flatten_param.end_axis ({self.end}) comes before axis ({self.start}) "
                             f"for the bottom of shape {shape}")
        # Caffe: src/caffe/layers/flatten_layer.cpp — top = shape[:axis] + [count(axis, end+1)] + shape[end+1:]
        self.top_shapes = [shape[:self.start] + (count(shape, self.start, self.end + 1),) + shape[self.end + 1:]]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.flatten(bottoms[0], self.start, self.end),)


def reshape_target(spec: LayerSpec, shape: Sequence[int]) -> Shape:
    """The top shape Caffe's Reshape gives a bottom of ``shape`` (0 copies a dim, one -1 is inferred)."""
    p = spec.param.reshape_param
    dims = list(p.shape.dim)
    if dims.count(-1) > 1:
        raise spec.error(f"reshape_param.shape {dims} contains more than one -1 (at most one dim can be inferred)")
    if any(d < -1 for d in dims):
        raise spec.error(f"reshape_param.shape {dims}: dims must be >= 0, 0 (copy) or -1 (infer)")
    n = len(shape)
    # Caffe: src/caffe/layers/reshape_layer.cpp — negative axis counts from the end with -1 meaning "after the last"
    start = p.axis if p.axis >= 0 else n + p.axis + 1
    if not 0 <= start <= n:
        raise spec.error(f"reshape_param.axis {p.axis} is out of range for the bottom of shape {tuple(shape)}")
    if p.num_axes < -1:
        raise spec.error(f"reshape_param.num_axes must be >= -1 (-1 = all remaining axes), got {p.num_axes}")
    end = n if p.num_axes == -1 else start + p.num_axes
    if end > n:
        raise spec.error(f"reshape_param.axis {p.axis} + num_axes {p.num_axes} exceed the {n} axes of the "
                         f"bottom of shape {tuple(shape)}")
    new = []
    for i, d in enumerate(dims):
        if d == 0:
            if start + i >= n:
                raise spec.error(f"reshape_param.shape dim {i} is 0 (copy) but the bottom of shape "
                                 f"{tuple(shape)} has no axis {start + i}")
            d = shape[start + i]
        new.append(d)
    top = list(shape[:start]) + new + list(shape[end:])
    total = count(shape)
    if -1 in new:
        known = count([d for d in top if d != -1])
        if known == 0 or total % known:
            raise spec.error(f"reshape_param.shape {dims}: cannot infer the -1 dim, {total} elements of the "
                             f"bottom {tuple(shape)} are not a multiple of {known}")
        top[top.index(-1)] = total // known
    if count(top) != total:
        raise spec.error(f"reshape_param.shape {dims} gives top shape {tuple(top)} with {count(top)} elements, "
                         f"but the bottom {tuple(shape)} has {total}")
    return tuple(top)


@register("Reshape")
class Reshape(CaffeLayer):
    """Change the shape without touching the data (Caffe shares the memory; a view here)."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        self.top_shapes = [reshape_target(spec, spec.bottom_shapes[0])]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = bottoms[0]
        reshape_target(self.spec, tuple(x.shape))   # Caffe's checks
        return (x.reshape(self._symbolic(x)),)

    def _symbolic(self, x: torch.Tensor) -> list:
        """``top`` with the copied axes (outside the reshaped range, and 0 dims) taken from ``x.shape`` and the
        inferred dim as -1, so that an ONNX trace keeps them symbolic (the batch above all), not numbers."""
        p = self.spec.param.reshape_param
        n = x.dim()
        start = p.axis if p.axis >= 0 else n + p.axis + 1
        end = n if p.num_axes == -1 else start + p.num_axes
        new = [x.shape[start + i] if d == 0 else d for i, d in enumerate(p.shape.dim)]
        dims = list(x.shape[:start]) + new + list(x.shape[end:])
        return dims


@register("Crop")
class Crop(CaffeLayer):
    """Crop bottom 0 to the shape of bottom 1 from ``axis`` on, starting at ``offset``."""

    n_bottoms = 2
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.crop_param
        data, ref = (tuple(s) for s in spec.bottom_shapes)
        if len(data) != len(ref):
            raise spec.error(f"bottom 0 has shape {data} and the reference bottom 1 has shape {ref}: both must "
                             f"have the same number of axes")
        self.start = canonical_axis(spec, p.axis, data, "crop_param.axis")
        ncrop = len(data) - self.start
        offsets = list(p.offset)
        # Caffe: src/caffe/layers/crop_layer.cpp — no offset = 0, one offset for all cropped axes, else one per axis
        if len(offsets) > 1 and len(offsets) != ncrop:
            raise spec.error(f"crop_param.offset has {len(offsets)} values; give 0, 1 or {ncrop} (one per "
                             f"cropped axis {self.start}..{len(data) - 1})")
        self.offsets = [0] * self.start + [offsets[0] if len(offsets) == 1 else (offsets[i] if offsets else 0)
                                           for i in range(ncrop)]
        self.top_shapes = [self._top_shape(data, ref)]

    def _top_shape(self, data: Shape, ref: Shape) -> Shape:
        top = []
        for i, (d, r, off) in enumerate(zip(data, ref, self.offsets)):
            if i < self.start:
                top.append(d)
                continue
            if d - off < r:
                raise self.spec.error(f"crop_param: axis {i} of bottom 0 {data} has size {d}, too small for "
                                      f"offset {off} + reference size {r} (reference shape {ref})")
            top.append(r)
        return tuple(top)

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        data, ref = bottoms
        # The reference contributes only its shape: no gradient ever flows to it (Caffe: crop_layer.cpp).
        self._top_shape(tuple(data.shape), tuple(ref.shape))   # Caffe's size checks
        # the reference's own sizes (not Python numbers), so an ONNX trace keeps them symbolic
        index = tuple(slice(None) if i < self.start else slice(off, off + ref.shape[i])
                      for i, off in enumerate(self.offsets))
        return (data[index],)


@register("Tile")
class Tile(CaffeLayer):
    """Repeat the block from ``axis`` on ``tiles`` times along ``axis``."""

    n_bottoms = 1
    onnx = TRACED
    backward = True

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        p = spec.param.tile_param
        shape = tuple(spec.bottom_shapes[0])
        self.axis = canonical_axis(spec, p.axis, shape, "tile_param.axis")
        if not p.HasField("tiles") or p.tiles < 1:
            raise spec.error("tile_param.tiles must be set to a positive number of copies")
        self.tiles = p.tiles
        top = list(shape)
        top[self.axis] *= self.tiles
        self.top_shapes = [tuple(top)]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = bottoms[0]
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return (x.repeat(*reps),)


@register("Silence")
class Silence(CaffeLayer):
    """Swallow its bottoms so they are not net outputs; no tops, and a zero diff for its bottoms."""

    n_bottoms = (1, ANY)
    onnx = TRACED
    backward = False   # no top: nothing flows back (Caffe: silence_layer.cpp zeroes the diffs)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        if len(spec.param.top):
            raise spec.error(f"Silence layers have no tops, got {list(spec.param.top)}")
        self.top_shapes = []

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return ()
