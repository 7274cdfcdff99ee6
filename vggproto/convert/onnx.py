"""Export any net the interpreter runs, with its weights, to ONNX — verified in onnxruntime before writing.

The interpreter (:class:`vggproto.net.interpreter.Net`, Caffe semantics: ceil pooling, Caffe LRN, ...) is traced with
``torch.onnx.export`` (the TorchScript exporter, which needs no extra packages) at the prototxt's shapes.  Every
dimension the interpreter also runs at is dynamic in the graph: the batch (probed at another batch size) and the
height and width of 4-D inputs (probed at twice them); an output axis is dynamic exactly when its size changed
between those runs.  onnxruntime then runs the graph at each of those shapes on seeded inputs (standard normal
unless the caller gives a ``feed`` in the layers' domain) and every output must match the interpreter's, NaN
matching NaN (:mod:`vggproto.convert.onnx_check`).  A dimension the trace froze (a layer computed a size as a
Python number) fails that check: it is kept fixed, the export says so in one line naming the layer, and the
net is traced again.  On a mismatch at the declared shapes nothing is written.  The file is written atomically.
``outputs`` picks the blobs to export (default: the net's outputs; only the layers they depend on must export).
Nets that unpool by a MAX pooling mask are checked up to argmax near-ties (:mod:`vggproto.convert.onnx_ties`).

Refused before anything is built or traced, with one line naming the layer and its type (:func:`refusal`), as
each layer class declares (``onnx`` and ``onnx_refusal`` in :mod:`vggproto.layers.base`; the list is
:func:`refused_types`): data layers (Data, ImageData, HDF5Data, DummyData, BoxData — an Input layer must feed
the graph), loss layers (a deploy graph has none), Python, HDF5Output, ROIPooling, Proposal and DetectionOutput
(code, side effects or data-dependent sizes a traced graph cannot hold), and random TRAIN-phase layers.  The exporter's
own warnings and C++ graph dumps are silenced, so a failure prints only its one-line error.

Opset: the lowest the net needs (:func:`needed_opset`, from the layer classes' ``onnx_opset``) — 13 for every
layer (Caffe's ops map onto opset-13 Conv/Pool/Gemm/Reduce*/TopK/Gather...), 18 for SegNet max-unpooling
(Upsample with a mask bottom: ScatterElements with reduction="max" keeps Caffe's largest source on repeated
indices).  ``opset`` may ask for a higher one; one below 13, or below a layer's need, is refused.  Layers whose
eager forward has no ONNX form (``divisor_override`` pooling, expm1, stable sort, custom autograd Functions) take
an export path under ``torch.onnx.is_in_onnx_export()`` that computes the same values.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

import numpy as np

from vggproto.caffe.proto import caffe_pb2
from vggproto.convert.onnx_check import (  # noqa: F401  (re-exported: the public API)
    Feed,
    OnnxCheck,
    OnnxExportError,
    OnnxRunMismatch,
    Run,
    Ties,
    difference,
    examples,
    normal_feed,
    onnx_failure,
    verify,
)
from vggproto.convert.onnx_dims import Plan, axes_for, probe, size_run

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import ModelSource, Net

log = logging.getLogger("vggproto.convert.onnx")

#: Largest allowed |onnxruntime - interpreter| relative to the output's largest magnitude (float32 reordering).
DEFAULT_TOLERANCE = 1e-4
#: The lowest opset accepted: the exporter's ReduceSum/Split/Unsqueeze forms with axes as inputs need 13.
MIN_OPSET = 13


def needed_opset(param: caffe_pb2.LayerParameter) -> int:
    """The lowest opset that expresses ``param``: what its layer class says (``onnx_opset``: 18 for SegNet
    max-unpooling), never below :data:`MIN_OPSET`."""
    from vggproto.layers.registry import LayerSpec, layer_class
    return max(MIN_OPSET, layer_class(LayerSpec(param, [])).onnx_opset(param))


def refused_types() -> dict[str, str]:
    """Every registered layer type that never exports, and why: derived from the classes' ``onnx``."""
    from vggproto.layers.base import TRACED
    from vggproto.layers.registry import registered
    return {name: cls.onnx for name, cls in registered().items() if cls.onnx not in (None, TRACED)}


def _wrapper(net: Net, inputs: list[str], outputs: list[str]) -> torch.nn.Module:
    import torch

    class _Positional(torch.nn.Module):
        """ONNX export wants positional inputs and a tuple of outputs; the interpreter takes and gives dicts."""

        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
            self.net(**dict(zip(inputs, tensors)))
            return tuple(self.net.blobs[name] for name in outputs)   # any blob, not only Caffe's outputs
    return _Positional()


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


def _needed(layers: list[caffe_pb2.LayerParameter], outputs: Sequence[str] | None) -> list[caffe_pb2.LayerParameter]:
    """The layers the blobs ``outputs`` depend on (all of them when None), in net order."""
    if outputs is None:
        return layers
    wanted, kept = set(outputs), []
    for param in reversed(layers):
        if wanted & set(param.top) or any(param.type == kind for kind in ("Input", "MemoryData")):
            kept.append(param)
            wanted.update(param.bottom)
    return kept[::-1]


