#!/usr/bin/env python
"""Peak memory (RSS) of ``vggproto evaluate --mode dense+crops``, against one forward pass of ``--batch`` crops.

Why: ``evaluate --mode dense+crops`` on VGG-16 with the default ``--batch 50`` once peaked at 7.75 GB RSS, because
forward passes took 50 *views* whatever their size (50 whole images at Q = 512 at once).  Passes are now packed by
pixels: one holds at most ``--batch`` crop-sized (224²) views' worth (``vggproto.evaluation.evaluate._Packer`` and
``Model.posteriors``), so the peak should stay near what any batch of 50 crops needs.

Each case runs in a fresh Python process on the CPU and reports its own ``ru_maxrss``:

* ``evaluate``: ``python -m vggproto evaluate --mode dense+crops --workers 0 -q`` run in-process by ``vggproto.cli``
  on ``--images`` random 480×640 PNGs (the measured case; views/s counts scales × (g² + 1) × 2 views per image);
* ``vggproto-batch`` (the named baseline): the same deploy net built by ``vggproto.Net`` with the same weights, one
  forward pass under ``torch.inference_mode()`` on ``--batch`` random 224×224 crops;
* ``torchvision``: torchvision's twin (vgg11/13/16/19 for A/B/D/E) on the same batch, when ``--width-divisor`` is 1
  and torchvision is importable.

Repeats are interleaved (evaluate, baseline, [torchvision,] evaluate, ...) and medians reported, with the load
average and CPU count at start and end (machines are shared and noisy).  The thread environment is left as it is
and printed.

    python tools/bench_evaluate_memory.py [--config D] [--width-divisor 1] [--images 2] [--scales 256,384,512]
                                          [--grid 5] [--batch 50] [--repeats 1]

Full size (``--width-divisor 1``, the defaults) takes a few minutes on 2 CPU cores; a quick check:
``--width-divisor 8 --images 1 --scales 256 --grid 2``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
BASELINE = "vggproto-batch"
MARK = "BENCH_RESULT "

# Child of the measured case: the evaluate command line in-process, then its own peak RSS (KiB on Linux).
_EVALUATE_CHILD = """
import json, resource, sys, time
argv = json.loads(sys.argv[1])
from vggproto.cli import main
sys.argv = ["vggproto", *argv]
start = time.perf_counter()
try:
    main(prog_name="vggproto")
except SystemExit as exc:
    if exc.code not in (0, None):
        raise
wall = time.perf_counter() - start
print("%s" + json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "wall_s": wall}))
""" % MARK

# Child of the baselines: build the net, one forward pass of a batch of crops under inference_mode.
_FORWARD_CHILD = """
import json, resource, sys, time
case, deploy, weights, batch, twin = json.loads(sys.argv[1])
import torch
start = time.perf_counter()
if case == "torchvision":
    import torchvision
    net = getattr(torchvision.models, twin)(weights=None).eval()
    run = lambda x: net(x)
else:
    from vggproto.net.interpreter import Net
    net = Net(deploy, weights=weights).eval()
    run = lambda x: net.forward(x)
x = torch.randn(batch, 3, 224, 224)
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    run(x)
wall = time.perf_counter() - start
print("%s" + json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "wall_s": wall,
                          "loaded_kib": loaded}))
