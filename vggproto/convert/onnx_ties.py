"""Checking an unpooling net (SegNet, ENet) up to argmax near-ties.

MAX pooling with a mask top records where each window's maximum was, and Upsample puts values back there.  Two
values of one window that differ by less than the float32 gap between onnxruntime's and torch's convolutions can
be ordered differently by the two, and the value then lands one cell away: the output differs by O(1) there
(a 512x1024 ENet at batch 2 had one such window in ~1.5 M, 2.4e-2 relative at the output), though both graphs
compute Caffe's net.  So when outputs differ, the run is checked again on a graph that also gives the masks:
the interpreter takes onnxruntime's mask wherever it points at a maximum of the interpreter's own window
(within the tolerance), which proves the choice a near-tie, and every output must then match.  A mask cell that
is not such a maximum is an error naming the pooling layer.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from vggproto.convert.onnx_check import (
    Feed,
    OnnxArgmaxError,
    OnnxExportError,
    Run,
    examples,
    match,
    onnx_failure,
    session,
)

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import Net


def mask_blobs(net: Net) -> dict[str, str]:
    """Mask top -> its MAX pooling layer, for every Pooling with a mask top in ``net``."""
    return {param.top[1]: param.name for param in net.net_param.layer
            if param.type == "Pooling" and len(param.top) == 2}


def check_ties(module: torch.nn.Module, data: bytes, net: Net, blobs: tuple[list[str], list[str]], run: Run,
               seed: int, feed: Feed, tolerance: float) -> dict[int, dict[str, float]]:
    """Check ``run`` with the interpreter adopting onnxruntime's near-tie argmaxes.  ``data`` is the net traced
    with the mask blobs (:func:`mask_blobs`) as extra outputs after the ``outputs`` that ``module`` gives."""
    import torch
    inputs, outputs = blobs
    masks = mask_blobs(net)
    ort = session(data, net)
    used = {i.name for i in ort.get_inputs()}
    example = examples(net, inputs, run, seed, feed)
    try:
        got = ort.run(outputs + list(masks), {name: t.numpy() for name, t in zip(inputs, example) if name in used})
    except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own pybind types
        raise OnnxExportError(onnx_failure(exc, net, f"onnxruntime failed {run.describe()}")) from None
    theirs = dict(zip(list(masks), got[len(outputs):]))
    hooks = [net.layer_dict[layer].register_forward_hook(_adopt(layer, theirs[mask], tolerance))
             for mask, layer in masks.items()]
    try:
        with torch.no_grad():
            expected = [t.numpy() for t in module(*example)]
    finally:
        for hook in hooks:
            hook.remove()
    batch = int(example[0].shape[0]) if example[0].dim() else 1
    return match(outputs, expected, got[:len(outputs)], run, batch, tolerance)


def _adopt(layer: str, theirs: np.ndarray, tolerance: float) -> Callable:
    """A forward hook for the Pooling ``layer``: its mask top becomes onnxruntime's ``theirs`` after checking
    that each of those cells holds the window's maximum to within ``tolerance`` of the bottom's magnitude."""
    import torch

    def hook(module: torch.nn.Module, args: tuple, out: tuple) -> tuple:
        values, mask = out
        chosen = torch.from_numpy(theirs).to(mask.dtype)
        if chosen.shape != mask.shape:
            raise OnnxExportError(f"layer '{layer}' (Pooling): onnxruntime's mask has shape {list(chosen.shape)}, "
                                  f"the interpreter's {list(mask.shape)}")
        bottom = args[0].reshape(*mask.shape[:2], -1)
        picked = bottom.gather(2, chosen.reshape(*mask.shape[:2], -1).long()).reshape(mask.shape)
        gap = float((picked - values).abs().max()) if values.numel() else 0.0
        if gap > tolerance * float(bottom.abs().max()):
            raise OnnxArgmaxError(f"layer '{layer}' (Pooling): onnxruntime's argmax mask points at a value "
                                  f"{gap:.3g} below the window's maximum — not written")
        return values, chosen
    return hook
