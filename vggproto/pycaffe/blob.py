"""pycaffe's blob memory over a vggproto Net: the store owns the activation buffers, blobs are named views of it.

A Caffe blob is memory that persists between passes, which is what pycaffe scripts rely on (write the input,
forward, read any blob).  vggproto's Net makes new tensors every forward, so :class:`BlobStore` keeps a numpy
buffer per blob, refreshed from the net's latest forward when one is read after a forward (a solver's step
included: the store compares the net's blob dict, so nothing is copied per iteration), and it is the net's
explicit input hook (``Net.input_source``): every forward, whoever runs it, takes the Input blobs' buffers for
the inputs it is not given.  :class:`NetBlob` is one name in the store; :class:`ParamBlob` is a view of
``layer.blobs[i]`` itself: on the CPU its ``data``/``diff`` share memory with the parameter and its gradient, so
writes change the net; on a GPU they are host mirrors the store writes back before the next forward.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vggproto.errors import NetError
from vggproto.layers.base import CaffeLayer
from vggproto.layers.python import Blob, blob_shape
from vggproto.net.interpreter import Net as TorchNet
from vggproto.pycaffe.names import Named


def _host(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()


class BlobStore:
    """The persistent blob buffers of one vggproto Net, and the input source of its forwards."""

    def __init__(self, net: TorchNet):
        self.net = net
        net.track_diffs = True   # Caffe keeps every blob's diff; autograd keeps them only when asked
        self._seen: dict | None = None
        self._data: dict[str, np.ndarray] = {}
        self._diff: dict[str, np.ndarray] = {}
        self._mirrors: dict[tuple[int, str], tuple[torch.Tensor, np.ndarray]] = {}
        self.blobs: Named = Named("net.blobs", "blob")
        for name, shape in net.blob_shapes.items():
            self._add(name, tuple(shape or ()))
        self.input_tops = [top for p in net.net_param.layer if p.type == "Input" for top in p.top]
        net.input_source = self

    def _add(self, name: str, shape: tuple[int, ...]) -> None:
        self._data[name] = np.zeros(shape, dtype=np.float32)
        self._diff[name] = np.zeros_like(self._data[name])
        self.blobs[name] = NetBlob(self, name)

    # ------------------------------------------------------------------------------------------ the buffers

    def data(self, name: str) -> np.ndarray:
        """Blob ``name``'s data, brought up to date with the net's last forward first."""
        self.refresh()
        return self._data[name]

    def diff(self, name: str) -> np.ndarray:
        self.refresh()
        return self._diff[name]

    def buffer(self, name: str) -> np.ndarray:
        """The data array as it is, without refreshing it from the net first."""
        return self._data[name]

    def reshape(self, name: str, shape: tuple[int, ...]) -> None:
        """Caffe's Blob::Reshape: new (zero) memory only when the shape changes."""
        self.refresh()
        if shape != self._data[name].shape:
            self._data[name] = np.zeros(shape, dtype=np.float32)
            self._diff[name] = np.zeros_like(self._data[name])

    def put(self, name: str, data: np.ndarray | None, diff: np.ndarray | None) -> None:
        """Copy values in, keeping the arrays (as Caffe keeps blob memory) when the shape is the same."""
        if name not in self._data:
            self._add(name, data.shape if data is not None else diff.shape)
        if data is not None:
            if data.shape != self._data[name].shape:
                self._data[name] = np.zeros(data.shape, dtype=np.float32)
                self._diff[name] = np.zeros_like(self._data[name])
            np.copyto(self._data[name], data)
        if diff is not None:
            np.copyto(self._diff[name], diff.reshape(self._diff[name].shape))

    def refresh(self, force: bool = False) -> None:
        """Fill the buffers (data and diffs) from the net's blobs when it has run a forward since the last fill
        (or always, with ``force``: after a backward, which changes diffs only)."""
        if self.net.blobs is self._seen and not force:
            return
        self._seen = self.net.blobs
        weights = self.net.loss_weights
        for name, tensor in self._seen.items():
            try:
                diff = _host(self.net.diff(name))
            except NetError:   # a blob with no recorded first value (not tracked in that forward)
                diff = None
            if name in weights and (diff is None or not diff.any()):
                diff = np.full(tuple(tensor.shape), weights[name], dtype=np.float32)  # Caffe: loss diffs
            self.put(name, _host(tensor), diff)

    def take(self, fresh: dict[str, torch.Tensor]) -> None:
        """A partial forward's tops (already in the net's blobs): their data, the rest left as it is."""
        self._seen = self.net.blobs
        for name, tensor in fresh.items():
            self.put(name, _host(tensor), None)

    # ------------------------------------------------------------------------------------------ parameters

    def mirror(self, tensor: torch.Tensor, which: str) -> np.ndarray:
        """A host copy of a device parameter (or its gradient), written back before the next forward."""
        key = (id(tensor), which)
        if key not in self._mirrors:
            source = tensor if which == "data" else tensor.grad
            self._mirrors[key] = (tensor, _host(source).copy())
        return self._mirrors[key][1]

    def push_mirrors(self) -> None:
        """Write the parameter mirrors back into the net (before a forward, a save or a weight copy)."""
        with torch.no_grad():
            for (_, which), (tensor, array) in self._mirrors.items():
                target = tensor if which == "data" else tensor.grad
                if target is not None:   # a solver clears gradients (to None) before each iteration
                    target.copy_(torch.from_numpy(array).reshape(target.shape))
        self._mirrors.clear()

    def drop_diff_mirrors(self) -> None:
        """Forget the gradient mirrors (the gradients were just cleared)."""
        self._mirrors = {key: value for key, value in self._mirrors.items() if key[1] != "diff"}

    # ------------------------------------------------------------------------------------------ the input hook

    def supply(self, inputs: dict[str, np.ndarray | torch.Tensor]) -> None:
        """``Net.input_source``: parameter mirrors written back, then the Input blobs' buffers for the inputs
        not given (a solver's step included, so a write to ``net.blobs['data'].data`` feeds it)."""
        self.push_mirrors()
        stale = self.net.blobs is not self._seen
        for name in self.input_tops:
            last = self.net.blobs.get(name)
            if stale and last is not None:   # only the inputs: a solver's step must not copy every blob
                self.put(name, _host(last), None)
            if name not in inputs:
                tensor = torch.from_numpy(self._data[name].copy())
                inputs[name] = tensor.requires_grad_(bool(self.net.force_backward))


