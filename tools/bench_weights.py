#!/usr/bin/env python3
"""Benchmark vggproto's caffemodel reader/writer against plain protobuf on a full-size VGG-16 file.

The file is synthesised with ``vggproto make-official-like`` (553,432,081 bytes, the official V1 layout) in a temp
dir and read once to warm the page cache.  Every case runs in a fresh subprocess; peak RSS growth is
``ru_maxrss`` at the end minus ``ru_maxrss`` after the imports.  Cases:

* ``protobuf-read``   baseline: ``NetParameter.ParseFromString`` + ``np.array(blob.data)`` per blob, sum all
* ``vggproto-read``   ``read_weights`` + sum of every value (every page touched)
* ``vggproto-struct`` ``read_caffemodel`` (layer structure + zero-copy weights, values untouched)
* ``protobuf-write``  baseline: ``SerializeToString`` of the parsed net + one file write (parse not timed)
* ``vggproto-write``  ``write_weights`` of the arrays from ``read_weights`` (all values touched first)
* ``protobuf-upgrade`` baseline: parse + ``upgrade_net`` + ``SerializeToString`` + write (V1 -> V2 file)
* ``vggproto-upgrade`` ``upgrade_caffemodel`` (structure upgraded, blob bytes copied verbatim)

Usage: tools/bench_weights.py [--repeat N] [--keep DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ["protobuf-read", "vggproto-read", "vggproto-struct", "protobuf-write", "vggproto-write",
         "protobuf-upgrade", "vggproto-upgrade"]
BASELINE = {"protobuf-read": "protobuf-read", "vggproto-read": "protobuf-read", "vggproto-struct": "protobuf-read",
            "protobuf-write": "protobuf-write", "vggproto-write": "protobuf-write",
            "protobuf-upgrade": "protobuf-upgrade", "vggproto-upgrade": "protobuf-upgrade"}


def _child(case: str, path: str, out_dir: str) -> dict:
    """Run one case in this (fresh) process and return its measurements."""
    import resource
    import time

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from vggproto.caffe.proto import caffe_pb2
    from vggproto.caffe.upgrade import upgrade_net
    from vggproto.weights.caffemodel import read_caffemodel, read_weights, upgrade_caffemodel, write_weights

    def rss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    base = rss()
    result: dict = {}
    if case == "protobuf-read":
        start, cpu0 = time.perf_counter(), cpu()
        net = caffe_pb2.NetParameter()
        with open(path, "rb") as handle:
            net.ParseFromString(handle.read())
        arrays = [np.array(b.data, np.float32) for layer in net.layers for b in layer.blobs]
        result["checksum"] = sum(float(a.sum(dtype=np.float64)) for a in arrays)
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
    elif case == "vggproto-read":
        start, cpu0 = time.perf_counter(), cpu()
        weights = read_weights(path)
        result["checksum"] = sum(float(a.sum(dtype=np.float64)) for v in weights.values() for a in v)
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
    elif case == "vggproto-struct":
        start, cpu0 = time.perf_counter(), cpu()
        net, weights = read_caffemodel(path)
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
        result["checksum"] = len(net.layer)
    elif case == "protobuf-write":
        net = caffe_pb2.NetParameter()
        with open(path, "rb") as handle:
            net.ParseFromString(handle.read())
        before = rss()
        start, cpu0 = time.perf_counter(), cpu()
        with open(os.path.join(out_dir, "pb.caffemodel"), "wb") as handle:
            handle.write(net.SerializeToString())
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
        result["write_growth"] = rss() - before
    elif case == "vggproto-write":
        weights = read_weights(path)
        result["checksum"] = sum(float(a.sum(dtype=np.float64)) for v in weights.values() for a in v)
        before = rss()
        start, cpu0 = time.perf_counter(), cpu()
        write_weights(os.path.join(out_dir, "vp.caffemodel"), weights)
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
        result["write_growth"] = rss() - before
    elif case == "protobuf-upgrade":
        start, cpu0 = time.perf_counter(), cpu()
        net = caffe_pb2.NetParameter()
        with open(path, "rb") as handle:
            net.ParseFromString(handle.read())
        upgrade_net(net)
        with open(os.path.join(out_dir, "pb_v2.caffemodel"), "wb") as handle:
            handle.write(net.SerializeToString())
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
    elif case == "vggproto-upgrade":
        start, cpu0 = time.perf_counter(), cpu()
        upgrade_caffemodel(path, os.path.join(out_dir, "vp_v2.caffemodel"))
        result["seconds"], result["cpu"] = time.perf_counter() - start, cpu() - cpu0
    result["peak_growth"] = rss() - base
    return result


def _run_case(case: str, path: str, out_dir: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", case, path, out_dir], check=True,
                          capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _same_file(a: str, b: str) -> bool:
    with open(a, "rb") as left, open(b, "rb") as right:
        while True:
            x, y = left.read(1 << 24), right.read(1 << 24)
            if x != y:
                return False
            if not x:
                return True


def _synthesise(directory: str) -> str:
    path = os.path.join(directory, "VGG_ILSVRC_16_layers.caffemodel")
    subprocess.run([sys.executable, "-m", "vggproto", "make-official-like", "--depth", "16", path, "--seed", "1"],
                   check=True, capture_output=True, cwd=ROOT)
    with open(path, "rb") as handle:            # warm the page cache
        while handle.read(1 << 24):
            pass
    return path


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(_child(*sys.argv[2:])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median reported)")
    parser.add_argument("--keep", help="directory for the synthesised file (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.keep) as directory:
        path = _synthesise(directory)
        size = os.path.getsize(path)
        results = {case: [_run_case(case, path, directory) for _ in range(args.repeat)] for case in CASES}
        same_upgrade = _same_file(os.path.join(directory, "pb_v2.caffemodel"),
                                  os.path.join(directory, "vp_v2.caffemodel"))
    checks = {r["checksum"] for case in ("protobuf-read", "vggproto-read", "vggproto-write")
              for r in results[case]}
    load = os.getloadavg()[0]
    print(f"file: full-size VGG-16 V1 caffemodel, {size:,} bytes; {args.repeat} fresh processes per case; "
          f"load average {load:.1f} on {os.cpu_count()} CPUs; checksums agree: {len(checks) == 1}; "
          f"upgraded files byte-identical: {same_upgrade}")
    print("| case | wall s (min / median) | CPU s (min) | peak RSS growth / file | RSS growth in write / file "
          "| min wall vs baseline |")
    print("|---|---|---|---|---|---|")
    best = {case: min(r["seconds"] for r in runs) for case, runs in results.items()}
    for case, runs in results.items():
        median = statistics.median(r["seconds"] for r in runs)
        cpu_min = min(r["cpu"] for r in runs)
        peak = max(r["peak_growth"] for r in runs) / size
        write = max((r.get("write_growth", 0) for r in runs), default=0) / size
        ratio = best[case] / best[BASELINE[case]]
        write_text = f"{write:.2f}" if "write" in case else "-"
        print(f"| {case} | {best[case]:.3f} / {median:.3f} | {cpu_min:.3f} | {peak:.2f} | {write_text} "
              f"| {ratio:.3f}x {BASELINE[case]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