def refusal(model: ModelSource, phase: str = "TEST", opset: int | None = None,
            outputs: Sequence[str] | None = None) -> str | None:
    """Why ``model`` cannot become ONNX, naming the first layer at fault (None if every layer can be exported);
    with ``outputs``, only the layers those blobs depend on count (an SSD net up to DetectionOutput's bottoms).

    Decided from the prototxt and the layer classes before anything is built or traced, so that a refused net
    (a data layer whose files are elsewhere, say) costs nothing and prints one line, not the exporter's dump.
    """
    from vggproto.layers.registry import LayerSpec, layer_class
    layers = _needed(_deploy_layers(model, phase), outputs)
    fed = False
    for param in layers:
        if opset is not None and needed_opset(param) > opset:
            return (f"layer '{param.name}' ({param.type}) cannot be exported to ONNX: it needs opset "
                    f"{needed_opset(param)}, not {opset}")
        cls = layer_class(LayerSpec(param, []))
        fed = fed or cls.feeds
        why = None if cls.feeds else cls.onnx_refusal(param, phase)   # the layer class says (layers/base.py)
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
                feed: Feed = normal_feed, outputs: Sequence[str] | None = None,
                dynamic_batch: bool = True, dynamic_size: bool = True) -> OnnxCheck:
    """Write the net ``model`` with ``weights`` (already fitted to the net) as ONNX at ``path``, verified first.

    ``outputs`` names the blobs to export (default: the net's outputs, Caffe's blobs no layer reads);
    ``dynamic_batch`` / ``dynamic_size`` let the batch / the height and width of 4-D inputs be dynamic where the
    net allows (False keeps the declared size: the inference engine's export at the caller's own shapes).  Raises
    :class:`OnnxExportError` with one line (and writes nothing) when a layer cannot be exported, the exporter
    or onnxruntime fails, or onnxruntime disagrees with the interpreter on ``feed``'s inputs.
    """
    from vggproto.caffe.files import atomic_write_bytes
    from vggproto.net.interpreter import Net
    from vggproto.net.weights import load_arrays
    if opset is not None and opset < MIN_OPSET:
        raise OnnxExportError(f"opset {opset} is not supported; use {MIN_OPSET} or newer")
    why = refusal(model, phase, opset, outputs)
    if why:
        raise OnnxExportError(f"{_label(model)}: {why}")
    if opset is None:
        opset = max(needed_opset(param) for param in _deploy_layers(model, phase))
    net = Net(model, phase=phase, seed=0)  # phase, not nn.Module.eval(), selects Caffe behaviour
    if weights:
        load_arrays(net, weights, "weights")  # Caffe's rules, as for every other way weights reach a net
    inputs = list(net.input_names)
    names = _outputs(net, inputs, outputs, _label(model))
    module = _wrapper(net, inputs, names)
    plan = probe(module, net, inputs, names, feed, dynamic_size, batch=dynamic_batch)
    data, check = _export_verified(model, module, net, (inputs, names), opset, feed, tolerance, plan)
    atomic_write_bytes(path, data)
    log.info("Wrote %s (%d bytes, opset %d, inputs %s, outputs %s; %s)", os.fspath(path), len(data), opset,
             ", ".join(inputs), ", ".join(names), describe_axes(check))
    return check


def describe_axes(check: OnnxCheck) -> str:
    """One phrase for the summary: which input axes are dynamic ("dynamic batch, height, width")."""
    names = sorted({axis for name in check.inputs for axis in check.dynamic.get(name, {}).values()},
                   key=lambda axis: (axis != "batch", axis))
    return f"dynamic {', '.join(names)}" if names else "fixed shapes"


def _outputs(net: Net, inputs: list[str], requested: Sequence[str] | None, label: str) -> list[str]:
    """The blobs to export: ``requested`` (checked against the net's blobs), else the net's outputs."""
    if requested is None:
        # an output that is an input (a fed blob nothing reads) is the caller's own data, and ONNX would rename it
        names = [name for name in net.output_names if name not in inputs]
        if not names:
            raise OnnxExportError(f"{label}: the net leaves no computed blob as an output (a later layer, e.g. "
                                  "Silence, reads every one); name the blobs to export with --outputs")
        return names
    names = list(dict.fromkeys(requested))
    unknown = [name for name in names if name not in net.blob_shapes]
    if unknown or not names:
        raise OnnxExportError(f"{label}: no blob {', '.join(repr(n) for n in unknown) or 'named'} to export; the "
                              f"net's blobs: {', '.join(net.blob_shapes)}")
    fed = [name for name in names if name in inputs]
    if fed:
        raise OnnxExportError(f"{label}: '{fed[0]}' is an input of the net, not a blob it computes")
    return names


