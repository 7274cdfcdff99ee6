"""Caffe's ``Python`` layer: a user class (``python_param { module layer param_str }``) run inside the net.

Caffe: src/caffe/layers/python_layer.hpp.  The user's module is imported from ``sys.path`` (PYTHONPATH; for a
pycaffe script also its own folder, which Python puts there), never implicitly from the working directory, and
only by nets that run: a shapes-only build (``DataOptions.dry_run``) leaves the tops' shapes unknown.  The class
is built with the LayerParameter, gets ``param_str`` and ``phase``, then ``setup(bottom, top)`` and
``reshape(bottom, top)`` with pycaffe-style lists of :class:`Blob`.  Every forward calls ``reshape`` then
``forward`` on numpy copies of the bottoms; the autograd graph goes through :class:`_PythonFunction`, whose
backward hands the tops' gradients to the user's ``backward``, so nets with Python layers train.  :class:`Blob`
lives here (not in :mod:`vggproto.pycaffe`) because the layers package ranks below it; pycaffe reuses it as its
own blob type.
"""
from __future__ import annotations

import importlib
import operator
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import PycaffeValueError
from vggproto.layers.registry import CaffeLayer, LayerSpec, register


def blob_shape(shape: tuple, what: str = "blob") -> tuple[int, ...]:
    """``reshape``'s arguments (``reshape(1, 3, 8, 8)`` or ``reshape((1, 3, 8, 8))``) as a shape, or one
    PycaffeValueError naming ``what`` when they are not non-negative integers."""
    dims = shape[0] if len(shape) == 1 and not np.isscalar(shape[0]) else shape
    try:
        dims = tuple(operator.index(d) for d in dims)
    except TypeError:
        dims = ()
        bad = True
    else:
        bad = any(d < 0 for d in dims)
    if bad:
        raise PycaffeValueError(f"{what}.reshape{shape!r}: a shape is non-negative integers, as "
                                f"{what}.reshape(1, 3, 224, 224)")
    return dims


class Blob:
    """pycaffe's Blob: ``data`` and ``diff`` numpy arrays of one shape (float32), reshaped in place."""

    #: how errors name the blob (pycaffe's net views name theirs: ``net.blobs['data']``)
    label = "blob"

    def __init__(self, shape: Sequence[int] = ()):
        self._data = np.zeros(tuple(int(d) for d in shape), dtype=np.float32)
        self._diff = np.zeros_like(self._data)

    def _assign(self, which: str, value: object) -> None:
        """``blob.data = value``: pycaffe copies into the blob, so the shapes must agree (numpy broadcasting
        allowed); anything else is one error naming the blob and its shape."""
        target = self.data if which == "data" else self.diff
        try:
            target[...] = value
        except (ValueError, TypeError):
            shape = getattr(value, "shape", None)
            got = f"an array of shape {tuple(shape)}" if shape is not None else f"a {type(value).__name__}"
            raise PycaffeValueError(f"{self.label}.{which} = {got}: does not fit the blob's shape {target.shape} "
                                    f"(reshape the blob first: {self.label}.reshape(...))") from None

    @property
    def data(self) -> np.ndarray:
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:   # pycaffe: assigning copies into the blob (shapes must agree)
        self._assign("data", value)

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._assign("diff", value)

    def reshape(self, *shape: int) -> None:
        """Caffe's Blob::Reshape: new memory only when the shape changes (contents then undefined: zeros)."""
        shape = blob_shape(shape, self.label)
        if shape != self._data.shape:
            self._data = np.zeros(shape, dtype=np.float32)
            self._diff = np.zeros_like(self._data)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def _legacy(self, axis: int) -> int:
        shape = self.shape
        return shape[axis] if axis < len(shape) else 1   # Caffe: LegacyShape pads with 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)

    def __repr__(self) -> str:
        return f"Blob(shape={self.shape})"


class BlobVec(list):
    """A layer's parameter blobs as pycaffe lists them; ``add_blob`` is what Python layers call in setup."""

    def add_blob(self, *shape: int) -> None:
        self.append(Blob(shape))


