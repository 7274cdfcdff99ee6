#!/usr/bin/env python
"""CPU inference speed of vggproto's engines against OpenCV's dnn (the usual way to run a Caffe model on a CPU):
torch (the interpreter), torch + fast (the interpreter with vggproto.fast: Winograd F(4x4,3x3) for wide 3x3
convolutions, ReLU fused into the conv, 2x2 max pooling by maxima; ``time-inference --winograd``), onnxruntime
(vggproto.engine on vggproto's own verified export; split where ONNX stops), ncnn (vggproto.engine on
vggproto's own ncnn files; split where they stop) and ``cv2.dnn.readNetFromCaffe`` on the same prototxt and
caffemodel.

Nets: the six VGG nets of Table 1 (VGG-16 = nets/D_deploy.prototxt at full width; A, A-LRN, B, C, E generated
at ``--width-divisor`` 4 unless ``--full-width``), ResNet-50, GoogLeNet, SqueezeNet 1.1 and MobileNet v1
re-created in tools/bench_nets.py, and the reduced-width MobileNet-SSD of tests/data/forks (DetectionOutput in
torch: the split engine).  Random weights (BatchNorm variances positive) written as a caffemodel.

Every engine's output is checked against the interpreter before anything is timed (onnxruntime and ncnn <= 1e-4
relative, as the engine verifies them; torch + fast and OpenCV <= 1e-3; an engine that disagrees is reported and
left out of the ratios).
OpenCV's dnn ignores ``lrn_param.k`` (it always uses 1; real Caffe's golden LRN output with k = 2, which the
interpreter matches, says k counts), so on VGG-A-LRN (k = 2, the paper's Krizhevsky LRN) it computes another
function and has no ratio: its cell says so.  Then, for batch 1 and 8 and 1 and 2 threads, rounds interleave the
engines (rotating their order, with a 50 ms rest before each so that no engine's spinning threads slow the next)
and each time is the median over rounds of the mean of a few passes; the load
average is printed with every row.  Ratio = OpenCV's time / the
engine's time (> 1: faster than OpenCV); "best" is the fastest of vggproto's engines, "exact" the fastest of those
held to 1e-4 (torch, onnxruntime, ncnn: what ``--engine auto`` chooses from); geometric means over the nets.

    python tools/bench_engines.py [--rounds 3] [--nets vgg16,resnet50] [--threads 1,2] [--batch 1]
                                  [--engines torch,onnxruntime] [--full-width] [--markdown out.md]

``--nets`` matches names without case and punctuation ("vgg16" is "VGG-16 (D)", "a-lrn" "VGG-A-LRN/4").
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

ENGINES = ("torch", "torch+fast", "onnxruntime", "ncnn", "opencv")
OURS = ENGINES[:-1]
EXACT = ("torch", "onnxruntime", "ncnn")   # within 1e-4 of the interpreter: the engines --engine auto races
TOLERANCE = {"torch+fast": 1e-3, "onnxruntime": 1e-4, "ncnn": 1e-4, "opencv": 1e-3}


def vgg_nets(folder: Path, full_width: bool) -> dict[str, Path]:
    """VGG-16 from nets/, the other five generated (reduced width unless ``full_width``)."""
    subprocess.run([sys.executable, "-m", "vggproto", "-q", "generate", "--config", "all", "--out-dir", str(folder),
                    "--width-divisor", "1" if full_width else "4", "--no-chain"], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    suffix = "" if full_width else "/4"
    nets = {f"VGG-{c}{suffix}": folder / "nets" / f"{c}_deploy.prototxt" for c in ("A", "A-LRN", "B", "C", "E")}
    return {"VGG-16 (D)": ROOT / "nets" / "D_deploy.prototxt", **nets}


def all_nets(folder: Path, full_width: bool) -> dict[str, Path]:
    from bench_nets import write_all
    nets = vgg_nets(folder, full_width)
    nets.update({name: path for name, path in write_all(folder / "arch").items()})
    nets["MobileNet-SSD/4 (split)"] = ROOT / "tests" / "data" / "forks" / "mobilenet_ssd_deploy.prototxt"
    return nets


def random_weights(net, conf_gain: float = 1.0) -> dict[str, list[np.ndarray]]:
    """He-scaled weights, small biases, BatchNorm statistics with positive variances and factor 1; SSD's
    ``mbox_conf`` heads times ``conf_gain`` (larger: more boxes reach DetectionOutput's NMS)."""
    rng = np.random.default_rng(0)
    out = {}
    for name, blobs in net.params.items():
        kind = net.layer_dict[name].spec.param.type
        shapes = [tuple(b.shape) for b in blobs]
        if kind == "BatchNorm":
            out[name] = [rng.normal(0, 0.1, shapes[0]), rng.uniform(0.5, 1.5, shapes[1]), np.ones(shapes[2])]
        elif kind == "Scale":
            out[name] = [rng.normal(1, 0.1, s) if i == 0 else rng.normal(0, 0.1, s) for i, s in enumerate(shapes)]
        else:
            fan_in = max(1, int(np.prod(shapes[0][1:])))
            gain = conf_gain if name.endswith("mbox_conf") else 1.0
            out[name] = [rng.normal(0, gain * math.sqrt(2 / fan_in), shapes[0])] + [rng.normal(0, 0.05, s)
                                                                                      for s in shapes[1:]]
        out[name] = [np.asarray(b, np.float32) for b in out[name]]
    return out


class Case:
    """One net in every engine, ready to run a batch at a thread count."""

    def __init__(self, path: Path, folder: Path, conf_gain: float = 1.0) -> None:
        import cv2
        import torch

        from vggproto.net.interpreter import Net
        from vggproto.net.weights import load_arrays
        from vggproto.weights.caffemodel import write_weights
        self.net = Net(str(path), phase="TEST")
        for p in self.net.parameters():
            p.requires_grad_(False)
        weights = random_weights(self.net, conf_gain)
        load_arrays(self.net, weights, "weights")
        self.path, self.weights, self.fast = path, weights, None
        caffemodel = folder / f"{path.stem}.caffemodel"
        write_weights(str(caffemodel), weights, self.net.net_param)
        self.input = self.net.input_names[0]
        self.output = self.net.output_names[0]
        self.cv = cv2.dnn.readNetFromCaffe(str(path), str(caffemodel))
        self.engines: dict[tuple[str, int], object] = {}
        self.torch = torch

    def engine(self, kind: str, threads: int):
        """vggproto.engine's ``kind`` ("onnxruntime" or "ncnn") at ``threads``, built once."""
        from vggproto.engine import Engine
        if (kind, threads) not in self.engines:
            self.engines[kind, threads] = Engine(self.net, kind, threads=threads)
        return self.engines[kind, threads]

    def fast_net(self):
        """A second Net with the same weights, prepared by vggproto.fast (which changes a net in place)."""
        if self.fast is None:
            from vggproto.fast import optimize_for_inference
            from vggproto.net.interpreter import Net
            from vggproto.net.weights import load_arrays
            net = Net(str(self.path), phase="TEST")
            for p in net.parameters():
                p.requires_grad_(False)
            load_arrays(net, self.weights, "weights")
            self.fast = optimize_for_inference(net)
        return self.fast

    def run(self, engine: str, x: np.ndarray, threads: int) -> np.ndarray:
        import cv2
        if engine in ("torch", "torch+fast"):
            self.torch.set_num_threads(threads)
            net = self.net if engine == "torch" else self.fast_net()
            with self.torch.inference_mode():
                return net.forward(**{self.input: self.torch.from_numpy(x)})[self.output].numpy()
        if engine in ("onnxruntime", "ncnn"):
            return self.engine(engine, threads).forward(**{self.input: x})[self.output]
        cv2.setNumThreads(threads)
        self.cv.setInput(x)
        return self.cv.forward(self.net.layer_names[-1])


def lrn_k(case: Case) -> float | None:
    """The first LRN layer's k where it is not 1 (OpenCV's dnn ignores it), else None."""
    for layer in case.net.net_param.layer:
        if layer.type == "LRN" and layer.lrn_param.k != 1:
            return layer.lrn_param.k
    return None


def boxes(detections: np.ndarray) -> np.ndarray:
    """DetectionOutput's real rows: Caffe writes one row of -1 (label -1) when nothing is kept
    (detection_output_layer.cpp), OpenCV pads with rows of zeros (confidence 0)."""
    rows = detections.reshape(-1, 7)
    return rows[(rows[:, 1] >= 0) & (rows[:, 2] > 0)]


def check(case: Case, x: np.ndarray, engines: list[str]) -> dict[str, str]:
    """Each engine's output against the interpreter's: "" when it agrees, else why it is left out."""
    from vggproto.convert.onnx import difference
    want = case.run("torch", x, 2)
    verdict = {"torch": ""}
    for engine in engines[1:]:
        try:
            have = case.run(engine, x, 2)
        except Exception as exc:  # noqa: BLE001 — any failure leaves the engine out, with its reason
            verdict[engine] = f"fails: {str(exc).strip().splitlines()[0][:80]}"
            continue
        if case.output == "detection_out":   # the same boxes, maybe reordered among ties
            want_rows, have_rows = (np.sort(boxes(a), axis=0) for a in (want, have))
            gap = (0.0 if not want_rows.size and not have_rows.size else difference(want_rows, have_rows)
                   if want_rows.shape == have_rows.shape else float("inf"))
        else:
            gap = difference(want, have.reshape(want.shape)) if have.size == want.size else float("inf")
        verdict[engine] = "" if gap <= TOLERANCE[engine] else f"differs by {gap:.2g}"
        if verdict[engine] and engine == "opencv" and lrn_k(case) is not None:
            verdict[engine] = f"not Caffe's: ignores LRN k={lrn_k(case):g} ({verdict[engine]})"
    return verdict


#: Seconds of rest before each timing: the engine timed before may leave threads spinning for a while
#: (onnxruntime's pool, OpenMP's), which on 2 cores halved the next engine's speed (docs/notes/engine.md).
REST = 0.05


def timed(case: Case, engine: str, x: np.ndarray, threads: int, passes: int) -> float:
    time.sleep(REST)
    start = time.perf_counter()
    for _ in range(passes):
        case.run(engine, x, threads)
    return (time.perf_counter() - start) / passes


def measure(case: Case, engines: list[str], x: np.ndarray, threads: int, rounds: int) -> dict[str, float]:
    """Median seconds per pass of each engine, rounds interleaved (order rotated each round)."""
    passes = {}
    for engine in engines:                        # warm-up; choose passes so one measurement takes >= 0.3 s
        once = timed(case, engine, x, threads, 1)
        passes[engine] = max(1, min(20, int(0.3 / max(once, 1e-4))))
    times: dict[str, list[float]] = {e: [] for e in engines}
    for r in range(rounds):
        for engine in engines[r % len(engines):] + engines[:r % len(engines)]:
            times[engine].append(timed(case, engine, x, threads, passes[engine]))
    return {e: statistics.median(t) for e, t in times.items()}


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", "--batch", default="1,8", help="Comma-separated batch sizes.")
    parser.add_argument("--threads", default="1,2", help="Comma-separated thread counts.")
    parser.add_argument("--nets", default="", help="Comma-separated parts of net names, case and punctuation "
                                                   "ignored (default: all).")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"Comma-separated engines to time, of {', '.join(ENGINES)} (torch always checks).")
    parser.add_argument("--full-width", action="store_true", help="A, A-LRN, B, C, E at full width too.")
    parser.add_argument("--markdown", help="Also write the table here.")
    parser.add_argument("--ssd-conf-gain", type=float, default=3.0,
                        help="Scale SSD's confidence heads (1: no box passes the threshold with these random "
                             "weights; 3: some do; 8: most priors do, NMS-bound).")
    args = parser.parse_args()
    given = args.engines.split(",")
    if set(given) - set(ENGINES):
        parser.error(f"unknown engine(s) {', '.join(sorted(set(given) - set(ENGINES)))}; choose from "
                     f"{', '.join(ENGINES)}")
    args.engines = [e for e in ENGINES if e in given]
    return args


