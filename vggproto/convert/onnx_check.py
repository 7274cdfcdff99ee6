"""The onnxruntime side of the ONNX export: run the exported bytes, compare with the interpreter, and turn every
onnxruntime failure into one line naming the layer.

An exported graph is checked at several *runs* (:class:`Run`): the declared shapes, another batch size and,
for 4-D inputs, twice the declared height and width, so that a dimension the trace froze shows up here (as an
onnxruntime error or a mismatch) and the exporter can keep that dimension fixed instead.  onnxruntime's node
names carry the module path of the interpreter's layer (``/net/layer_list.5/Reshape``), which is how an error
names the Caffe layer rather than an ONNX node.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from vggproto.errors import VGGProtoError

if TYPE_CHECKING:
    import torch

    from vggproto.net.interpreter import Net


class OnnxExportError(VGGProtoError):
    """The net cannot be exported, or the exported graph disagrees with the interpreter."""


class OnnxRunMismatch(OnnxExportError):
    """The graph failed or disagreed at a run other than the declared shapes: the dimension that run changes
    was frozen by the trace.  ``run`` is that run, so the exporter can keep its dimension fixed and trace again."""

    def __init__(self, message: str, run: "Run"):
        super().__init__(message)
        self.run = run


class OnnxArgmaxError(OnnxExportError):
    """onnxruntime's pooling mask points at a cell that is not a maximum of its window."""


@dataclass
class OnnxCheck:
    """Largest relative difference per output, for each checked batch size; which axes are dynamic (blob ->
    axis -> symbolic name); one line for each dimension kept fixed, naming why (a layer, where known)."""

    inputs: list[str]
    outputs: list[str]
    differences: dict[int, dict[str, float]]
    dynamic: dict[str, dict[int, str]] = field(default_factory=dict)
    fixed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Run:
    """One shape the graph is checked at: ``batch`` (None: as declared) and ``scale`` for the height and width
    of every 4-D input (1: as declared)."""

    batch: int | None = None
    scale: int = 1

    def describe(self) -> str:
        """The run in messages: "at batch 2", "at 2x the declared height and width"."""
        if self.scale != 1:
            return f"at {self.scale}x the declared height and width"
        return "at the declared shapes" if self.batch is None else f"at batch {self.batch}"


#: Makes one example input: (blob name, shape with the batch already set, seed) -> tensor.  The default draws
#: seeded standard-normal values; callers whose inputs have a narrower domain (indices, positive values) pass
#: their own.
Feed = Callable[[str, "list[int]", int], "torch.Tensor"]


def normal_feed(name: str, shape: list[int], seed: int) -> torch.Tensor:
    """Seeded standard-normal values: the check's inputs when the caller has no domain to respect."""
    import torch
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed * 7919 + zlib.crc32(name.encode())))


def examples(net: Net, inputs: list[str], run: Run, seed: int, feed: Feed) -> tuple[torch.Tensor, ...]:
    """One tensor per input, of the prototxt's shape with the batch axis set to ``run.batch`` and the height
    and width of 4-D inputs multiplied by ``run.scale`` (not those of N x C x 1 x 1 inputs: per-channel values,
    as Axpy's scale)."""
    tensors = []
    for name in inputs:
        shape = list(net.blob_shapes[name])
        if shape and run.batch is not None:
            shape[0] = run.batch
        if is_image(shape):
            shape[2:] = [shape[2] * run.scale, shape[3] * run.scale]
        tensors.append(feed(name, shape, seed))
    return tuple(tensors)


def is_image(shape: Sequence[int]) -> bool:
    """Whether a blob of ``shape`` is an image whose height and width may be dynamic: 4-D, not 1 x 1."""
    return len(shape) == 4 and shape[2] * shape[3] > 1


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


def onnx_failure(exc: BaseException, net: Net | None, what: str) -> str:
    """One line for an onnx / onnxruntime exception: ``what`` failed, in layer 'x' (Type) when the failing
    node's name carries the interpreter's layer index, then onnxruntime's own reason without its C++ frames."""
    text = " ".join((str(exc).strip().splitlines() or [""])[0].split()) or type(exc).__name__
    where = ""
    found = re.search(r"layer_list\.(\d+)", text)
    if net is not None and found and int(found.group(1)) < len(net.layer_names):
        name = net.layer_names[int(found.group(1))]
        where = f" in layer '{name}' ({net.layer_dict[name].spec.param.type})"
    reason = text.rsplit("Status Message:", 1)[-1]
    # onnxruntime's source position and C++ signature ("conv.cc:12 void ns::f(int) const") say nothing to a user
    reason = re.sub(r"^\s*\S+\.(?:h|cc|cpp):\d+\s+(?:[\w:<>*&,]+\s+)*?[\w:<>~]+\([^)]*\)(?:\s+const)?\s*", "",
                    reason).strip()
    reason = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", reason)
    return f"{what}{where}: {reason[:300]}"


