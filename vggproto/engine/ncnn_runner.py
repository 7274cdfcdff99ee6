"""ncnn as an engine: the longest run of layers :mod:`vggproto.convert.ncnn` can write, in ncnn, on the CPU.

Why: ncnn convolves 3×3 layers with Winograd kernels at float32 precision, onnxruntime directly, so VGG's
convolutions run about twice as fast in ncnn (BENCHMARKS.md); ncnn is exact to ~1e-5 against the interpreter,
within the engine's 1e-4 check.  Its files are written in memory from the net when the engine starts (as fast as
reading a cached ONNX graph: no tracing), so they are not cached.  ncnn's blobs have no batch axis: a batch runs
image by image, and the outputs are stacked (and reshaped to the interpreter's shapes by the engine, which learns
them when it verifies a shape's first pass).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vggproto.errors import VGGProtoError
from vggproto.net.segments import Segment, plan, segment_weights

if TYPE_CHECKING:
    from vggproto.net.interpreter import Net


class NcnnUnavailable(VGGProtoError):
    """ncnn is not installed, or cannot run the net; the message says why in one line."""


class NcnnRunner:
    """The ncnn segment of ``net`` with ``threads`` threads (``keep``: blobs the caller reads besides the
    outputs); :class:`NcnnUnavailable` when ncnn is missing or no layer after the inputs can run there."""

    def __init__(self, net: Net, threads: int, keep: tuple[str, ...] = ()) -> None:
        try:
            import ncnn
        except ImportError as exc:
            raise NcnnUnavailable(f"ncnn is not installed ({exc}); pip install ncnn") from None
        from vggproto.convert.ncnn import refusal, to_ncnn
        found = plan(net, keep, refusal, "ncnn")
        if isinstance(found, str):
            raise NcnnUnavailable(found)
        self.segment: Segment = found
        model = to_ncnn(net, found.start, found.end, found.inputs, found.outputs, segment_weights(net, found))
        self.blob_names = model.blob_names
        self._ncnn = ncnn
        self.net = ncnn.Net()
        _options(self.net.opt, threads, len(found.outputs))
        if self.net.load_param_mem(model.param) != 0:
            raise NcnnUnavailable("ncnn refused the written .param (a layer it does not know)")
        self.net.load_model_mem(model.weights)

    def run(self, blobs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """The segment's outputs for the images in ``blobs`` (batch first), stacked: N × ncnn's per-image shape."""
        feeds = {name: np.ascontiguousarray(blobs[name].detach().cpu().numpy(), dtype=np.float32)
                 for name in self.segment.inputs}
        batch = {len(array) for array in feeds.values()}
        if len(batch) != 1:
            raise VGGProtoError(f"ncnn runs image by image: its inputs must share the batch size, got "
                                f"{ {name: array.shape for name, array in feeds.items()} }")
        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self.segment.outputs}
        for index in range(batch.pop()):
            extractor = self.net.create_extractor()
            for name, array in feeds.items():
                extractor.input(name, self._ncnn.Mat(array[index]))
            for name, values in outputs.items():
                status, mat = extractor.extract(self.blob_names[name])
                if status != 0:
                    raise VGGProtoError(f"ncnn failed to compute '{name}' (status {status})")
                values.append(np.array(mat))
        return {name: np.stack(values) for name, values in outputs.items()}


def _options(options: Any, threads: int, outputs: int) -> None:
    """float32 everywhere (ncnn would store and compute in fp16/bf16 where the CPU has it), Winograd and packed
    layouts on, and each intermediate blob freed once read unless several outputs are extracted."""
    options.num_threads = threads
    options.use_fp16_storage = options.use_fp16_packed = options.use_fp16_arithmetic = False
    options.use_bf16_storage = options.use_int8_inference = False
    options.use_winograd_convolution = options.use_sgemm_convolution = options.use_packing_layout = True
    options.lightmode = outputs == 1
    options.openmp_blocktime = 1   # LLVM OpenMP: spin <= 1 ms after a pass (the x86 wheel's GNU OpenMP ignores it)


def reshaped(raw: dict[str, np.ndarray], wanted: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """ncnn's stacked outputs in the interpreter's shapes (ncnn drops unit axes: a global pooling gives C, not
    C×1×1); a size that does not match is an error."""
    out = {}
    for name, array in raw.items():
        if array.size != int(np.prod(wanted[name])):
            raise VGGProtoError(f"ncnn's '{name}' has shape {array.shape}, the interpreter's {wanted[name]}")
        out[name] = torch.from_numpy(np.ascontiguousarray(array.reshape(wanted[name])))
    return out
