"""pycaffe's ``caffe.Net`` on :class:`vggproto.net.Net`: persistent blobs, params that write through, Caffe's
forward/backward conventions (outputs as dicts of blob arrays, diffs seeded from the output blobs' diffs).

The wrapped net's ``forward`` is replaced on the instance by one that first feeds the Input blobs' buffers, so a
write to ``net.blobs['data'].data`` is seen by the next forward whoever runs it (this wrapper or a solver's step).
"""
from __future__ import annotations

import os
import tempfile
from collections import OrderedDict
from typing import Any, Sequence

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError
from vggproto.layers.python import PythonLayer
from vggproto.net.interpreter import Net as TorchNet
from vggproto.pycaffe import batches, mode
from vggproto.pycaffe.blob import NetBlob, ParamBlob

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


class LayerView:
    """What pycaffe's ``net.layers[i]`` offers: the type and the parameter blobs."""

    def __init__(self, type_name: str, blobs: list[ParamBlob]):
        self.type = type_name
        self.blobs = blobs

    def __repr__(self) -> str:
        return f"<{self.type} layer, {len(self.blobs)} blob(s)>"


def _phase_name(phase: int | str) -> str:
    if isinstance(phase, str):
        return phase.upper()
    return "TRAIN" if phase == TRAIN else "TEST"


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
            raise TypeError("Net(model, phase) or Net(model, weights, phase)")
        if phase is None:
            raise TypeError("caffe.Net needs a phase (caffe.TRAIN or caffe.TEST)")
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
        """Take ``net`` as the net behind this view: blob buffers of its shapes, its forward made feeding."""
        self._net = net
        net.track_diffs = True   # Caffe keeps every blob's diff; autograd keeps them only when asked
        self._seen: dict | None = None
        self._mirrors: dict[tuple[int, str], tuple[torch.Tensor, np.ndarray]] = {}
        self.blobs: OrderedDict[str, NetBlob] = OrderedDict(
            (name, NetBlob(self, name, tuple(shape))) for name, shape in net.blob_shapes.items())
        self._fresh: dict[str, torch.Tensor] = {}
        self._input_tops = [top for p in net.net_param.layer if p.type == "Input" for top in p.top]
        net.forward = self._feeding_forward   # an instance attribute: Module.__call__ and solvers use it

    # ------------------------------------------------------------------------------------------ the net's state

    @property
    def torch_net(self) -> TorchNet:
        """The vggproto Net behind this view."""
        return self._net

    def refresh(self) -> None:
        """Bring the blob buffers up to date when the net has run a forward since they were last filled."""
        if self._net.blobs is self._seen:
            return
        self._seen = self._net.blobs
        self._store_all(with_diffs=True)

    def _store_all(self, with_diffs: bool) -> None:
        weights = self._net.loss_weights
        for name, tensor in self._seen.items():
            blob = self.blobs.get(name)
            if blob is None:
                blob = self.blobs[name] = NetBlob(self, name, tuple(tensor.shape))
            diff = None
            if with_diffs:
                try:
                    diff = self._net.diff(name).detach().to("cpu", torch.float32).numpy()
                except NetError:   # a blob with no recorded first value (not tracked in that forward)
                    diff = None
                if name in weights and (diff is None or not diff.any()):
                    diff = np.full(tuple(tensor.shape), weights[name], dtype=np.float32)  # Caffe: loss diffs
            blob.store(tensor.detach().to("cpu", torch.float32).numpy(), diff)

    def mirror(self, tensor: torch.Tensor, which: str) -> np.ndarray:
        """A host copy of a device parameter (or its gradient), written back before the next forward."""
        key = (id(tensor), which)
        if key not in self._mirrors:
            source = tensor if which == "data" else tensor.grad
            self._mirrors[key] = (tensor, source.detach().to("cpu", torch.float32).numpy().copy())
        return self._mirrors[key][1]

    def _push_mirrors(self) -> None:
        with torch.no_grad():
            for (_, which), (tensor, array) in self._mirrors.items():
                target = tensor if which == "data" else tensor.grad
                if target is not None:   # a solver clears gradients (to None) before each iteration
                    target.copy_(torch.from_numpy(array).reshape(target.shape))
        self._mirrors.clear()

    def _feed(self, positional: tuple, inputs: dict[str, Any]) -> None:
        """Put the Input blobs' buffers into ``inputs`` (those not given), after writing parameter mirrors back."""
        self._push_mirrors()
        stale = self._net.blobs is not self._seen
        if positional:
            return
        for name in self._input_tops:
            last = self._net.blobs.get(name)
            if stale and last is not None:   # only the inputs: a solver's step must not copy every blob
                self.blobs[name].store(last.detach().to("cpu", torch.float32).numpy(), None)
            if name not in inputs:
                tensor = torch.from_numpy(self.blobs[name].buffer.copy())
                inputs[name] = tensor.requires_grad_(bool(self._net.force_backward))

    def _feeding_forward(self, *positional: torch.Tensor, **inputs: Any) -> dict[str, torch.Tensor]:
        self._feed(positional, inputs)
        return type(self._net).forward(self._net, *positional, **inputs)

    # ------------------------------------------------------------------------------------------ pycaffe's views

    @property
    def params(self) -> OrderedDict[str, list[ParamBlob]]:
        return OrderedDict((name, [ParamBlob(self, layer, i) for i in range(len(layer.blobs))])
                           for name, layer in self._net.layer_dict.items() if len(layer.blobs))

    @property
    def layers(self) -> list:
        views = []
        for p, layer in zip(self._net.net_param.layer, self._net.layer_list):
            if isinstance(layer, PythonLayer):
                views.append(layer.py)
            else:
                views.append(LayerView(p.type, [ParamBlob(self, layer, i) for i in range(len(layer.blobs))]))
        return views

    @property
    def layer_dict(self) -> OrderedDict[str, Any]:
        return OrderedDict(zip(self._net.layer_names, self.layers))

    @property
    def _layer_names(self) -> list[str]:
        return list(self._net.layer_names)

    @property
    def _blob_names(self) -> list[str]:
        return list(self.blobs)

    @property
    def inputs(self) -> list[str]:
        return list(self._input_tops)

    @property
    def outputs(self) -> list[str]:
        return list(self._net.output_names)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((p.name, list(p.top)) for p in self._net.net_param.layer)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((p.name, list(p.bottom)) for p in self._net.net_param.layer)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        """Each blob's loss weight (0 for blobs that are not losses), as pycaffe lists them."""
        weights = self._net.loss_weights
        return OrderedDict((name, float(weights.get(name, 0.0))) for name in self.blobs)

    @property
    def phase(self) -> int:
        return self._net.phase

    # ------------------------------------------------------------------------------------------ running

    def _set_inputs(self, kwargs: dict[str, Any], what: str) -> None:
        for name, value in kwargs.items():
            if name not in self.blobs:
                raise NetError(f"{what}: no blob named '{name}' (blobs: {', '.join(self.blobs)})")
            array = np.asarray(value, dtype=np.float32)
            blob = self.blobs[name]
            if array.shape != blob.shape:
                blob.reshape(*array.shape)
            blob.data[...] = array

    def forward(self, blobs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's forward: ``kwargs`` fill input blobs; returns the outputs (or ``end``'s tops) and ``blobs``.

        With ``start`` past the data layers, only layers ``start``..``end`` run, on the blobs' current contents
        (Caffe's ForwardFromTo); otherwise layers from the first up to ``end`` run (Caffe's ForwardTo: later
        layers are neither run nor reshaped)."""
        outputs = list(self.top_names[end]) if end is not None else self.outputs
        outputs = list(dict.fromkeys([*outputs, *(blobs or [])]))
        unknown = [k for k in kwargs if k not in self._input_tops]
        if unknown:
            raise NetError(f"forward: {', '.join(unknown)} are not input blobs (inputs: {', '.join(self.inputs)})")
        self._set_inputs(kwargs, "forward")
        first = self._index(start, 0)
        layers = self._net.layer_list
        if first > 0 and not any(layer.feeds or layer.is_data for layer in layers[first:]):
            self._forward_range(first, self._index(end, len(layers) - 1))
        elif end is None:
            self._net.forward()
            self._fresh = {}
        else:
            inputs: dict[str, Any] = {}
            self._feed((), inputs)
            self._net.forward_to(self._index(end, len(layers) - 1), **inputs)
            self._fresh = {}
        self.refresh()
        return {name: self.blobs[name].data for name in outputs}

    def _index(self, name: str | None, default: int) -> int:
        if name is None:
            return default
        names = self._net.layer_names
        if name not in names:
            raise NetError(f"no layer named '{name}' (layers: {', '.join(names)})")
        return len(names) - 1 - names[::-1].index(name)   # Caffe's layer_names_index_ keeps the last

    def _forward_range(self, first: int, last: int) -> None:
        """Layers ``first``..``last`` on the buffers' values; their tops join the net's blobs (autograd kept
        from the buffers on, so a backward from those tops works)."""
        self._push_mirrors()
        self.refresh()
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
        self._seen = net.blobs
        for name, tensor in fresh.items():
            self.blobs[name].store(tensor.detach().to("cpu", torch.float32).numpy(), None)

    def backward(self, diffs: Sequence[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: Any) -> dict[str, np.ndarray]:
        """pycaffe's backward: the output blobs' diffs (``kwargs`` overwrite them; loss tops hold their loss
        weight) are propagated; with ``start``, that layer's tops' diffs.  Returns the diffs of the inputs (of
        ``end``'s bottoms) and ``diffs``.  The pass itself always reaches the bottom of the net."""
        seeds = list(self.top_names[start]) if start is not None else self.outputs
        if any(name not in self._net.blobs for name in seeds):
            self._forward_keeping_diffs(seeds)
        for name, value in kwargs.items():
            if name not in seeds:
                raise NetError(f"backward: '{name}' is not a top of the backward start ({', '.join(seeds)})")
            self.blobs[name].diff[...] = np.asarray(value, dtype=np.float32).reshape(self.blobs[name].shape)
        tensors, grads = [], []
        for name in seeds:
            tensor = self._net.blobs.get(name)
            if tensor is not None and tensor.requires_grad:
                tensors.append(tensor)
                grads.append(self._net.as_input(name, self.blobs[name].diff).reshape(tensor.shape))
        if tensors:
            torch.autograd.backward(tensors, grads, retain_graph=True)
        self._net.log_backward_debug()
        self._seen = self._net.blobs
        self._store_all(with_diffs=True)
        for name, tensor in self._fresh.items():   # a partial forward's blobs: their own gradients are the diffs
            if tensor.grad is not None:
                self.blobs[name].store(None, tensor.grad.detach().to("cpu", torch.float32).numpy())
        returned = list(self.bottom_names[end]) if end is not None else self.inputs
        returned = list(dict.fromkeys([*returned, *(diffs or [])]))
        return {name: self.blobs[name].diff for name in returned}

    def _forward_keeping_diffs(self, seeds: list[str]) -> None:
        """A backward before any forward: run one (Caffe would back-propagate through the blobs' contents),
        keeping the diffs already written into the seed blobs."""
        kept = {name: self.blobs[name].diff.copy() for name in seeds}
        self._net.forward()
        self._fresh = {}
        self.refresh()
        for name, diff in kept.items():
            if diff.shape == self.blobs[name].shape:
                self.blobs[name].store(None, diff)

    def clear_param_diffs(self) -> None:
        """Zero every parameter diff (Caffe's ClearParamDiffs; diffs otherwise accumulate over backward calls)."""
        self._mirrors = {key: value for key, value in self._mirrors.items() if key[1] != "diff"}
        for layer in self._net.layer_list:
            for blob in layer.blobs:
                if blob.grad is not None:
                    blob.grad.zero_()

    def reshape(self) -> None:
        """Caffe's Net::Reshape.  Shapes follow the inputs at the next forward here, so there is nothing to do."""

    def set_input_arrays(self, data: np.ndarray, labels: np.ndarray, layer: str | None = None) -> None:
        """Hand a MemoryData layer N images and labels (float32, N a multiple of its batch size)."""
        if data.ndim != 4 or len(labels) != len(data):
            raise ValueError("set_input_arrays needs 4-d data and one label per image")
        self._net.set_input_arrays(np.ascontiguousarray(data, np.float32),
                                   np.ascontiguousarray(labels, np.float32).reshape(-1), layer)

    # ------------------------------------------------------------------------------------------ weights

    def copy_from(self, path: str | os.PathLike) -> None:
        """Caffe's CopyTrainedLayersFrom of one file: the name is never split on commas (that list is only the
        command line's ``--weights a,b`` convention), so ``'weights.pretrained, end-to-end.caffemodel'`` works."""
        self._push_mirrors()
        self._net.load_weights([os.fspath(path)])

    def share_with(self, other: "Net") -> None:
        self._net.share_weights_from(other.torch_net)

    def save(self, path: str | os.PathLike) -> None:
        self._push_mirrors()
        self._net.save_weights(path)

    def save_hdf5(self, path: str | os.PathLike) -> None:
        """Caffe's ToHDF5 whatever the file name (vggproto picks the format by the ``.h5`` suffix)."""
        self._push_mirrors()
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