def squash(text: str) -> str:
    """Lower case, letters and digits only: "VGG-16 (D)" -> "vgg16d"."""
    return "".join(c for c in text.lower() if c.isalnum())


def header(engines: list[str]) -> list[str]:
    import cv2
    import ncnn
    import onnxruntime
    import torch
    ours = [e for e in engines if e != "opencv"]
    cells = ([f"{e} ms" for e in engines] + [f"{e} / OpenCV" for e in ours]
             + ["best / OpenCV", "exact best / OpenCV", "load"])
    return [f"date {time.strftime('%Y-%m-%d %H:%M')}, {platform.machine()} {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.platform()}), torch {torch.__version__}, onnxruntime "
            f"{onnxruntime.__version__}, ncnn {ncnn.__version__}, OpenCV {cv2.__version__}, load at start "
            f"{os.getloadavg()[0]:.2f}", "",
            "| net | batch | threads | " + " | ".join(cells) + " |", "|---" * (len(cells) + 3) + "|"]


def summary(ratios: dict[tuple[int, int], dict[str, list[float]]], engines: list[str]) -> list[str]:
    """Geometric means per batch and thread count, per engine and for the best of vggproto's engines."""
    ours = [e for e in engines if e != "opencv"] + ["best", "exact"]
    lines = ["", "| batch | threads | " + " | ".join(f"geomean {e} / OpenCV" for e in ours) + " | nets |",
             "|---" * (len(ours) + 3) + "|"]
    for key in sorted(ratios):
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(f"{geomean(ratios[key].get(e, [])):.2f}x"
                                                          for e in ours) + f" | {len(ratios[key]['best'])} |")
    every = [r for v in ratios.values() for r in v["best"]]
    exact = [r for v in ratios.values() for r in v.get("exact", [])]
    lines.append(f"\nall rows: geomean best / OpenCV {geomean(every):.2f}x, exact best {geomean(exact):.2f}x over "
                 f"{len(every)} rows; load at end "
                 f"{os.getloadavg()[0]:.2f}")
    return lines


