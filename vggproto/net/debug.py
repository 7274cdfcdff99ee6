"""Caffe's ``debug_info`` lines (src/caffe/net.cpp ForwardDebugInfo / BackwardDebugInfo / Backward): the mean
absolute value of every top blob and parameter after each layer's forward, of every bottom and parameter diff after
backward, and the L1/L2 norms of all learnable parameters.  The solver turns it on for display iterations when the
solver sets ``debug_info: true`` (solver.cpp Step); a net's own ``debug_info: true`` turns it on for every pass.

Existing log tools (and people) read these lines, so they keep Caffe's wording and number format.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from vggproto.caffe.glog import fmt
from vggproto.caffe.proto import caffe_pb2

log = logging.getLogger("vggproto.net.interpreter")


def _abs_mean(tensor: torch.Tensor | None, like: torch.Tensor) -> float:
    if tensor is None:
        return 0.0
    return float(tensor.detach().abs().sum()) / max(like.numel(), 1)


@dataclass
class LayerRecord:
    """What one layer's forward saw, kept until the backward lines are written."""

    name: str
    bottoms: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    params: list[torch.Tensor] = field(default_factory=list)


def forward_lines(name: str, tops: list[tuple[str, torch.Tensor]], params: list[torch.Tensor],
                  param_names: list[str]) -> None:
    """Caffe: net.cpp ForwardDebugInfo — one line per top blob, then per parameter blob (display name)."""
    for blob_name, tensor in tops:
        log.info("    [Forward] Layer %s, top blob %s data: %s", name, blob_name, fmt(_abs_mean(tensor, tensor)))
    for display, param in zip(param_names, params):
        log.info("    [Forward] Layer %s, param blob %s data: %s", name, display, fmt(_abs_mean(param, param)))


def retain_bottom_grads(record: LayerRecord) -> None:
    """Keep the gradient of every bottom that needs one, so backward_lines can report it."""
    for _, tensor in record.bottoms:
        if tensor.requires_grad and not tensor.is_leaf:
            tensor.retain_grad()


def backward_lines(records: list[LayerRecord], learnable: list[torch.Tensor]) -> None:
    """Caffe: net.cpp BackwardDebugInfo (layers in reverse order), then Backward's all-parameter norms."""
    for record in reversed(records):
        for blob_name, tensor in record.bottoms:
            if tensor.requires_grad:
                log.info("    [Backward] Layer %s, bottom blob %s diff: %s", record.name, blob_name,
                         fmt(_abs_mean(tensor.grad, tensor)))
        for index, param in enumerate(record.params):
            if param.requires_grad:
                log.info("    [Backward] Layer %s, param blob %d diff: %s", record.name, index,
                         fmt(_abs_mean(param.grad, param)))
    asum_data = sum(float(p.detach().abs().sum()) for p in learnable)
    asum_diff = sum(float(p.grad.abs().sum()) for p in learnable if p.grad is not None)
    sumsq_data = sum(float((p.detach() ** 2).sum()) for p in learnable)
    sumsq_diff = sum(float((p.grad ** 2).sum()) for p in learnable if p.grad is not None)
    # Caffe logs this one at ERROR level (net.cpp Backward)
    log.error("    [Backward] All net params (data, diff): L1 norm = (%s, %s); L2 norm = (%s, %s)",
              fmt(asum_data), fmt(asum_diff), fmt(math.sqrt(sumsq_data)), fmt(math.sqrt(sumsq_diff)))


def forward_record(param: caffe_pb2.LayerParameter, layer: torch.nn.Module, bottoms: list[torch.Tensor],
                   tops: tuple[torch.Tensor, ...]) -> LayerRecord:
    """Log one layer's ``[Forward]`` lines and keep what its ``[Backward]`` lines will need."""
    record = LayerRecord(param.name, list(zip(param.bottom, bottoms)), list(layer.blobs))
    retain_bottom_grads(record)
    names = [param.param[i].name if i < len(param.param) and param.param[i].name else str(i)
             for i in range(len(layer.blobs))]   # Caffe: net.cpp param_display_names_
    forward_lines(param.name, list(zip(param.top, tops)), list(layer.blobs), names)
    return record