""" % MARK


def _weights(deploy: Path, path: Path) -> None:
    """Random He-like weights for every parameter blob of ``deploy``, written as a caffemodel."""
    from vggproto.net.shapes import net_param_shapes
    from vggproto.weights.caffemodel import write_weights
    net_param, shapes = net_param_shapes(str(deploy))
    rng = np.random.default_rng(0)
    arrays = {}
    for layer, blob_shapes in shapes.items():
        blobs = []
        for shape in blob_shapes:
            fan_in = max(int(np.prod(shape[1:])), 1)
            blobs.append((rng.standard_normal(shape) * np.sqrt(2.0 / fan_in) * 0.5).astype(np.float32))
        arrays[layer] = blobs
    write_weights(str(path), arrays, net_param)


def _images(folder: Path, n: int, height: int = 480, width: int = 640) -> Path:
    """``n`` random 4:3 PNG images and a Caffe list file (``<path> 0`` lines)."""
    import cv2
    rng = np.random.default_rng(1)
    lines = []
    for i in range(n):
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        lines.append(f"{path} 0")
    list_path = folder / "list.txt"
    list_path.write_text("\n".join(lines) + "\n")
    return list_path


def prepare(folder: Path, config: str, width_divisor: int, images: int) -> tuple[Path, Path, Path]:
    """Generate the nets, random weights and images in ``folder``; return (deploy prototxt, weights, list file)."""
    subprocess.run([sys.executable, "-m", "vggproto", "-q", "generate", "--config", config, "--out-dir", str(folder),
                    "--width-divisor", str(width_divisor), "--no-chain"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    deploy = folder / "nets" / f"{config}_deploy.prototxt"
    weights = folder / "weights.caffemodel"
    _weights(deploy, weights)
    return deploy, weights, _images(folder, images)


def _run_child(code: str, payload: list) -> dict:
    """Run ``code`` in a fresh Python process; return the JSON it printed after ``MARK``."""
    done = subprocess.run([sys.executable, "-c", code, json.dumps(payload)], cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"bench child failed with exit status {done.returncode}: {payload[:1]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARK)]
    return json.loads(lines[-1][len(MARK):])


def measure(case: str, args: argparse.Namespace, files: tuple[Path, Path, Path]) -> dict:
    """One measurement of ``case`` (``evaluate``, ``vggproto-batch`` or ``torchvision``) in a fresh process."""
    deploy, weights, list_path = files
    if case == "evaluate":
        argv = ["-q", "evaluate", "--model", str(deploy), "--weights", str(weights), "--list", str(list_path),
                "--mode", "dense+crops", "--scales", args.scales, "--grid", str(args.grid),
                "--batch", str(args.batch), "--workers", "0"]
        return _run_child(_EVALUATE_CHILD, argv)
    return _run_child(_FORWARD_CHILD, [case, str(deploy), str(weights), args.batch, TORCHVISION.get(args.config)])


def _has_torchvision() -> bool:
    try:
        metadata.version("torchvision")
    except metadata.PackageNotFoundError:
        return False
    return True


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _load_line(when: str) -> str:
    return f"{when}: load average (1 min) {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs"


def report(results: dict[str, list[dict]], views: int) -> None:
    """The table of medians: peak RSS, wall time, ratio of peak RSS to the baseline's, views/s for evaluate."""
    base = statistics.median(r["maxrss_kib"] for r in results[BASELINE])
    print(f"{'case':<16} {'peak RSS MiB':>12} {'wall s':>8} {'RSS / ' + BASELINE:>22}  notes")
    for case, runs in results.items():
        rss = statistics.median(r["maxrss_kib"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        if case == "evaluate":
            note = f"{views} views, {views / wall:.1f} views/s (wall includes loading the net)"
        else:
            loaded = statistics.median(r["loaded_kib"] for r in runs)
            note = f"{loaded / 1024:.0f} MiB before the forward pass (net + weights + input)"
        print(f"{case:<16} {rss / 1024:>12.0f} {wall:>8.2f} {rss / base:>22.2f}  {note}")
    print(f"({len(results[BASELINE])} run(s) per case, medians; peak RSS = ru_maxrss of each fresh process)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="D", help="Table 1 column (A-E, A-LRN).")
    parser.add_argument("--width-divisor", type=int, default=1)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--scales", default="256,384,512")
    parser.add_argument("--grid", type=int, default=5)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    scales = [int(q) for q in args.scales.split(",")]
    views = args.images * len(scales) * (args.grid ** 2 + 1) * 2
    cases = ["evaluate", BASELINE]
    if args.width_divisor == 1 and args.config in TORCHVISION and _has_torchvision():
        cases.append("torchvision")
    print(_load_line("start"))
    print(f"torch {_version('torch')}, torchvision {_version('torchvision')}, python {sys.version.split()[0]}; "
          + ", ".join(f"{k}={os.environ.get(k, 'unset')}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")))
    print(f"VGG-{args.config} width/{args.width_divisor}, {args.images} image(s) 480x640, dense+crops at Q={scales}, "
          f"grid {args.grid}, --batch {args.batch} ({views} views); cases: {', '.join(cases)}")
    results: dict[str, list[dict]] = {case: [] for case in cases}
    with tempfile.TemporaryDirectory(prefix="bench_eval_mem_") as tmp:
        started = time.perf_counter()
        files = prepare(Path(tmp), args.config, args.width_divisor, args.images)
        print(f"prepared net, weights and images in {time.perf_counter() - started:.1f}s")
        for _ in range(args.repeats):
            for case in cases:
                results[case].append(measure(case, args, files))
    report(results, views)
    print(_load_line("end"))


if __name__ == "__main__":
    main()
