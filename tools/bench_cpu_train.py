#!/usr/bin/env python
"""CPU training throughput of `vggproto train` on a small VGG: one process (the named baseline) against
`--channels-last`, two OpenMP threads, and `--gpus cpu:N` (N gloo processes sharing the batch).

Why: `make demo` must fit in 5 minutes on a 2-core machine, so it trains with whichever of these is fastest
there; this script is how that choice was measured.  Each case is a fresh `vggproto train` process on the same
generated net (Table 1's configuration A, widths / ``--width-divisor``, 28x28 random crops of 32x32 images) fed
from an LMDB of random images through the real Data layer and transform, so data loading, the solver update and
(for cpu:N) the gradient all-reduce are all in the figure.  The rate is the median of the `iter/s` the solver logs
after the first ``--display`` iterations; repeats are interleaved (baseline, case, case, ..., baseline, ...) and
medians reported, with the load at start and end.

    python tools/bench_cpu_train.py [--width-divisor 4] [--batch 64] [--iterations 300] [--repeats 2] [--workers 2]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RATE = re.compile(r"Iteration (\d+) \(([\d.]+) iter/s")


def make_lmdb(path: Path, count: int) -> None:
    """``count`` random 32x32 BGR images with labels 0..9, as Caffe Datums."""
    from vggproto.data.datum import image_to_datum
    from vggproto.data.db import open_writer
    rng = np.random.default_rng(0)
    with open_writer(str(path)) as db:
        for i in range(count):
            image = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            db.put(f"{i:08d}".encode(), image_to_datum(image, int(i % 10)).SerializeToString())


def make_run(folder: Path, args: argparse.Namespace) -> Path:
    """The generated net and a solver of ``args.iterations`` iterations without tests or snapshots."""
    make_lmdb(folder / "train_lmdb", 4096)
    subprocess.run([sys.executable, "-m", "vggproto", "-q", "generate", "--config", "A", "--out-dir", str(folder),
                    "--width-divisor", str(args.width_divisor), "--num-classes", "10", "--crop-size", "28",
                    "--scale", "none", "--batch-size", str(args.batch), "--global-batch", str(args.batch),
                    "--test-batch-size", "100", "--init", "msra", "--input-scale", "0.0125", "--mean-value",
                    "73,73,73", "--train-source", str(folder / "train_lmdb"), "--val-source",
                    str(folder / "train_lmdb"), "--no-chain"], check=True, stdout=subprocess.DEVNULL)
    import vggproto
    solver = vggproto.read_solver(folder / "solvers" / "A.prototxt", resolve_prefix=False)
    solver.max_iter, solver.display, solver.test_interval = args.iterations, args.display, 10 ** 9
    solver.snapshot, solver.snapshot_after_train, solver.test_initialization = 0, False, False
    solver.solver_mode = solver.CPU
    solver.snapshot_prefix = str(folder / "snap")
    path = folder / "solvers" / "bench.prototxt"
    vggproto.write_solver(solver, path)
    return path


CASES: dict[str, tuple[list[str], dict[str, str]]] = {
    "1 process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
    "1 process, --channels-last": (["--channels-last"], {"OMP_NUM_THREADS": "1"}),
    "1 process, 2 threads": ([], {"OMP_NUM_THREADS": "2"}),
    "--gpus cpu:N": (["--gpus", "cpu:{workers}"], {"OMP_NUM_THREADS": "1"}),
}
BASELINE = "1 process, 1 thread"


def run_case(name: str, solver: Path, args: argparse.Namespace) -> float:
    """Median iter/s the solver logs after its first display interval, in a fresh process."""
    flags, env = CASES[name]
    flags = [f.format(workers=args.workers) for f in flags]
    child = subprocess.run([sys.executable, "-m", "vggproto", "train", str(solver), *flags], cwd=solver.parent.parent,
                           env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE", **env}, capture_output=True, text=True,
                           timeout=1800)
    if child.returncode:
        sys.exit(f"bench_cpu_train: {name} failed:\n{child.stderr[-2000:]}")
    rates = [float(m.group(2)) for m in RATE.finditer(child.stderr) if int(m.group(1)) > args.display]
    if not rates:
        sys.exit(f"bench_cpu_train: {name}: no 'iter/s' line after iteration {args.display}")
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width-divisor", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--display", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="N of --gpus cpu:N [2]")
    args = parser.parse_args()
    print(f"start: load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs; VGG-A/{args.width_divisor}, "
          f"batch {args.batch}, {args.iterations} iterations, {args.repeats} interleaved repeats")
    with tempfile.TemporaryDirectory() as tmp:
        solver = make_run(Path(tmp), args)
        rates: dict[str, list[float]] = {name: [] for name in CASES}
        for _ in range(args.repeats):
            for name in CASES:
                rates[name].append(run_case(name, solver, args))
    base = statistics.median(rates[BASELINE])
    print(f"{'case':<30} {'iter/s':>8} {'img/s':>8} {'vs ' + BASELINE:>26}   runs")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name.replace('N', str(args.workers)):<30} {rate:8.2f} {rate * args.batch:8.0f} {rate / base:25.2f}x   "
              + ", ".join(f"{v:.1f}" for v in values))
    print(f"end: load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
