"""The interpreter: a Caffe net definition run as a PyTorch ``nn.Module`` with Caffe's net semantics.

Caffe: src/caffe/net.cpp.  The net is filtered by NetStateRules, every layer is built from the registry with its
bottoms' shapes (so shape errors surface at construction, located at file:line), in-place layers rebind the blob
name to the newest tensor, loss weights default to 1 on loss layers' first top, ``propagate_down: false``
detaches a bottom, parameters are shared by ``ParamSpec.name`` and ``lr_mult: 0`` parameters get no gradient
unless ``force_backward`` is set.  Autograd does the backward pass.
"""
from __future__ import annotations

import logging
import os
from typing import Iterable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from vggproto.caffe.netstate import filter_net, layer_included, merged_state
from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.shapes import Shape
from vggproto.data.options import DataOptions
from vggproto.errors import InputShapeError, NetError, PrototxtError, VGGProtoError
from vggproto.layers.base import CaffeLayer, LayerSpec, UnknownShapes, check_blob_size
from vggproto.layers.registry import build_layer
from vggproto.net import debug as net_debug
from vggproto.net import reshape as net_reshape
from vggproto.net import weights as net_weights
from vggproto.net.params import LearnableParam, ParamOwner, setup_params
from vggproto.net.source import ModelSource, layer_line_numbers, load_model, model_name

log = logging.getLogger("vggproto.net.interpreter")


class InputSource(Protocol):
    """Supplies the inputs a forward is not given: ``Net.input_source`` (pycaffe's blob store, which feeds its
    Input blobs' buffers to whoever runs the net, a solver's step included)."""

    def supply(self, inputs: dict[str, np.ndarray | torch.Tensor]) -> None:
        """Add to ``inputs`` (a forward's, keyed by top) what this source holds for the tops not in it."""


