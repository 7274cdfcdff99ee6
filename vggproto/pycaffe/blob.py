"""pycaffe's blobs over a vggproto Net: activations in numpy buffers, parameters as views of the torch tensors.

A Caffe blob is memory that persists between passes, which is what pycaffe scripts rely on (write the input,
forward, read any blob).  vggproto's Net makes new tensors every forward, so :class:`NetBlob` keeps numpy buffers
that the owning :class:`vggproto.pycaffe.net.Net` refreshes from the latest forward whenever one has happened
since (a solver's step included), and that it feeds back into the net's Input layers.  :class:`ParamBlob` is a
view of ``layer.blobs[i]`` itself: on the CPU its ``data``/``diff`` share memory with the parameter and its
gradient, so writes change the net; on a GPU they are host mirrors written back before the next forward.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vggproto.layers.python import Blob
from vggproto.layers.registry import CaffeLayer

if TYPE_CHECKING:
    from vggproto.pycaffe.net import Net


class NetBlob(Blob):
    """One named activation blob of a pycaffe Net (refreshed from the net's last forward when read)."""

    def __init__(self, owner: "Net", name: str, shape: tuple[int, ...]):
        super().__init__(shape)
        self._owner = owner
        self.name = name

    @property
    def data(self) -> np.ndarray:
        self._owner.refresh()
        return self._data

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        self._owner.refresh()
        return self._diff

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    def reshape(self, *shape: int) -> None:
        self._owner.refresh()
        super().reshape(*shape)

    @property
    def buffer(self) -> np.ndarray:
        """The data array as it is, without refreshing it from the net first."""
        return self._data

    def store(self, data: np.ndarray | None, diff: np.ndarray | None) -> None:
        """Copy the net's values in, keeping the arrays (as Caffe keeps blob memory) when the shape is the same."""
        if data is not None:
            if data.shape != self._data.shape:
                self._data = np.zeros(data.shape, dtype=np.float32)
                self._diff = np.zeros_like(self._data)
            np.copyto(self._data, data)
        if diff is not None:
            np.copyto(self._diff, diff.reshape(self._diff.shape))


class ParamBlob(Blob):
    """Parameter ``index`` of ``layer``, read through to the live tensor (sharing replaces tensors)."""

    def __init__(self, owner: "Net", layer: CaffeLayer, index: int):
        self._owner = owner
        self._layer = layer
        self._index = index

    @property
    def tensor(self) -> nn.Parameter:
        return self._layer.blobs[self._index]

    def _host(self, which: str, tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type == "cpu" and tensor.dtype == torch.float32:
            return tensor.detach().numpy()
        return self._owner.mirror(self.tensor, which)

    @property
    def data(self) -> np.ndarray:
        return self._host("data", self.tensor)

    @data.setter
    def data(self, value: np.ndarray) -> None:
        self.data[...] = value

    @property
    def diff(self) -> np.ndarray:
        tensor = self.tensor
        if tensor.grad is None:
            tensor.grad = torch.zeros_like(tensor)
        return self._host("diff", tensor.grad)

    @diff.setter
    def diff(self, value: np.ndarray) -> None:
        self.diff[...] = value

    def reshape(self, *shape: int) -> None:
        """Net surgery's reshape: a new zero parameter of ``shape`` replaces the old one."""
        shape = tuple(int(d) for d in (shape[0] if len(shape) == 1 and not np.isscalar(shape[0]) else shape))
        old = self.tensor
        if tuple(old.shape) != shape:
            fresh = torch.zeros(shape, dtype=old.dtype, device=old.device)
            self._layer.blobs[self._index] = nn.Parameter(fresh, requires_grad=old.requires_grad)

    def __repr__(self) -> str:
        return f"ParamBlob(shape={self.shape})"
