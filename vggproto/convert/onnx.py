"""Export any net the interpreter runs, with its weights, to ONNX — verified in onnxruntime before writing.

The interpreter (:class:`vggproto.net.interpreter.Net`, Caffe semantics: ceil pooling, Caffe LRN, ...) is traced with
``torch.onnx.export`` (the TorchScript exporter, which needs no extra packages) at the prototxt's shapes.  When the
interpreter also runs the net at another batch size, every input and output gets a dynamic batch axis and the
graph is checked at both sizes; otherwise (recurrent layers, whose axis 0 is time; fixed Reshape dims) the declared
shapes are kept.  The check runs the graph in onnxruntime on seeded inputs (standard normal unless the caller
gives a ``feed`` in the layers' domain) and compares every output with the interpreter's, NaN matching NaN; on a
mismatch nothing is written.  The file is written atomically.

Refused before anything is built or traced, with one line naming the layer and its type (:func:`refusal`): data
layers (Data, ImageData, HDF5Data, DummyData, BoxData — an Input layer must feed the graph), loss layers (a deploy
graph has none), layers in :data:`REFUSED` (Python, HDF5Output, ROIPooling, Proposal, DetectionOutput: code,
side effects or data-dependent sizes a traced graph cannot hold), and random TRAIN-phase layers.  The exporter's
own warnings and C++ graph dumps are silenced, so a failure prints only its one-line error.

Opset: the lowest the net needs (:func:`needed_opset`) — 13 for every layer (Caffe's ops map onto opset-13
Conv/Pool/Gemm/Reduce*/TopK/Gather...), 18 for SegNet max-unpooling (Upsample with a mask bottom: ScatterElements
with reduction="max" keeps Caffe's largest source on repeated indices).  ``opset`` may ask for a higher one; one
below 13, or below a layer's need, is refused.  Layers whose eager forward has no ONNX form
(``divisor_override`` pooling, expm1, stable sort, custom autograd Functions) take an export path under
``torch.onnx.is_in_onnx_export()`` that computes the same values.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import ModelSource, Net

log = logging.getLogger("vggproto.convert.onnx")

#: Largest allowed |onnxruntime - interpreter| relative to the output's largest magnitude (float32 reordering).
DEFAULT_TOLERANCE = 1e-4
#: The lowest opset accepted: the exporter's ReduceSum/Split/Unsqueeze forms with axes as inputs need 13.
MIN_OPSET = 13


def needed_opset(param: caffe_pb2.LayerParameter) -> int:
    """The lowest opset that expresses ``param``: 18 for SegNet max-unpooling (Upsample with a mask bottom),
    whose repeated mask indices keep the largest source (ScatterElements reduction="max"); 13 otherwise."""
    if param.type == "Upsample" and len(param.bottom) > 1:
        return 18
    return MIN_OPSET


#: Layer types that never export, and why (checked before tracing).
REFUSED: dict[str, str] = {
    "HDF5Output": "it writes its bottoms to an HDF5 file, a side effect with no ONNX form",
    "Python": "a Python layer runs arbitrary code that has no ONNX form",
    "ROIPooling": "its window sizes depend on the ROI values, which a traced graph would freeze",
    "Proposal": "anchor decoding and NMS keep a data-dependent number of boxes, which a traced graph freezes",
    "DetectionOutput": "per-class NMS and top-k keep a data-dependent number of boxes; export up to its bottoms "
                       "(mbox_loc, mbox_conf_flatten, mbox_priorbox) and decode outside ONNX",
}


def _random_in_train(param: caffe_pb2.LayerParameter) -> str | None:
    """Why a TRAIN-phase layer cannot be exported: its forward draws random numbers an ONNX graph cannot
    reproduce (Caffe: dropout_layer.cpp, pooling_layer.cu StoPoolForwardTrain)."""
    stochastic = caffe_pb2.PoolingParameter.STOCHASTIC
    if param.type == "Dropout":
        return "TRAIN-phase dropout draws a random mask; export the TEST phase"
    if (param.type == "Pooling" and param.pooling_param.pool == stochastic) or \
            (param.type == "SPP" and param.spp_param.pool == stochastic):
        return "TRAIN-phase STOCHASTIC pooling draws random cells; export the TEST phase"
    return None


class OnnxExportError(VGGProtoError):
    """The net cannot be exported, or the exported graph disagrees with the interpreter."""


@dataclass
class OnnxCheck:
    """Largest relative difference per output, for each checked batch size."""

    inputs: list[str]
    outputs: list[str]
    differences: dict[int, dict[str, float]]


def _wrapper(net: Net, inputs: list[str], outputs: list[str]) -> torch.nn.Module:
    import torch

    class _Positional(torch.nn.Module):
        """ONNX export wants positional inputs and a tuple of outputs; the interpreter takes and gives dicts."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            result = self.net(**dict(zip(inputs, tensors)))
            return tuple(result[name] for name in outputs)
    return _Positional()


#: Makes one example input: (blob name, shape with the batch already set, seed) -> tensor.  The default draws
#: seeded standard-normal values; callers whose inputs have a narrower domain (indices, positive values) pass
#: their own.
Feed = Callable[[str, "list[int]", int], "torch.Tensor"]


