#!/usr/bin/env python
"""Which onnxruntime session options make vggproto's exported graphs faster on this CPU (issue #26, speed).

Each net of tools/bench_engines.py (``--nets``, default VGG-16 and ResNet-50) is exported with vggproto's own
verified export (random weights as the benchmark's), then one session per variant runs it at ``--threads`` and
batch 1: every variant's output is checked against the baseline's (``ORT_ENABLE_ALL``, onnxruntime's defaults,
which vggproto.engine uses) first, then rounds interleave the variants (order rotated), each timed once per round
after three warm-up passes; the median per variant is printed with the ratio baseline / variant (> 1: faster)
and the load average.  ``--files A.onnx,B.onnx`` times ONNX files instead (the first is the baseline): how an
export change is measured (export at the parent commit, then at this one).

    python tools/bench_ort_options.py [--nets vgg16,resnet50] [--variants arena,denormal] [--threads 1]
                                      [--rounds 15]
    python tools/bench_ort_options.py --files old/resnet50.onnx,new/resnet50.onnx
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

#: variant -> (graph optimisation level, {session config entry: value}, {SessionOptions attribute: value})
VARIANTS = {
    "ORT_ENABLE_ALL (baseline)": ("ORT_ENABLE_ALL", {}, {}),
    "ORT_ENABLE_EXTENDED (no NCHWc)": ("ORT_ENABLE_EXTENDED", {}, {}),
    "ORT_ENABLE_BASIC": ("ORT_ENABLE_BASIC", {}, {}),
    "no spinning": ("ORT_ENABLE_ALL", {"session.intra_op.allow_spinning": "0"}, {}),
    "no memory pattern": ("ORT_ENABLE_ALL", {}, {"enable_mem_pattern": False}),
    "no CPU arena": ("ORT_ENABLE_ALL", {}, {"enable_cpu_mem_arena": False}),
    "denormals as zero": ("ORT_ENABLE_ALL", {"session.set_denormal_as_zero": "1"}, {}),
}


def session(model: str | bytes, threads: int, level: str = "ORT_ENABLE_ALL", config: dict | None = None,
            attributes: dict | None = None):
    """An onnxruntime CPU session as vggproto.engine opens one, with the variant's changes."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = getattr(onnxruntime.GraphOptimizationLevel, level)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    for key, value in (attributes or {}).items():
        setattr(options, key, value)
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def export(name: str, path: Path, folder: Path) -> str:
    """``path``'s net with the benchmark's random weights, exported to ``folder``; the file's path."""
    from bench_engines import random_weights

    from vggproto.convert.onnx import export_onnx
    from vggproto.net.interpreter import Net
    out = folder / f"{''.join(c for c in name if c.isalnum())}.onnx"
    export_onnx(str(path), random_weights(Net(str(path), phase="TEST")), out)
    return str(out)


def compare(label: str, sessions: dict, rounds: int) -> None:
    """Check every session against the first, then time them interleaved; print medians and ratios."""
    first = next(iter(sessions.values()))
    feed = first.get_inputs()[0]
    shape = [d if isinstance(d, int) else (1 if i == 0 else 224) for i, d in enumerate(feed.shape)]
    x = {feed.name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    want = first.run(None, x)[0]
    for name, s in sessions.items():
        gap = float(np.abs(s.run(None, x)[0] - want).max() / max(np.abs(want).max(), 1e-30))
        print(f"{label}: {name}: output within {gap:.1e} of the baseline", flush=True)
        for _ in range(2):
            s.run(None, x)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            start = time.perf_counter()
            sessions[name].run(None, x)
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times[names[0]])
    for name, t in times.items():
        print(f"| {label} | {name} | {statistics.median(t) * 1e3:.1f} | {base / statistics.median(t):.2f}x | "
              f"{os.getloadavg()[0]:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nets", default="vgg16,resnet50", help="Parts of tools/bench_engines.py's net names.")
    parser.add_argument("--files", default="", help="Comma-separated ONNX files to compare (first = baseline).")
    parser.add_argument("--variants", default="", help="Comma-separated parts of variant names (the baseline is "
                                                       "always timed).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.threads} thread(s), load {os.getloadavg()[0]:.2f}\n\n"
          "| net | variant | median ms | baseline / variant | load |\n|---|---|---|---|---|", flush=True)
    if args.files:
        files = args.files.split(",")
        compare(Path(files[0]).stem, {f: session(f, args.threads) for f in files}, args.rounds)
        return
    from bench_engines import all_nets, squash
    with tempfile.TemporaryDirectory(prefix="bench-ort-options-") as tmp:
        wanted = [squash(n) for n in args.nets.split(",") if n]
        for name, path in all_nets(Path(tmp), False).items():
            if any(w in squash(name) for w in wanted):
                model = export(name, path, Path(tmp))
                chosen = [v for i, v in enumerate(VARIANTS) if i == 0 or not args.variants
                          or any(part.lower() in v.lower() for part in args.variants.split(","))]
                compare(name, {v: session(model, args.threads, *VARIANTS[v]) for v in chosen}, args.rounds)


if __name__ == "__main__":
    main()