class Layer:
    """pycaffe's ``caffe.Layer``: the base class of Python layers (built with the LayerParameter)."""

    def __init__(self, param: caffe_pb2.LayerParameter | None = None):
        self.layer_param = param
        self.blobs = BlobVec()
        self.param_str = param.python_param.param_str if param is not None else ""
        self.phase = param.phase if param is not None else caffe_pb2.TEST

    @property
    def type(self) -> str:
        return "Python"

    def setup(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's LayerSetUp; Python layers override it."""

    def reshape(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's Reshape; Python layers override it."""

    def forward(self, bottom: list[Blob], top: list[Blob]) -> None:
        """Caffe's Forward; Python layers override it."""

    def backward(self, top: list[Blob], propagate_down: list[bool], bottom: list[Blob]) -> None:
        """Caffe's Backward; Python layers override it."""


def import_layer_class(spec: LayerSpec) -> type:
    """The class ``python_param.layer`` of module ``python_param.module``, imported from ``sys.path`` only:
    Caffe's embedded Python has no working directory on it, so a stray ``.py`` beside a model is never run."""
    p = spec.param.python_param
    if not p.module or not p.layer:
        raise spec.error("python_param needs both 'module' and 'layer'")
    try:
        module = importlib.import_module(p.module)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (p.module == exc.name or p.module.startswith(exc.name + ".")):
            raise spec.error(f"cannot import python_param.module '{p.module}': {exc}") from None
        raise spec.error(f"python_param.module '{p.module}' is not importable: set PYTHONPATH to the folder that "
                         f"holds it (the working directory is not searched, as in Caffe)") from None
    cls = getattr(module, p.layer, None)
    if cls is None:
        raise spec.error(f"module '{p.module}' has no class '{p.layer}'")
    return cls


def _instantiate(cls: type, spec: LayerSpec) -> Any:
    try:
        layer = cls(spec.param)
    except TypeError:   # a duck-typed class that does not take the LayerParameter
        layer = cls()
    layer.param_str = spec.param.python_param.param_str
    layer.phase = spec.phase
    if not hasattr(layer, "blobs"):
        layer.blobs = BlobVec()
    return layer


def _fill(blobs: list[Blob], arrays: Sequence[np.ndarray]) -> None:
    for blob, array in zip(blobs, arrays):
        blob.reshape(*array.shape)
        blob.data[...] = array


class LiveParam(Blob):
    """A Python layer's parameter blob once the net owns it: ``data`` reads the net's parameter tensor (shared
    memory on the CPU, so solver updates and loaded weights are seen), ``diff`` is handed to autograd as the
    parameter's gradient after each backward."""

    def __init__(self, layer: CaffeLayer, index: int):
        self._layer = layer
        self._index = index
        self._diff = np.zeros(tuple(layer.blobs[index].shape), dtype=np.float32)

    @property
    def data(self) -> np.ndarray:
        tensor = self._layer.blobs[self._index].detach()
        if tensor.device.type == "cpu" and tensor.dtype == torch.float32:
            return tensor.numpy()
        return tensor.to("cpu", torch.float32).numpy()   # a copy: writes from a GPU net's layer are not kept

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    def reshape(self, *shape: int) -> None:
        raise NotImplementedError("a Python layer's parameter blobs keep the shape they had after setup")


@register("Python")
class PythonLayer(CaffeLayer):
    """The net's handle on one user Python layer: its Blob lists, and the autograd bridge to its backward."""
    onnx = "a Python layer runs arbitrary code that has no ONNX form"
    backward = True   # the module's own backward (autograd calls it)

    def __init__(self, spec: LayerSpec):
        super().__init__(spec)
        if spec.options.dry_run:   # a shapes-only build (info, draw, convert): never import or run the user's code
            self.py = None
            self.top_shapes = [None] * len(spec.param.top)
            self.shapes_unknown = "Python layer: its code runs only in commands that run the net"
            return
        self.py = _instantiate(import_layer_class(spec), spec)
        self.bottom = [Blob(shape) for shape in spec.bottom_shapes]
        self.top = [Blob() for _ in spec.param.top]
        self.register_buffer("_where", torch.zeros(0), persistent=False)
        self.py.setup(self.bottom, self.top)
        self.py.reshape(self.bottom, self.top)
        self.top_shapes = [blob.shape for blob in self.top]
        self._own_params()

    def _own_params(self) -> None:
        """The blobs the user's setup added become the net's parameters (learned, saved, loaded)."""
        blobs = self.py.blobs
        if not isinstance(blobs, list):
            return
        for index, blob in enumerate(blobs):
            self.blobs.append(nn.Parameter(torch.from_numpy(np.array(blob.data, dtype=np.float32))))
            blobs[index] = LiveParam(self, index)

    def run_forward(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The user's reshape + forward on ``arrays`` (the bottoms); copies of the tops."""
        _fill(self.bottom, arrays)
        self.py.reshape(self.bottom, self.top)
        self.py.forward(self.bottom, self.top)
        return [blob.data.copy() for blob in self.top]

    def run_backward(self, bottoms: Sequence[np.ndarray], tops: Sequence[np.ndarray],
                     grads: Sequence[np.ndarray], propagate: list[bool]) -> list[np.ndarray]:
        """The user's backward with the blobs as they were after this forward; copies of the bottom diffs."""
        _fill(self.bottom, bottoms)
        _fill(self.top, tops)
        for blob, grad in zip(self.top, grads):
            blob.diff[...] = grad
        for blob in [*self.bottom, *self.py.blobs]:
            blob.diff[...] = 0
        self.py.backward(self.top, propagate, self.bottom)
        return [blob.diff.copy() for blob in [*self.bottom, *self.py.blobs]]

    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return _PythonFunction.apply(self, len(bottoms), *bottoms, *self.blobs)


class _PythonFunction(torch.autograd.Function):
    """Autograd through a Python layer: numpy in, numpy out, the user's backward for the gradients."""

    @staticmethod
    def forward(ctx, layer: PythonLayer, n_bottom: int, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = [b.detach().to("cpu", torch.float32).numpy().copy() for b in tensors[:n_bottom]]
        tops = layer.run_forward(arrays)
        ctx.layer, ctx.bottoms, ctx.tops = layer, arrays, tops
        where = layer._where
        return tuple(torch.from_numpy(t).to(where.device, where.dtype) for t in tops)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None) -> tuple:
        layer = ctx.layer
        arrays = [np.zeros_like(t) if g is None else g.detach().to("cpu", torch.float32).numpy()
                  for g, t in zip(grads, ctx.tops)]
        needs = list(ctx.needs_input_grad[2:])
        diffs = layer.run_backward(ctx.bottoms, ctx.tops, arrays, needs[:len(ctx.bottoms)])
        where = layer._where
        out = [torch.from_numpy(d).to(where.device, where.dtype) if need else None for d, need in zip(diffs, needs)]
        return (None, None, *out)