def normal_feed(name: str, shape: list[int], seed: int) -> torch.Tensor:
    """Seeded standard-normal values: the check's inputs when the caller has no domain to respect."""
    import torch
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode())))


def _examples(net: Net, inputs: list[str], batch: int | None, seed: int, feed: Feed) -> tuple[torch.Tensor, ...]:
    """One tensor per input, of the prototxt's shape with the batch axis set to ``batch`` (None: as declared)."""
    tensors = []
    for name in inputs:
        shape = list(net.blob_shapes[name])
        if shape and batch is not None:
            shape[0] = batch
        tensors.append(feed(name, shape, seed))
    return tuple(tensors)


def _other_batch(module: torch.nn.Module, net: Net, inputs: list[str], feed: Feed) -> int | None:
    """A batch size other than the declared one that the interpreter runs (so the ONNX batch axis can be
    dynamic and is checked at it), or None when the net only runs at its declared shapes (recurrent
    layers, fixed Reshape dims, ...): then the export keeps the declared batch."""
    import torch
    batch = 2 if all(net.blob_shapes[name][:1] in ((), (1,)) for name in inputs) else 1
    try:
        with torch.no_grad():
            module(*_examples(net, inputs, batch, 3, feed))
    except Exception:   # noqa: BLE001 — any failure means "this net does not take another batch size"
        return None
    return batch


def _deploy_layers(model: ModelSource, phase: str) -> list[caffe_pb2.LayerParameter]:
    """The layers of ``model`` in ``phase``, filtered by Caffe's include/exclude rules, without building any."""
    from vggproto.caffe.netstate import filter_net, merged_state
    from vggproto.caffe.prototxt import parse_net
    from vggproto.caffe.upgrade import upgrade_net
    if isinstance(model, caffe_pb2.NetParameter):   # upgraded (V1 layers, input fields) as the interpreter does
        full = caffe_pb2.NetParameter()
        full.CopyFrom(model)
        upgrade_net(full)
    else:
        full = parse_net(model).net
    return list(filter_net(full, merged_state(full, phase, 0, ()), None).layer)


def refusal(model: ModelSource, phase: str = "TEST", opset: int | None = None) -> str | None:
    """Why ``model`` cannot become ONNX, naming the first layer at fault (None if every layer can be exported).

    Decided from the prototxt and the layer classes before anything is built or traced, so that a refused net
    (a data layer whose files are elsewhere, say) costs nothing and prints one line, not the exporter's dump.
    """
    from vggproto.layers.registry import LayerSpec, layer_class
    layers = _deploy_layers(model, phase)
    fed = False
    for param in layers:
        if opset is not None and needed_opset(param) > opset:
            return (f"layer '{param.name}' ({param.type}) cannot be exported to ONNX: it needs opset "
                    f"{needed_opset(param)}, not {opset}")
        cls = layer_class(LayerSpec(param, []))
        fed = fed or cls.feeds
        why = None
        if cls.feeds:
            continue
        if cls.is_data:
            why = "a data layer reads files or makes data at run time; replace it by an Input layer"
        elif cls.is_loss:
            why = "a loss layer has no place in a deploy graph; export the net without it (its deploy version)"
        elif param.type in REFUSED:
            why = REFUSED[param.type]
        elif phase == "TRAIN":
            why = _random_in_train(param)
        if why:
            return f"layer '{param.name}' ({param.type}) cannot be exported to ONNX: {why}"
    if not fed:
        return "the net has no Input layer to feed; export a deploy net (data layers cannot be expressed in ONNX)"
    return None


def _label(model: ModelSource) -> str:
    """The net's name in messages: its path, or "net" for prototxt text and NetParameters."""
    return os.fspath(model) if isinstance(model, (str, os.PathLike)) and "{" not in os.fspath(model) else "net"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the TorchScript exporter: its warnings, its logging and the C++ graph dumps it writes to the
    process's stdout/stderr on a failure, so that a refused export prints only the one-line error."""
    import torch
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    sink = tempfile.TemporaryFile()
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            previous = logging.getLogger("torch.onnx").level
            logging.getLogger("torch.onnx").setLevel(logging.CRITICAL)
            try:
                with torch.no_grad():
                    yield
            finally:
                logging.getLogger("torch.onnx").setLevel(previous)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        sink.close()


