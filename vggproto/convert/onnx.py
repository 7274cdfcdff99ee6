"""Export any net the interpreter runs, with its weights, to ONNX — verified in onnxruntime before writing.

The interpreter (:class:`vggproto.net.interpreter.Net`, Caffe semantics: ceil pooling, Caffe LRN, ...) is traced with
``torch.onnx.export`` (the TorchScript exporter, which needs no extra packages), opset >= 13, with a dynamic
batch axis on every input and output.  It is traced at batch 1; the exported graph is then run in onnxruntime on
seeded random inputs at batch 1 and 2 (so the batch axis is proven dynamic whatever the prototxt declares) and
every output is compared with the interpreter's; on a mismatch nothing is written.  The file is written
atomically.
"""
from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import ModelSource, Net

log = logging.getLogger("vggproto.convert.onnx")

#: Largest allowed |onnxruntime - interpreter| relative to the output's largest magnitude (float32 reordering).
DEFAULT_TOLERANCE = 1e-4


class OnnxExportError(VGGProtoError):
    """The net cannot be exported, or the exported graph disagrees with the interpreter."""


@dataclass
class OnnxCheck:
    """Largest relative difference per output, for each checked batch size."""

    inputs: list[str]
    outputs: list[str]
    differences: dict[int, dict[str, float]]


def _wrapper(net, inputs: list[str], outputs: list[str]):
    import torch

    class _Positional(torch.nn.Module):
        """ONNX export wants positional inputs and a tuple of outputs; the interpreter takes and gives dicts."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *tensors):
            result = self.net(**dict(zip(inputs, tensors)))
            return tuple(result[name] for name in outputs)
    return _Positional()


def _examples(net, inputs: list[str], batch: int, seed: int):
    import torch
    generator = torch.Generator().manual_seed(seed)
    tensors = []
    for name in inputs:
        shape = list(net.blob_shapes[name])
        if shape:
            shape[0] = batch
        tensors.append(torch.randn(shape, generator=generator))
    return tuple(tensors)


def export_onnx(model: ModelSource, weights: Mapping[str, list[np.ndarray]] | None, path: str | os.PathLike, *,
                phase: str = "TEST", opset: int = 13, tolerance: float = DEFAULT_TOLERANCE) -> OnnxCheck:
    """Write the net ``model`` with ``weights`` (already fitted to the net) as ONNX at ``path``, verified first."""
    import torch

    from vggproto.caffe.files import atomic_write_bytes
    from vggproto.net.interpreter import Net
    from vggproto.net.weights import load_arrays
    if opset < 13:
        raise OnnxExportError(f"opset {opset} is not supported; use 13 or newer")
    net = Net(model, phase=phase, seed=0)  # phase, not nn.Module.eval(), selects Caffe behaviour
    if weights:
        load_arrays(net, weights, "weights")  # Caffe's rules, as for every other way weights reach a net
    inputs, outputs = list(net.input_names), list(net.output_names)
    if not inputs:
        raise OnnxExportError(f"{model}: the net has no Input layer to feed; export a deploy net (data layers "
                              f"cannot be expressed in ONNX)")
    module = _wrapper(net, inputs, outputs)
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        try:
            torch.onnx.export(module, _examples(net, inputs, 1, 0), buffer, dynamo=False, opset_version=opset,
                              input_names=inputs, output_names=outputs, dynamic_axes=axes, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.PRESERVE)  # layers keep their Caffe phase
        except Exception as exc:  # the exporter raises many types for unsupported operations
            raise OnnxExportError(f"{model}: torch.onnx.export failed: {str(exc).splitlines()[0]}") from None
    data = buffer.getvalue()
    check = verify(module, data, net, inputs, outputs, tolerance)
    atomic_write_bytes(path, data)
    log.info("Wrote %s (%d bytes, opset %d, inputs %s, outputs %s)", os.fspath(path), len(data), opset,
             ", ".join(inputs), ", ".join(outputs))
    return check


def verify(module: torch.nn.Module, data: bytes, net: Net, inputs: list[str], outputs: list[str],
           tolerance: float) -> OnnxCheck:
    """Run the ONNX bytes in onnxruntime at batch 1 and 2; raise if any output differs from the interpreter's."""
    import onnxruntime
    import torch
    session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    differences: dict[int, dict[str, float]] = {}
    for batch in (1, 2):
        example = _examples(net, inputs, batch, seed=batch)
        with torch.no_grad():
            expected = [t.numpy() for t in module(*example)]
        got = session.run(outputs, {name: t.numpy() for name, t in zip(inputs, example)})
        differences[batch] = {}
        for name, want, have in zip(outputs, expected, got):
            if want.shape != have.shape:
                raise OnnxExportError(f"ONNX output '{name}' has shape {list(have.shape)} at batch {batch}; the "
                                      f"interpreter gives {list(want.shape)} — not written")
            scale = float(np.abs(want).max()) if want.size else 0.0
            diff = float(np.abs(want - have).max()) / scale if scale else float(np.abs(want - have).max())
            differences[batch][name] = diff
            if not diff <= tolerance:
                raise OnnxExportError(f"ONNX output '{name}' differs from the interpreter by {diff:.3g} (relative) "
                                      f"at batch {batch}, more than {tolerance:g} — not written")
    return OnnxCheck(inputs, outputs, differences)