def bench_net(name: str, case: Case, args: argparse.Namespace,
              ratios: dict[tuple[int, int], dict[str, list[float]]]) -> list[str]:
    """The rows of one net (every batch and thread count); its ratios are added to ``ratios``."""
    rows = []
    shape = case.net.blob_shapes[case.input][1:]
    for batch in [int(b) for b in args.batches.split(",")]:
        x = np.random.default_rng(batch).standard_normal((batch, *shape)).astype(np.float32)
        verdict = check(case, x, ["torch"] + [e for e in args.engines if e != "torch"])
        engines = [e for e in args.engines if not verdict[e]]
        for threads in [int(t) for t in args.threads.split(",")]:
            t = measure(case, engines, x, threads, args.rounds)
            cv = t.get("opencv")
            rel = {e: cv / t[e] for e in OURS if e in t and cv}
            best = max(rel.values()) if rel else None
            exact = max((r for e, r in rel.items() if e in EXACT), default=None)
            per = ratios.setdefault((batch, threads), {"best": []})
            for engine, ratio in list(rel.items()) + ([("best", best)] if best else []) + (
                    [("exact", exact)] if exact else []):
                per.setdefault(engine, []).append(ratio)
            ours = [e for e in args.engines if e != "opencv"]
            row = (f"| {name} | {batch} | {threads} | "
                   + " | ".join(f"{t[e] * 1e3:.1f}" if e in t else verdict[e] for e in args.engines) + " | "
                   + " | ".join(f"{rel[e]:.2f}x" if e in rel else "-" for e in ours)
                   + f" | {f'{best:.2f}x' if best else '-'} | {f'{exact:.2f}x' if exact else '-'} | "
                   f"{os.getloadavg()[0]:.1f} |")
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        os.environ.setdefault("VGGPROTO_CACHE", str(Path(tmp) / "cache"))
        nets = all_nets(Path(tmp), args.full_width)
        wanted = [squash(n) for n in args.nets.split(",") if n]
        nets = {k: v for k, v in nets.items() if not wanted or any(w in squash(k) for w in wanted)}
        if not nets:
            raise SystemExit(f"no net matches --nets {args.nets}")
        lines = header(args.engines)
        print("\n".join(lines), flush=True)
        ratios: dict[tuple[int, int], dict[str, list[float]]] = {}
        for name, path in nets.items():
            lines += bench_net(name, Case(path, Path(tmp), args.ssd_conf_gain), args, ratios)
        tail = summary(ratios, args.engines)
        lines += tail
        print("\n".join(tail), flush=True)
        if args.markdown:
            Path(args.markdown).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
