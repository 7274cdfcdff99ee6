"""``vggproto time-inference --engine``: forward-only timing of a net on an :class:`~vggproto.engine.Engine`.

The same protocol as :func:`vggproto.fast.bench.time_inference` (seeded random inputs at the given batch, two
untimed warm-up passes, then the timed ones); the first warm-up pass also exports, caches and verifies the graph.
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass

import numpy as np

from vggproto.errors import VGGProtoError

WARMUP = 2


@dataclass(frozen=True)
class EngineTiming:
    """Seconds per timed forward pass on ``engine`` with ``threads`` onnxruntime/torch threads."""

    times: list[float]
    batch: int
    engine: str
    threads: int

    def report(self) -> str:
        """``caffe time``'s "Average Forward pass" line, with the engine named."""
        median = statistics.median(self.times)
        return (f"Engine: {self.engine} ({self.threads} threads)\n"
                f"Average Forward pass: {statistics.mean(self.times) * 1e3:.4f} ms (median {median * 1e3:.4f} ms, "
                f"batch {self.batch}, {self.batch / median:.1f} img/s).")


def json_line(engine: str, batch: int, threads: int, times: list[float]) -> str:
    """The one-line summary ``--json`` prints last: engine, batch, threads and the median ms per batch."""
    return json.dumps({"engine": engine, "batch": batch, "threads": threads,
                       "ms": round(statistics.median(times) * 1e3, 4)})


def time_engine(model: str, weights: str | None = None, *, engine: str = "auto", batch: int = 1,
                iterations: int = 10, threads: int | None = None) -> EngineTiming:
    """Time ``iterations`` forward passes of ``model``'s TEST net on the CPU on ``engine``."""
    from vggproto.engine.api import load
    loaded = load(model, weights.split(",") if weights else None, engine, threads=threads)
    net = loaded.net
    if not net.input_names:
        raise VGGProtoError(f"{model}: the net has no Input/MemoryData layer to feed")
    rng = np.random.default_rng(0)
    inputs = {name: rng.standard_normal((batch, *net.blob_shapes[name][1:]), dtype=np.float32)
              for name in net.input_names}
    times = []
    for i in range(iterations + WARMUP):
        start = time.perf_counter()
        loaded.forward(**inputs)
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    return EngineTiming(times, batch, loaded.kind, loaded.threads)
