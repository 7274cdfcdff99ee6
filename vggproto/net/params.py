"""Caffe's ParamSpec rules for a layer's parameter blobs: learning-rate and decay multipliers, the statistics
BatchNorm never learns, and sharing a blob by ParamSpec name (STRICT shapes or PERMISSIVE counts).

Caffe: src/caffe/net.cpp AppendParam — the first layer naming a param owns it; later ones use the owner's blob
and must agree with its shape (or count) and multipliers.  The solver updates owners only, in layer and blob
order (``learnable_params``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import NetError
from vggproto.layers.registry import CaffeLayer


@dataclass
class LearnableParam:
    """One parameter the solver updates, in Caffe's learnable_params order (owners only)."""

    layer: str
    index: int
    param: nn.Parameter
    lr_mult: float
    decay_mult: float


@dataclass
class ParamOwner:
    """The layer (by position: names may repeat, as Caffe allows) that owns a parameter blob."""

    layer: str
    position: int      # index in Net.layer_list
    index: int
    lr_mult: float | None
    decay_mult: float | None


def setup_params(param: caffe_pb2.LayerParameter, layer: CaffeLayer, position: int, shared: dict[str, ParamOwner],
                 owners: list[ParamOwner], force_backward: bool, fail: Callable[[str], NetError],
                 layers: Sequence[CaffeLayer]) -> None:
    """Apply ``param.param`` to ``layer``'s blobs: record owners (and named ones in ``shared``), share blobs
    already owned, freeze lr_mult 0 blobs (no backward needed unless ``force_backward``)."""
    if len(param.param) > len(layer.blobs):
        raise fail(f"{len(param.param)} param specs given but the layer has only {len(layer.blobs)} parameter "
                   "blob(s)")
    for index, blob in enumerate(layer.blobs):
        ps = param.param[index] if index < len(param.param) else caffe_pb2.ParamSpec()
        lr = ps.lr_mult if ps.HasField("lr_mult") else None
        decay = ps.decay_mult if ps.HasField("decay_mult") else None
        if param.type == "BatchNorm":   # Caffe: batch_norm_layer.cpp — statistics are never learned
            if lr not in (None, 0.0):
                raise fail("cannot configure batch normalization statistics as layer parameters: param "
                           f"{index} must have lr_mult 0, got {lr}")
            lr = 0.0
        if ps.name and ps.name in shared:
            _share(layer, index, ps, lr, decay, shared[ps.name], fail, layers)
            continue
        owner = ParamOwner(param.name, position, index, lr, decay)
        owners.append(owner)
        if ps.name:
            shared[ps.name] = owner
        if (lr == 0.0) and not force_backward:
            blob.requires_grad_(False)   # Caffe: net.cpp — lr_mult 0 needs no backward


def _share(layer: CaffeLayer, index: int, ps: caffe_pb2.ParamSpec, lr: float | None, decay: float | None,
           owner: ParamOwner, fail: Callable[[str], NetError], layers: Sequence[CaffeLayer]) -> None:
    source = layers[owner.position].blobs[owner.index]
    mine = layer.blobs[index]
    if ps.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
        ok, what = source.numel() == mine.numel(), f"count {source.numel()} vs {mine.numel()}"
    else:
        ok, what = source.shape == mine.shape, f"shape {tuple(source.shape)} vs {tuple(mine.shape)}"
    if not ok:
        raise fail(f"shared param '{ps.name}' (owner {owner.layer}) has mismatched {what}; set share_mode: "
                   "PERMISSIVE to compare counts only")
    for name, given, have in (("lr_mult", lr, owner.lr_mult), ("decay_mult", decay, owner.decay_mult)):
        if given is not None and have is not None and given != have:
            raise fail(f"shared param '{ps.name}' has mismatched {name} ({given} vs {have} in {owner.layer})")
    if owner.lr_mult is None:
        owner.lr_mult = lr
    if owner.decay_mult is None:
        owner.decay_mult = decay
    layer.blobs[index] = source