class NetBlob(Blob):
    """One named activation blob of a pycaffe Net: a view of its store's buffers."""

    def __init__(self, store: BlobStore, name: str):   # no Blob.__init__: the store holds the arrays
        self._store = store
        self.name = name
        self.label = f"net.blobs[{name!r}]"

    @property
    def data(self) -> np.ndarray:
        return self._store.data(self.name)

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._assign("data", value)

    @property
    def diff(self) -> np.ndarray:
        return self._store.diff(self.name)

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._assign("diff", value)

    def reshape(self, *shape: int) -> None:
        self._store.reshape(self.name, blob_shape(shape, self.label))

    @property
    def buffer(self) -> np.ndarray:
        """The data array as it is, without refreshing it from the net first."""
        return self._store.buffer(self.name)

    def __repr__(self) -> str:
        return f"NetBlob({self.name!r}, shape={self.shape})"


class ParamBlob(Blob):
    """Parameter ``index`` of ``layer``, read through to the live tensor (sharing replaces tensors)."""

    def __init__(self, store: BlobStore, layer: CaffeLayer, index: int, layer_name: str):
        self._store = store
        self._layer = layer
        self._index = index
        self.label = f"net.params[{layer_name!r}][{index}]"

    @property
    def tensor(self) -> nn.Parameter:
        return self._layer.blobs[self._index]

    def _host(self, which: str, tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type == "cpu" and tensor.dtype == torch.float32:
            return tensor.detach().numpy()
        return self._store.mirror(self.tensor, which)

    @property
    def data(self) -> np.ndarray:
        return self._host("data", self.tensor)

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self._assign("data", value)

    @property
    def diff(self) -> np.ndarray:
        tensor = self.tensor
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        return self._host("diff", tensor.grad)

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self._assign("diff", value)

    def reshape(self, *shape: int) -> None:
        """Net surgery's reshape: a new zero parameter of ``shape`` replaces the old one."""
        shape = blob_shape(shape, self.label)
        old = self.tensor
        if tuple(old.shape) != shape:
            fresh = torch.zeros(shape, dtype=old.dtype, device=old.device)
            self._layer.blobs[self._index] = nn.Parameter(fresh, requires_grad=old.requires_grad)

    def __repr__(self) -> str:
        return f"ParamBlob(shape={self.shape})"
