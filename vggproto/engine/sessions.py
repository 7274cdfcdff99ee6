"""How vggproto opens an onnxruntime session, and why each option is what it is (measured on the project's
2-core VM; ``tools/bench_ort_options.py`` re-measures them)."""
from __future__ import annotations

from typing import Any


def open_session(payload: bytes, threads: int, spinning: bool = True) -> Any:
    """A CPU session on the ONNX bytes ``payload`` with ``threads`` intra-op threads (None if the bytes are not a
    graph onnxruntime loads: a damaged cache entry, which the caller rebuilds).  ``spinning``: let idle threads
    spin between runs (2-15% faster at 2 threads), off when the interpreter runs a tail next on the same cores
    (spinning threads made that pass up to 2x slower)."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4   # fatal only: a failure is reported (or falls back) in one line
    # every fusion and the NCHWc layout (x86): 1.14x (VGG-16) and 1.16x (ResNet-50) over EXTENDED at one thread;
    # the arena, the memory pattern and denormals as zero measured no effect (BENCHMARKS.md), so defaults
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    try:
        return onnxruntime.InferenceSession(payload, options, providers=["CPUExecutionProvider"])
    except Exception:  # noqa: BLE001 — a damaged entry: the caller rebuilds it
        return None