def export_onnx(model: ModelSource, weights: Mapping[str, list[np.ndarray]] | None, path: str | os.PathLike, *,
                phase: str = "TEST", opset: int | None = None, tolerance: float = DEFAULT_TOLERANCE,
                feed: Feed = normal_feed, dynamic_batch: bool = True) -> OnnxCheck:
    """Write the net ``model`` with ``weights`` (already fitted to the net) as ONNX at ``path``, verified first;
    ``dynamic_batch=False`` keeps the declared batch (the inference engine's export at the caller's own shapes).

    Raises :class:`OnnxExportError` with one line (and writes nothing) when a layer cannot be exported, the
    exporter fails, or onnxruntime disagrees with the interpreter on ``feed``'s inputs.
    """
    from vggproto.caffe.files import atomic_write_bytes
    from vggproto.net.interpreter import Net
    from vggproto.net.weights import load_arrays
    if opset is not None and opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is not supported; use {MIN_OPSET} or newer")
    why = refusal(model, phase, opset)
    if why:
        raise OnnxExportError(f"{_label(model)}: {why}")
    if opset is None:
        opset = max(needed_opset(param) for param in _deploy_layers(model, phase))
    net = Net(model, phase=phase, seed=0)  # phase, not nn.Module.eval(), selects Caffe behaviour
    if weights:
        load_arrays(net, weights, "weights")  # Caffe's rules, as for every other way weights reach a net
    inputs = list(net.input_names)
    # an output that is an input (a fed blob nothing reads) is the caller's own data, and ONNX would rename it
    outputs = [name for name in net.output_names if name not in inputs]
    if not outputs:
        raise OnnxExportError(f"{_label(model)}: the net computes nothing (every output is one of its inputs)")
    module = _wrapper(net, inputs, outputs)
    other = _other_batch(module, net, inputs, feed) if dynamic_batch else None
    data = _trace(model, module, net, inputs, outputs, opset, feed, dynamic=other is not None)
    check = verify(module, data, net, inputs, outputs, tolerance, feed, batches=(None, other))
    atomic_write_bytes(path, data)
    log.info("Wrote %s (%d bytes, opset %d, inputs %s, outputs %s, %s batch)", os.fspath(path), len(data), opset,
             ", ".join(inputs), ", ".join(outputs), "dynamic" if other is not None else "fixed")
    return check


def _trace(model: ModelSource, module: torch.nn.Module, net: Net, inputs: list[str], outputs: list[str],
           opset: int, feed: Feed, dynamic: bool) -> bytes:
    """The ONNX bytes of ``module`` traced at the declared shapes, the exporter silenced; one-line errors."""
    import torch
    buffer = io.BytesIO()
    axes = {name: {0: "batch"} for name in inputs + outputs} if dynamic else None
    try:
        with _quiet():
            torch.onnx.export(module, _examples(net, inputs, None, 0, feed), buffer, dynamo=False,
                              opset_version=opset, input_names=inputs, output_names=outputs, dynamic_axes=axes,
                              do_constant_folding=True,
                              training=torch.onnx.TrainingMode.PRESERVE)  # layers keep their Caffe phase
    except Exception as exc:  # the exporter raises many types for unsupported operations
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise OnnxExportError(f"{_label(model)}: torch.onnx.export failed: {first}") from None
    return buffer.getvalue()


def difference(want: np.ndarray, have: np.ndarray) -> float:
    """Largest |have − want| relative to max |want|; NaN/±inf count as equal where both sides have them (Log
    of a negative input is NaN in Caffe and in onnxruntime alike), and as infinitely different elsewhere."""
    special = ~np.isfinite(want) | ~np.isfinite(have)
    same = (np.isnan(want) & np.isnan(have)) | (np.isinf(want) & (want == have))
    if np.any(special & ~same):
        return float("inf")
    want, have = np.where(special, 0, want), np.where(special, 0, have)
    gap = float(np.abs(want.astype(np.float64) - have).max(initial=0.0))
    scale = float(np.abs(want).max(initial=0.0))
    return gap / scale if scale else gap


def verify(module: torch.nn.Module, data: bytes, net: Net, inputs: list[str], outputs: list[str],
           tolerance: float, feed: Feed = normal_feed,
           batches: tuple[int | None, ...] = (1, 2)) -> OnnxCheck:
    """Run the ONNX bytes in onnxruntime at each batch size (None: as declared; a None after the first is
    skipped); raise if any output differs from the interpreter's.  Differences are keyed by the batch run."""
    import onnxruntime
    import torch
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3   # errors only: its shape-inference notes would break the one-line output
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    used = {i.name for i in session.get_inputs()}   # the exporter drops inputs nothing reads (Silence's)
    differences: dict[int, dict[str, float]] = {}
    for seed, batch in enumerate(batches, 1):
        if batch is None and seed > 1:
            continue
        example = _examples(net, inputs, batch, seed, feed)
        batch = int(example[0].shape[0]) if example[0].dim() else 1
        with torch.no_grad():
            expected = [t.numpy() for t in module(*example)]
        got = session.run(outputs, {name: t.numpy() for name, t in zip(inputs, example) if name in used})
        differences[batch] = {}
        for name, want, have in zip(outputs, expected, got):
            if want.shape != have.shape:
                raise OnnxExportError(f"ONNX output '{name}' has shape {list(have.shape)} at batch {batch}; the "
                                      f"interpreter gives {list(want.shape)} — not written")
            diff = difference(want, have)
            differences[batch][name] = diff
            if not diff <= tolerance:
                raise OnnxExportError(f"ONNX output '{name}' differs from the interpreter by {diff:.3g} (relative) "
                                      f"at batch {batch}, more than {tolerance:g} — not written")
    return OnnxCheck([name for name in inputs if name in used], outputs, differences)
