"""pycaffe's ``caffe.Net`` on :class:`vggproto.net.Net`: persistent blobs, params that write through, Caffe's
forward/backward conventions (outputs as dicts of blob arrays, diffs seeded from the output blobs' diffs).

The blob buffers are a :class:`~vggproto.pycaffe.blob.BlobStore`, which the wrapped net takes as its explicit input
source (``Net.input_source``), so a write to ``net.blobs['data'].data`` is seen by the next forward whoever runs
it (this view or a solver's step).  A wrong name or value is one :class:`~vggproto.errors.PycaffeError` (still a
KeyError/ValueError) naming what exists.
"""
from __future__ import annotations

import operator
import os
import tempfile
from typing import Any, Sequence

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError, PycaffeTypeError, PycaffeValueError  # noqa: F401  (caffe.net.NetError, as before)
from vggproto.layers.base import CaffeLayer
from vggproto.layers.python import PythonLayer
from vggproto.net.interpreter import Net as TorchNet
from vggproto.pycaffe import batches, mode
from vggproto.pycaffe.blob import BlobStore, ParamBlob
from vggproto.pycaffe.names import Named, unknown

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class LayerView:
    """What pycaffe's ``net.layers[i]`` offers: the type and the parameter blobs."""

    def __init__(self, type_name: str, blobs: list[ParamBlob]):
        self.type = type_name
        self.blobs = blobs

    def __repr__(self) -> str:
        return f"<{self.type} layer, {len(self.blobs)} blob(s)>"


def _phase_name(phase: object) -> str:
    """caffe.TRAIN (0) or caffe.TEST (1), or their names; anything else is refused (not taken as TEST)."""
    names = {TRAIN: "TRAIN", TEST: "TEST"}
    if isinstance(phase, str) and phase.upper() in names.values():
        return phase.upper()
    try:
        return names[operator.index(phase)]
    except (TypeError, KeyError):
        raise PycaffeValueError(f"caffe.Net: phase {phase!r} is neither caffe.TRAIN ({TRAIN}) nor caffe.TEST "
                                f"({TEST})") from None