class Net(nn.Module):
    """A Caffe net (prototxt path, text or NetParameter) for one phase/level/stages, optionally with weights.
    Inputs a forward is not given come from ``input_source`` when one is set (pycaffe's blob store)."""

    def __init__(self, model: ModelSource, weights: str | os.PathLike | Sequence | None = None,
                 phase: str | int = "TEST", stages: Iterable[str] = (), level: int = 0, *,
                 seed: int | None = None, options: DataOptions | None = None, dialect: str | None = None):
        super().__init__()
        full, self.path, text, self.dialect = load_model(model, dialect)
        state = merged_state(full, phase, level, stages)
        lines = [line for line, layer in zip(layer_line_numbers(full, text), full.layer)
                 if layer_included(layer, state, self.path)]
        self.net_param = filter_net(full, state, self.path)
        self.phase = state.phase
        self.force_backward = self.net_param.force_backward
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else torch.initial_seed() % (2 ** 63))
        self.options = options if options is not None else DataOptions()
        self.layer_list = nn.ModuleList()
        self.layer_names: list[str] = []
        self.layer_lines: dict[str, int | None] = {}
        self.layer_dict: dict[str, CaffeLayer] = {}
        self.blob_shapes: dict[str, Shape | None] = {}   # None: unknown in a shapes-only build (Python layers)
        self._owners: list[ParamOwner] = []
        self._loss_weights: list[tuple[str, float]] = []
        self._propagate: list[list[bool]] = []
        self._sources: dict[str, tuple[str, int]] = {}   # blob -> (producer type, layers that read it since)
        self.register_buffer("_probe", torch.zeros(0), persistent=False)
        shared: dict[str, ParamOwner] = {}
        for param, line in zip(self.net_param.layer, lines):
            self._add_layer(param, line, generator, shared)
        # Caffe: net.cpp Init — outputs are the blobs no later layer consumes (an in-place top counts as new);
        # Caffe keeps them in a std::set, so they are listed sorted by name
        available: set[str] = set()
        for param in self.net_param.layer:
            available.difference_update(param.bottom)
            available.update(param.top)
        self.output_names = sorted(available)
        self.blobs: dict[str, torch.Tensor] = {}
        self._first: dict[str, torch.Tensor] = {}
        self._fed: dict[str, torch.Tensor] = {}
        self.loss: torch.Tensor | None = None
        self.track_diffs = False
        self.input_source: InputSource | None = None   # the explicit input hook (see InputSource)
        self.debug_info = self.net_param.debug_info   # Caffe's per-layer data/diff lines (vggproto.net.debug)
        self._debug_records: list[net_debug.LayerRecord] = []
        self._reshaped: dict[str, Shape] = {}   # Input shapes last found to fit (_check_reshaped)
        if weights:
            self.load_weights(weights)

    @classmethod
    def shapes_only(cls, model: ModelSource, phase: str | int = "TEST", level: int = 0, stages: Iterable[str] = (),
                    dialect: str | None = None) -> "Net":
        """The net built on the meta device with no data read and no Python layer run: every blob shape (unknown
        where only data or user code would tell), layer line and parameter shape, no weight memory.  The one
        such build (:func:`vggproto.net.shapes.meta_net` for drawing, dense nets and conversion; the reshape
        check); a net some layer of which needs real values at construction is built on the CPU."""
        options = DataOptions(dry_run=True)  # data layers report their shapes without opening their sources
        try:
            with torch.device("meta"):
                return cls(model, phase=phase, level=level, stages=tuple(stages), options=options, dialect=dialect)
        except VGGProtoError:
            raise
        except Exception as exc:  # some layer needs real values at construction: build the net for real
            log.debug("%s: cannot build on the meta device (%s); building on the CPU", model_name(model), exc)
            return cls(model, phase=phase, level=level, stages=tuple(stages), options=options, dialect=dialect)

    # ------------------------------------------------------------------------------------------ construction

    def _may_overwrite(self, param: caffe_pb2.LayerParameter) -> bool:
        """An in-place layer whose bottom is a Convolution/InnerProduct output no other layer has read yet: its
        memory can be reused (what Caffe does for every in-place layer) without changing any result."""
        if len(param.bottom) != 1 or list(param.top) != list(param.bottom):
            return False
        producer, readers = self._sources.get(param.bottom[0], ("", 1))
        return producer in ("Convolution", "InnerProduct") and readers == 0

    def _error(self, param: caffe_pb2.LayerParameter, line: int | None, message: str) -> NetError:
        return NetError(message, path=self.path, line=line, layer=param.name, layer_type=param.type)

    def _add_layer(self, param: caffe_pb2.LayerParameter, line: int | None, generator: torch.Generator,
                   shared: dict) -> None:
        for bottom in param.bottom:
            if bottom not in self.blob_shapes:
                known = ", ".join(self.blob_shapes) or "none"
                raise self._error(param, line, f"unknown bottom blob '{bottom}' (blobs produced so far: {known})")
        if param.name in self.layer_dict:  # Caffe: net.cpp Init accepts it; layer_names_index_ keeps the last
            log.warning("%s:%s: duplicate layer name '%s': by name, layer_dict/params give the last such layer and "
                        "caffemodel weights load into the first", self.path or "<text>", line, param.name)
        spec = LayerSpec(param=param, bottom_shapes=[self.blob_shapes[b] for b in param.bottom],
                         phase=param.phase if param.HasField("phase") else self.phase, path=self.path, line=line,
                         generator=generator, options=self.options, dialect=self.dialect)
        unknown = [b for b in param.bottom if self.blob_shapes[b] is None]   # after a dry-run Python layer
        try:
            layer = UnknownShapes(spec, f"bottom '{unknown[0]}' has an unknown shape") if unknown \
                else build_layer(spec)
        except NetError:
            raise
        except PrototxtError as exc:   # a filler or parameter error without a location: locate it here
            raise self._error(param, line, exc.reason) from None
        if len(layer.top_shapes) != len(param.top):
            raise self._error(param, line, f"produces {len(layer.top_shapes)} top(s) but {len(param.top)} "
                                           f"are named")
        for top, shape in zip(param.top, layer.top_shapes):
            if top in self.blob_shapes and top not in param.bottom:
                raise self._error(param, line, f"top blob '{top}' is produced by multiple sources")
            if shape is not None:
                check_blob_size(spec, shape, f"top blob '{top}'")
        self.blob_shapes.update(zip(param.top, (None if s is None else tuple(s) for s in layer.top_shapes)))
        self._check_loss_weights(param, line, layer)
        if param.propagate_down and len(param.propagate_down) != len(param.bottom):
            raise self._error(param, line, f"propagate_down must be given once per bottom ({len(param.bottom)})")
        self._propagate.append(list(param.propagate_down) or [True] * len(param.bottom))
        layer.blob_shapes = [tuple(b.shape) for b in layer.blobs]
        layer.may_overwrite = self._may_overwrite(param)
        for bottom in param.bottom:
            producer, readers = self._sources.get(bottom, ("", 0))
            self._sources[bottom] = (producer, readers + 1)
        self._sources.update((top, (param.type, 0)) for top in param.top)
        if not layer.shapes_unknown:
            setup_params(param, layer, len(self.layer_list), shared, self._owners, self.force_backward,
                         lambda message: self._error(param, line, message), self.layer_list)
        self.layer_list.append(layer)
        self.layer_names.append(param.name)
        self.layer_lines[param.name] = line
        self.layer_dict[param.name] = layer

    def _check_loss_weights(self, param, line, layer: CaffeLayer) -> None:
        weights = list(param.loss_weight)
        if weights and len(weights) != len(param.top):
            raise self._error(param, line, f"loss_weight must be unspecified or given once per top "
                                           f"({len(param.top)}), got {len(weights)}")
        if not weights and layer.is_loss and param.top:
            weights = [1.0] + [0.0] * (len(param.top) - 1)   # Caffe: loss_layer.cpp — top[0] weight 1
        self._loss_weights.extend((top, w) for top, w in zip(param.top, weights) if w != 0)

    def __getstate__(self) -> dict:
        """Pickle (``copy.deepcopy``, ``torch.save``, spawn workers) the net, not the last forward's blobs,
        which are autograd intermediates that cannot be copied, nor its input source (a pycaffe view's)."""
        state = dict(self.__dict__)
        state.update(blobs={}, _first={}, loss=None, _debug_records=[], input_source=None)
        return state

    # ------------------------------------------------------------------------------------------ running

    @property
    def params(self) -> dict[str, list[nn.Parameter]]:
        """``{layer: [parameter blobs in Caffe order]}`` for layers with parameters (pycaffe's net.params)."""
        return {name: list(layer.blobs) for name, layer in self.layer_dict.items() if len(layer.blobs)}

    @property
    def learnable_params(self) -> list[LearnableParam]:
        """Owned parameters in Caffe's order (layer order, blob order), with their lr/decay multipliers."""
        return [LearnableParam(o.layer, o.index, self.layer_list[o.position].blobs[o.index],
                               1.0 if o.lr_mult is None else o.lr_mult,
                               1.0 if o.decay_mult is None else o.decay_mult) for o in self._owners]

    @property
    def loss_weights(self) -> dict[str, float]:
        """Non-zero loss weight of each top (explicit ``loss_weight``, else 1 on a loss layer's first top)."""
        return dict(self._loss_weights)

    def producer(self, blob: str) -> str | None:
        """The first layer with ``blob`` among its tops (an error names where a bad value was made), or None."""
        return next((p.name for p in self.net_param.layer if blob in p.top), None)

    @property
    def first_accuracy_top(self) -> str | None:
        """The first top of the first Accuracy layer: the output a test is usually judged by."""
        return next((p.top[0] for p in self.net_param.layer if p.type == "Accuracy" and p.top), None)

    @property
    def input_names(self) -> list[str]:
        """Tops the caller feeds through ``forward(**inputs)`` (Input and MemoryData layers)."""
        return [top for p, layer in zip(self.net_param.layer, self.layer_list) if layer.feeds
                for top in p.top]

    @property
    def device(self) -> torch.device:
        """Where the net's blobs and parameters live (follows ``net.to(...)``)."""
        return self._probe.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of the net's blobs (follows ``net.to(dtype)``)."""
        return self._probe.dtype

    def as_input(self, name: str, value: object) -> torch.Tensor:
        """``value`` (array or tensor) as a tensor of the net's device and dtype, for the input blob ``name``."""
        if isinstance(value, torch.Tensor) and value.dtype == self.dtype and value.device == self.device:
            return value
        return torch.as_tensor(np.asarray(value) if not isinstance(value, torch.Tensor) else value,
                               dtype=self.dtype, device=self.device)

    def set_input_arrays(self, data: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor,
                         layer: str | None = None) -> None:
        """pycaffe's ``set_input_arrays``: hand a MemoryData layer (the first one, or ``layer``) N images and
        labels; each later ``forward()`` without inputs takes its next ``batch_size`` of them."""
        names = [p.name for p in self.net_param.layer if p.type == "MemoryData"]
        if not names or (layer is not None and layer not in names):
            raise NetError(f"set_input_arrays needs a MemoryData layer{f' named {layer!r}' if layer else ''}; "
                           f"this net has: {', '.join(names) or 'none'}", path=self.path)
        self.layer_dict[layer or names[0]].set_arrays(self.as_input("data", data),
                                                      self.as_input("label", labels))

    def fed_tops(self, param: caffe_pb2.LayerParameter, layer: CaffeLayer, inputs: dict) -> list[torch.Tensor]:
        """The tops of a feeding layer (Input, MemoryData): from ``inputs`` (popped), else its own next batch,
        else the last value fed, else zeros -- the one rule, for this loop and the inference engine's."""
        if not any(top in inputs for top in param.top):
            supplied = layer.next_batch()
            if supplied is not None:
                return [self.as_input(top, t) for top, t in zip(param.top, supplied)]
        tops = []
        for top, shape in zip(param.top, layer.top_shapes):
            if top in inputs:
                tensor = self.as_input(top, inputs.pop(top))
            elif top in self._fed:
                tensor = self.as_input(top, self._fed[top])   # the net may have moved to another device
            else:
                tensor = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self._fed[top] = tensor
            tops.append(tensor)
        return tops

    def forward(self, *positional: torch.Tensor, **inputs: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Run the net; ``inputs`` keyed by Input/MemoryData top names (positional ones fill ``input_names`` in
        order, so ``torch.jit.trace(net, x)`` works).  Returns the output blobs (sorted by name as Caffe lists
        them); every blob is in ``self.blobs`` and the weighted loss in ``self.loss``."""
        if len(positional) > len(self.input_names):
            raise NetError(f"{len(positional)} positional inputs for {len(self.input_names)} input blob(s) "
                           f"({', '.join(self.input_names) or 'none'})", path=self.path)
        blobs = self.forward_to(len(self.layer_list) - 1, **dict(zip(self.input_names, positional)), **inputs)
        return {name: blobs[name] for name in self.output_names}

    def forward_to(self, last: int, **inputs: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """Caffe's ForwardTo: layers 0..``last`` only (a later layer is neither run nor reshaped, so it may not
        fit the inputs); returns the blobs computed, also in ``self.blobs`` (loss: of the losses computed)."""
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise NetError(f"unknown input(s) {', '.join(unknown)}; the net is fed through: "
                           f"{', '.join(self.input_names) or 'nothing (it has no Input/MemoryData layer)'}",
                           path=self.path)
        if self.input_source is not None:   # pycaffe's blob store: the inputs not given, from its buffers
            self.input_source.supply(inputs)
        # the last pass's blobs are overwritten by this one (as Caffe overwrites its blobs in place): let them go
        # now, not after this pass, or inference loops hold two passes of activations (2x the memory)
        self.blobs, self._first = {}, {}
        self._debug_records = []
        fed: dict[str, Shape] = {}   # the Input tops' shapes
        try:
            blobs, first = self._run(last, inputs, fed)
        except (RuntimeError, NetError) as exc:   # an input at a shape the net cannot take: say where, located
            if not isinstance(exc, InputShapeError):
                self._check_reshaped(fed, every=True)
            raise
        self.blobs, self._first = blobs, first
        self.loss = self._total_loss(blobs)
        return blobs

    def _run(self, last: int, inputs: dict, fed: dict[str, Shape]) -> tuple[dict, dict]:
        """Layers 0..``last``: (the blobs, each blob's first value when ``track_diffs``); the Input tops' shapes
        go into ``fed``, checked before the first layer that reads them."""
        blobs: dict[str, torch.Tensor] = {}
        first: dict[str, torch.Tensor] = {}
        unchecked = False
        for param, layer, propagate in zip(self.net_param.layer[:last + 1], self.layer_list[:last + 1],
                                           self._propagate):
            bottoms = []
            if layer.feeds:
                tops = layer(*self.fed_tops(param, layer, inputs))
                if param.type == "Input":
                    fed.update(zip(param.top, (tuple(t.shape) for t in tops)))
                    unchecked = True
            else:
                if unchecked:
                    self._check_reshaped(fed)
                    unchecked = False
                bottoms = [blobs[b] if keep else blobs[b].detach() for b, keep in zip(param.bottom, propagate)]
                tops = layer(*bottoms)
            if self.debug_info:
                self._debug_records.append(net_debug.forward_record(param, layer, bottoms, tops))
            for name, tensor in zip(param.top, tops):
                blobs[name] = tensor
                if self.track_diffs and name not in first:   # kept only when asked: it holds every pre-ReLU
                    first[name] = tensor                      # activation alive until the next forward
                    if tensor.requires_grad:
                        tensor.retain_grad()
        return blobs, first

    def _check_reshaped(self, fed: dict[str, Shape], every: bool = False) -> None:
        """Inputs fed with another number of axes than the net was built for (pycaffe's ``blob.reshape``), or
        with ``every`` any other shape (after a failed pass): :func:`vggproto.net.reshape.check_reshaped`, once
        per new set of shapes."""
        changed = [top for top, shape in fed.items() if shape != self.blob_shapes[top]]
        if not changed or fed == self._reshaped or \
                not (every or any(len(fed[top]) != len(self.blob_shapes[top] or ()) for top in changed)):
            return
        net_reshape.check_reshaped(self, fed, lambda param: self.shapes_only(param, self.phase, dialect=self.dialect))
        self._reshaped = dict(fed)

    def log_backward_debug(self) -> None:
        """After a backward pass with ``debug_info`` on: Caffe's ``[Backward]`` lines (Net.backward calls it;
        a caller running ``loss.backward()`` itself calls it afterwards, as the solver does)."""
        if self.debug_info:
            net_debug.backward_lines(self._debug_records, [lp.param for lp in self.learnable_params])

    def _total_loss(self, blobs: dict[str, torch.Tensor]) -> torch.Tensor:
        # Caffe: net.cpp ForwardFromTo — loss = Σ loss_weight · Σ top elements
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        for name, weight in self._loss_weights:
            if name in blobs:   # a forward_to that stopped before this loss
                total = total + weight * blobs[name].sum()
        return total

    def backward(self, **top_diffs: np.ndarray | torch.Tensor) -> None:
        """Caffe's Backward: loss tops are seeded with their loss weight, other tops with ``top_diffs[name]``."""
        tensors, grads = [], []
        weights = dict(self._loss_weights)
        for name in dict.fromkeys([*weights, *top_diffs]):
            tensor = self.blobs[name]
            if name in top_diffs:
                grad = self.as_input(name, top_diffs[name]).reshape(tensor.shape)
            else:
                grad = torch.full_like(tensor, weights[name])
            if tensor.requires_grad:
                tensors.append(tensor)
                grads.append(grad)
        if tensors:
            torch.autograd.backward(tensors, grads)
        self.log_backward_debug()

    def diff(self, name: str) -> torch.Tensor:
        """Caffe's ``blobs[name].diff`` after backward (needs ``track_diffs = True`` before forward): the gradient
        w.r.t. the blob's first value, which is what the shared diff of an in-place chain ends up holding."""
        if name not in self._first:
            state = "set net.track_diffs = True before forward" if not self.track_diffs else "no such blob"
            raise NetError(f"no diff for blob '{name}': {state} (blobs: {', '.join(self.blobs)})", path=self.path)
        tensor = self._first[name]
        grad = tensor.grad if tensor.requires_grad else None
        return grad if grad is not None else torch.zeros_like(tensor)

    # ------------------------------------------------------------------------------------------ weights

    def load_weights(self, paths: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        """Caffe's CopyTrainedLayersFrom for each (comma-separated) caffemodel or .h5 file, in order."""
        for path in net_weights.split_paths(paths):
            net_weights.copy_weights(self, path)

    def save_weights(self, path: str | os.PathLike, with_diff: bool = False) -> None:
        """Write the weights as a caffemodel (with this net's definition) or Caffe HDF5 (``.h5``); ``with_diff``
        also writes each blob's diff (the solver's ``snapshot_diff``)."""
        net_weights.save_weights(self, path, with_diff)

    def share_weights_from(self, other: "Net") -> None:
        """Caffe's ShareTrainedLayersWith: same-named layers use ``other``'s parameter tensors (no copy)."""
        net_weights.share_weights(self, other)