def session(data: bytes, net: Net | None = None) -> object:
    """An onnxruntime CPU session of the ONNX bytes; a graph onnxruntime refuses is one line."""
    try:
        import onnxruntime
    except ImportError:
        raise OnnxExportError("the ONNX export is checked in onnxruntime, which is not installed "
                              "(pip install onnxruntime)") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4   # fatal only: its notes and error dumps would break the one-line output
    try:
        return onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own pybind types
        raise OnnxExportError(onnx_failure(exc, net, "onnxruntime cannot load the exported graph")) from None


#: Re-checks one run allowing argmax near-ties (see :mod:`vggproto.convert.onnx_ties`): (run, seed) -> the
#: differences as :func:`match` gives them; raises :class:`OnnxExportError` if near-ties do not explain them.
Ties = Callable[["Run", int], "dict[int, dict[str, float]]"]


def verify(module: torch.nn.Module, data: bytes, net: Net, inputs: list[str], outputs: list[str],
           tolerance: float, feed: Feed = normal_feed,
           batches: tuple[int | None, ...] = (1, 2), runs: Sequence[Run] | None = None,
           ties: Ties | None = None) -> OnnxCheck:
    """Run the ONNX bytes in onnxruntime at each of ``runs`` (default: one per entry of ``batches``, None being
    the declared batch; a None after the first is skipped); raise if any output differs from the interpreter's
    (unless ``ties`` shows the difference comes only from argmax near-ties of pooling masks).  A failure at a
    run other than the first raises :class:`OnnxRunMismatch`.  Differences are keyed by the batch of the run
    (the scaled runs are checked but not listed)."""
    if runs is None:
        runs = [Run(batch) for i, batch in enumerate(batches) if batch is not None or i == 0]
    ort = session(data, net)
    used = {i.name for i in ort.get_inputs()}   # the exporter drops inputs nothing reads (Silence's)
    differences: dict[int, dict[str, float]] = {}
    for seed, run in enumerate(runs, 1):
        try:
            expected, got, batch = run_both(module, ort, net, inputs, outputs, used, run, seed, feed)
            found = match(outputs, expected, got, run, batch, tolerance)
        except OnnxExportError as exc:
            try:
                found = _explained(ties, run, seed, exc)
            except OnnxExportError as why:
                error = why if isinstance(why, OnnxArgmaxError) else exc   # the more telling of the two
                if seed == 1:
                    raise error from None
                raise OnnxRunMismatch(str(error), run) from None
        if run.scale == 1:
            differences.update(found)
    return OnnxCheck([name for name in inputs if name in used], outputs, differences)


def _explained(ties: Ties | None, run: Run, seed: int, exc: OnnxExportError) -> dict[int, dict[str, float]]:
    """``{}`` when ``ties`` explains the failure ``exc`` at ``run`` by argmax near-ties; else raises."""
    if ties is None:
        raise exc
    return ties(run, seed)


def run_both(module: torch.nn.Module, ort: object, net: Net, inputs: list[str], outputs: list[str], used: set,
             run: Run, seed: int, feed: Feed) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """The interpreter's and onnxruntime's ``outputs`` at ``run`` on the same seeded inputs, and the batch
    (a graph with more outputs than ``outputs`` gives them all, the extra ones last)."""
    import torch
    example = examples(net, inputs, run, seed, feed)
    with torch.no_grad():
        expected = [t.numpy() for t in module(*example)]
    names = [o.name for o in ort.get_outputs()]
    try:
        got = ort.run(names if len(names) > len(outputs) else outputs,
                      {name: t.numpy() for name, t in zip(inputs, example) if name in used})
    except Exception as exc:  # noqa: BLE001 — onnxruntime raises its own pybind types
        raise OnnxExportError(onnx_failure(exc, net, f"onnxruntime failed {run.describe()}")) from None
    return expected, got, int(example[0].shape[0]) if example[0].dim() else 1


def match(outputs: list[str], expected: list[np.ndarray], got: list[np.ndarray], run: Run, batch: int,
          tolerance: float) -> dict[int, dict[str, float]]:
    """Every output within ``tolerance`` (same shape, :func:`difference`), keyed by the run's batch."""
    found: dict[str, float] = {}
    for name, want, have in zip(outputs, expected, got):
        if want.shape != have.shape:
            raise OnnxExportError(f"ONNX output '{name}' has shape {list(have.shape)} {run.describe()}; the "
                                  f"interpreter gives {list(want.shape)} — not written")
        found[name] = difference(want, have)
        if not found[name] <= tolerance:
            raise OnnxExportError(f"ONNX output '{name}' differs from the interpreter by {found[name]:.3g} "
                                  f"(relative) {run.describe()}, more than {tolerance:g} — not written")
    return {batch: found}