class Net:
    """``caffe.Net(model, phase)``, ``caffe.Net(model, weights, phase)`` or with ``level``/``stages``/``weights``."""

    def __init__(self, model: str | os.PathLike | caffe_pb2.NetParameter, *args: Any, phase: int | None = None,
                 level: int = 0, stages: Sequence[str] | None = None, weights: str | None = None):
        if len(args) == 2:
            weights, phase = args
        elif len(args) == 1 and isinstance(args[0], (str, os.PathLike)):
            weights = args[0]          # Net(model, weights, phase=...)
        elif len(args) == 1:
            phase = args[0]
        elif args:
            raise PycaffeTypeError(f"caffe.Net takes (model, phase) or (model, weights, phase), got {len(args) + 1} "
                                   f"positional arguments")
        if phase is None:
            raise PycaffeTypeError("caffe.Net needs a phase (caffe.TRAIN or caffe.TEST): Net(model, phase) or "
                                   "Net(model, weights, phase)")
        model = os.fspath(model) if isinstance(model, os.PathLike) else model
        net = TorchNet(model, None, _phase_name(phase), tuple(stages or ()), level)
        net.to(mode.device())
        self.attach(net)
        if weights:
            self.copy_from(weights)

    @classmethod
    def wrap(cls, net: TorchNet) -> "Net":
        """A pycaffe view of an existing vggproto Net (a solver's train or test net)."""
        self = cls.__new__(cls)
        self.attach(net)
        return self

    def attach(self, net: TorchNet) -> None:
        """Take ``net`` as the net behind this view: a blob store of its shapes, which becomes the net's input
        source (``net.input_source``), so the Input blobs feed every forward, whoever runs it."""
        self._net = net
        self._store = BlobStore(net)
        self._fresh: dict[str, torch.Tensor] = {}   # a partial forward's tops (their own gradients are diffs)

    @property
    def torch_net(self) -> TorchNet:
        """The vggproto Net behind this view."""
        return self._net

    @property
    def blobs(self) -> Named:
        """pycaffe's ``net.blobs``: every blob by name, in the order the net makes them."""
        return self._store.blobs

    # ------------------------------------------------------------------------------------------ pycaffe's views

    def _param_blobs(self, name: str, layer: CaffeLayer) -> list[ParamBlob]:
        return [ParamBlob(self._store, layer, i, name) for i in range(len(layer.blobs))]

    @property
    def params(self) -> Named:
        """The parameter blobs of each layer that has any, by layer name."""
        return Named("net.params", "layer with parameters",
                     ((name, self._param_blobs(name, layer)) for name, layer in self._net.layer_dict.items()
                      if len(layer.blobs)))

    @property
    def layers(self) -> list:
        views = []
        for p, layer in zip(self._net.net_param.layer, self._net.layer_list):
            if isinstance(layer, PythonLayer):
                views.append(layer.py)
            else:
                views.append(LayerView(p.type, self._param_blobs(p.name, layer)))
        return views

    @property
    def layer_dict(self) -> Named:
        return Named("net.layer_dict", "layer", zip(self._net.layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def inputs(self) -> list[str]:
        return list(self._store.input_tops)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def top_names(self) -> Named:
        return Named("net.top_names", "layer", ((p.name, list(p.top)) for p in self._net.net_param.layer))

    @property
    def bottom_names(self) -> Named:
        return Named("net.bottom_names", "layer", ((p.name, list(p.bottom)) for p in self._net.net_param.layer))

    @property
    def blob_loss_weights(self) -> Named:
        """Each blob's loss weight (0 for blobs that are not losses), as pycaffe lists them."""
        weights = self._net.loss_weights
        return Named("net.blob_loss_weights", "blob",
                     ((name, float(weights.get(name, 0.0))) for name in self.blobs))

    @property
    def phase(self) -> int:
        return self._net.phase

    # ------------------------------------------------------------------------------------------ running

    def _set_inputs(self, kwargs: dict[str, Any]) -> None:
        for name, value in kwargs.items():
            if name not in self.inputs:
                raise unknown(f"net.forward({name}=...)", "input blob", "net.inputs", self.inputs)
            try:
                array = np.asarray(value, dtype=np.float32)
            except (TypeError, ValueError):
                raise PycaffeValueError(f"net.forward({name}=...): not an array of numbers (a "
                                        f"{type(value).__name__})") from None
            blob = self.blobs[name]
            if array.shape != blob.shape:
                blob.reshape(*array.shape)
            blob.data[...] = array

    def _layer_index(self, call: str, name: str | None, default: int) -> int:
        if name is None:
            return default
        names = self._net.layer_names
        if name not in names:
            raise unknown(f"{call}={name!r})", "layer", "net.layer_dict", names)
        return len(names) - 1 - names[::-1].index(name)   # Caffe's layer_names_index_ keeps the last

    def _blob_names_given(self, call: str, names: Sequence[str] | str | None) -> list[str]:
        names = [names] if isinstance(names, str) else names   # blobs='prob': one name, not its letters
        for name in names or ():
            if name not in self.blobs:
                raise unknown(f"{call}=[{name!r}])", "blob", "net.blobs", self.blobs)
        return list(names or ())

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's forward: ``kwargs`` fill input blobs; returns the outputs (or ``end``'s tops) and ``blobs``.

        With ``start`` past the data layers, only layers ``start``..``end`` run, on the blobs' current contents
        (Caffe's ForwardFromTo); otherwise layers from the first up to ``end`` run (Caffe's ForwardTo: later
        layers are neither run nor reshaped)."""
        layers = self._net.layer_list
        first = self._layer_index("net.forward(start", start, 0)
        last = self._layer_index("net.forward(end", end, len(layers) - 1)
        outputs = list(self.top_names[end]) if end is not None else self.outputs
        outputs = list(dict.fromkeys([*outputs, *self._blob_names_given("net.forward(blobs", blobs)]))
        self._set_inputs(kwargs)
        if first > 0 and not any(layer.feeds or layer.is_data for layer in layers[first:]):
            self._forward_range(first, last)
        else:   # the store feeds the Input blobs' buffers (the net's input_source)
            self._net.forward_to(last)
            self._fresh = {}
        return {name: self.blobs[name].data for name in outputs}

    def _forward_range(self, first: int, last: int) -> None:
        """Layers ``first``..``last`` on the buffers' values; their tops join the net's blobs (autograd kept
        from the buffers on, so a backward from those tops works)."""
        self._store.push_mirrors()
        self._store.refresh()
        net = self._net
        fresh: dict[str, torch.Tensor] = {}
        for param, layer in zip(net.net_param.layer[first:last + 1], net.layer_list[first:last + 1]):
            propagate = list(param.propagate_down) or [True] * len(param.bottom)
            bottoms = []
            for name, keep in zip(param.bottom, propagate):
                if name not in fresh:
                    leaf = net.as_input(name, self.blobs[name].data.copy())
                    fresh[name] = leaf.requires_grad_(bool(net.force_backward))
                bottoms.append(fresh[name] if keep else fresh[name].detach())
            fresh.update(zip(param.top, layer(*bottoms)))
        for tensor in fresh.values():
            if tensor.requires_grad and not tensor.is_leaf:
                tensor.retain_grad()
        net.blobs = {**net.blobs, **fresh}
        self._fresh = fresh
        self._store.take(fresh)

    def _seed_diffs(self, seeds: list[str], start: str | None, kwargs: dict[str, Any]) -> None:
        for name, value in kwargs.items():
            if name not in seeds:
                where = f"net.top_names[{start!r}]" if start is not None else "net.outputs"
                raise unknown(f"net.backward({name}=...)", "top to start from", where, seeds)
            shape = self.blobs[name].shape
            try:
                self.blobs[name].diff[...] = np.asarray(value, dtype=np.float32).reshape(shape)
            except (TypeError, ValueError):
                raise PycaffeValueError(f"net.backward({name}=...): {np.shape(value)} does not fit the blob's "
                                        f"shape {shape}") from None

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's backward: the output blobs' diffs (``kwargs`` overwrite them; loss tops hold their loss
        weight) are propagated; with ``start``, that layer's tops' diffs.  Returns the diffs of the inputs (of
        ``end``'s bottoms) and ``diffs``.  The pass itself always reaches the bottom of the net."""
        self._layer_index("net.backward(start", start, 0)
        self._layer_index("net.backward(end", end, 0)
        returned = list(self.bottom_names[end]) if end is not None else self.inputs
        returned = list(dict.fromkeys([*returned, *self._blob_names_given("net.backward(diffs", diffs)]))
        seeds = list(self.top_names[start]) if start is not None else self.outputs
        if any(name not in self._net.blobs for name in seeds):
            self._forward_keeping_diffs(seeds)
        self._seed_diffs(seeds, start, kwargs)
        tensors, grads = [], []
        for name in seeds:
            tensor = self._net.blobs.get(name)
            if tensor is not None and tensor.requires_grad:
                tensors.append(tensor)
                grads.append(self._net.as_input(name, self.blobs[name].diff).reshape(tensor.shape))
        if tensors:
            torch.autograd.backward(tensors, grads, retain_graph=True)
        self._net.log_backward_debug()
        self._store.refresh(force=True)
        for name, tensor in self._fresh.items():   # a partial forward's blobs: their own gradients are the diffs
            if tensor.grad is not None:
                self._store.put(name, None, tensor.grad.detach().to("cpu", torch.float32).numpy())
        return {name: self.blobs[name].diff for name in returned}

    def _forward_keeping_diffs(self, seeds: list[str]) -> None:
        """A backward before any forward: run one (Caffe would back-propagate through the blobs' contents),
        keeping the diffs already written into the seed blobs."""
        kept = {name: self.blobs[name].diff.copy() for name in seeds}
        self._net.forward()
        self._fresh = {}
        for name, diff in kept.items():
            if diff.shape == self.blobs[name].shape:
                self._store.put(name, None, diff)

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff (Caffe's ClearParamDiffs; diffs otherwise accumulate over backward calls)."""
        self._store.drop_diff_mirrors()
        for layer in self._net.layer_list:
            for blob in layer.blobs:
                if blob.grad is not None:
                    blob.grad.zero_()

    def reshape(self) -> None:
        """Caffe's Net::Reshape.  Shapes follow the inputs at the next forward here, so there is nothing to do."""

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray, layer: str | None = None) -> None:
        """Hand a MemoryData layer N images and labels (float32, N a multiple of its batch size)."""
        if np.ndim(data) != 4 or len(labels) != len(data):
            raise PycaffeValueError(f"net.set_input_arrays: needs 4-d data (N, C, H, W) and one label per image, "
                                    f"got data of shape {np.shape(data)} and {len(labels)} label(s)")
        self._net.set_input_arrays(np.ascontiguousarray(data, np.float32),
                                   np.ascontiguousarray(labels, np.float32).reshape(-1), layer)

    # ------------------------------------------------------------------------------------------ weights

    def copy_from(self, path: str | os.PathLike) -> None:
        """Caffe's CopyTrainedLayersFrom of one file: the name is never split on commas (that list is only the
        command line's ``--weights a,b`` convention), so ``'weights.pretrained, end-to-end.caffemodel'`` works."""
        self._store.push_mirrors()
        self._net.load_weights([os.fspath(path)])

    def share_with(self, other: "Net") -> None:
        self._net.share_weights_from(other.torch_net)

    def save(self, path: str | os.PathLike) -> None:
        self._store.push_mirrors()
        self._net.save_weights(path)

    def save_hdf5(self, path: str | os.PathLike) -> None:
        """Caffe's ToHDF5 whatever the file name (vggproto picks the format by the ``.h5`` suffix)."""
        self._store.push_mirrors()
        path = os.fspath(path)
        if path.endswith(".h5"):
            self._net.save_weights(path)
            return
        folder = os.path.dirname(os.path.abspath(path))
        handle, temp = tempfile.mkstemp(suffix=".h5", dir=folder)
        os.close(handle)
        self._net.save_weights(temp)
        os.replace(temp, path)

    def load_hdf5(self, path: str | os.PathLike) -> None:
        self.copy_from(path)

    # ------------------------------------------------------------------------------------------ batches

    def forward_all(self, blobs: Sequence[str] | None = None, **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's forward_all: every item of the inputs, batch by batch; outputs concatenated."""
        return batches.forward_all(self, blobs, kwargs)

    def forward_backward_all(self, blobs: Sequence[str] | None = None, diffs: Sequence[str] | None = None,
                             **kwargs: Any) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """pycaffe's forward_backward_all: inputs and output diffs in ``kwargs``, batch by batch."""
        return batches.forward_backward_all(self, blobs, diffs, kwargs)