def _export_verified(model: ModelSource, module: torch.nn.Module, net: Net, blobs: tuple[list[str], list[str]],
                     opset: int, feed: Feed, tolerance: float, plan: Plan) -> tuple[bytes, OnnxCheck]:
    """Trace with every dimension ``plan`` allows dynamic and check the graph at each run; a dimension whose
    run fails (the trace froze it: a layer computed a size in Python) is kept fixed, said in one line, and
    the net traced again."""
    inputs, outputs = blobs
    batch, scale, fixed = plan.batch, plan.scale, list(plan.fixed)
    while True:
        axes = axes_for(net, inputs, outputs, plan, batch is not None, scale != 1)
        data = _trace(model, module, net, inputs, outputs, opset, feed, axes)
        runs = [Run(), *([Run(batch)] if batch is not None else []),
                *([size_run(batch is not None, scale)] if scale != 1 else [])]
        ties = _ties(model, net, blobs, opset, feed, axes, tolerance)
        try:
            check = verify(module, data, net, inputs, outputs, tolerance, feed, runs=runs, ties=ties)
        except OnnxRunMismatch as exc:
            reason = str(exc) if "layer '" in str(exc) else \
                f"{_culprit(model, net, inputs, axes, opset, feed, exc.run, tolerance)}{exc}"
            if exc.run.scale != 1:
                scale = 1
                fixed.append(f"height and width fixed as declared: {reason.removesuffix(' — not written')}")
            else:
                batch = None
                fixed.append(f"batch fixed as declared: {reason.removesuffix(' — not written')}")
            continue
        check.dynamic, check.fixed = axes, fixed
        return data, check


def _ties(model: ModelSource, net: Net, blobs: tuple[list[str], list[str]], opset: int, feed: Feed,
          axes: dict[str, dict[int, str]], tolerance: float) -> Ties | None:
    """For a net with pooling masks: the re-check of a failed run up to argmax near-ties
    (:mod:`vggproto.convert.onnx_ties`), tracing the net with its masks as extra outputs when first needed."""
    from vggproto.convert.onnx_ties import check_ties, mask_blobs
    masks = [name for name in mask_blobs(net) if name not in blobs[1]]
    if len(masks) < len(mask_blobs(net)):
        return None   # a mask is itself an output: no near-tie can hide behind it
    traced: list[bytes] = []

    def ties(run: Run, seed: int) -> dict[int, dict[str, float]]:
        inputs, outputs = blobs
        if not traced:
            traced.append(_trace(model, _wrapper(net, inputs, outputs + masks), net, inputs, outputs + masks,
                                 opset, feed, axes))
        return check_ties(_wrapper(net, inputs, outputs), traced[0], net, blobs, run, seed, feed, tolerance)
    return ties if masks else None


def _culprit(model: ModelSource, net: Net, inputs: list[str], axes: dict[str, dict[int, str]], opset: int,
             feed: Feed, run: Run, tolerance: float) -> str:
    """"layer 'x' (Type): " for the first layer whose top onnxruntime gets wrong at ``run`` ("" if none is
    found): the net traced again with every blob an output, checked at that run alone."""
    blobs = [name for name in net.blob_shapes if name not in inputs]
    module = _wrapper(net, inputs, blobs)
    try:
        data = _trace(model, module, net, inputs, blobs, opset, feed, {k: v for k, v in axes.items() if k in inputs})
        verify(module, data, net, inputs, blobs, tolerance, feed, runs=[run])
    except OnnxExportError as exc:
        found = re.match(r"ONNX output '(.+?)' ", str(exc))
        writers = [param for param in net.net_param.layer if found and found.group(1) in param.top]
        if writers:
            return f"layer '{writers[-1].name}' ({writers[-1].type}): "
    return ""


def _trace(model: ModelSource, module: torch.nn.Module, net: Net, inputs: list[str], outputs: list[str],
           opset: int, feed: Feed, axes: dict[str, dict[int, str]]) -> bytes:
    """The ONNX bytes of ``module`` traced at the declared shapes with ``axes`` dynamic, the exporter silenced;
    one-line errors."""
    import torch
    buffer = io.BytesIO()
    try:
        with _quiet():
            torch.onnx.export(module, examples(net, inputs, Run(), 0, feed), buffer, dynamo=False,
                              opset_version=opset, input_names=inputs, output_names=outputs, dynamic_axes=axes or None,
                              do_constant_folding=True,
                              training=torch.onnx.TrainingMode.PRESERVE)  # layers keep their Caffe phase
    except Exception as exc:  # the exporter raises many types for unsupported operations
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        where = re.search(r"layer_list\.(\d+)", str(exc))   # the node's scope names the interpreter's layer
        if where and int(where.group(1)) < len(net.layer_names):
            name = net.layer_names[int(where.group(1))]
            first = f"layer '{name}' ({net.layer_dict[name].spec.param.type}): {first.split(' # ')[0][:200]}"
        raise OnnxExportError(f"{_label(model)}: torch.onnx.export failed: {first}") from None
    return buffer.getvalue()
