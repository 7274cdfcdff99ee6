#!/usr/bin/env python3
"""Inference (and training-step) throughput of the interpreter against hand-written baselines, one process.

For each VGG configuration (A/B/D/E = ``nets/<cfg>_deploy.prototxt`` = torchvision vgg11/13/16/19) the same random
weights (He-scaled) go into: the interpreter (``vggproto.net.interpreter.Net``), the interpreter prepared by
``vggproto.fast.optimize_for_inference`` (on CPU: Winograd F(4x4,3x3), fused ReLU, fast 2x2 pooling), torchvision's
model, and on CPU OpenCV's
Caffe importer (``cv2.dnn.readNetFromCaffe`` on the same prototxt and a caffemodel written by vggproto).  Outputs are
checked to agree first; then every case runs ``--warmup`` untimed calls and ``--rounds`` timed rounds, the cases
interleaved round by round (load on a shared machine hits all of them alike).  The table gives the median time, img/s
and the ratio of throughputs against each baseline (> 1: faster than the baseline).

A "mode" is dtype x memory layout x eager/compiled, applied identically to the interpreter and torchvision:
fp32, tf32 (CUDA matmul/cuDNN TF32), bf16/fp16 (autocast) x NCHW/channels_last x eager/torch.compile.

    tools/bench_forward.py                                   # CPU, VGG-16, batch 1, fp32 eager + OpenCV
    tools/bench_forward.py --configs A,B,D,E --batch 2
    tools/bench_forward.py --device cuda --batch 256 --dtype bf16 --channels-last --compile
    tools/bench_forward.py --device cuda --batch 64 --matrix --train   # every mode, forward and training step
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vggproto.fast import optimize_for_inference  # noqa: E402
from vggproto.net.interpreter import Net  # noqa: E402
from vggproto.weights.torchvision import _torchvision_names, caffe_layer_order  # noqa: E402

NETS = os.path.join(os.path.dirname(__file__), "..", "nets")
TORCHVISION = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Mode:
    dtype: str            # fp32 | tf32 | bf16 | fp16
    channels_last: bool
    compiled: bool

    def __str__(self) -> str:
        return f"{self.dtype}/{'NHWC' if self.channels_last else 'NCHW'}/{'compiled' if self.compiled else 'eager'}"


def build_pair(cfg: str, device: torch.device, seed: int = 0) -> tuple[Net, torch.nn.Module]:
    """The interpreter and torchvision's twin holding the same He-scaled random weights (Caffe's BGR convention on
    both sides: the weights are copied unchanged, so both compute the same function of the same input)."""
    import torchvision
    net = Net(os.path.join(NETS, f"{cfg}_deploy.prototxt"), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for w, b in net.params.values():
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
            b.copy_(torch.randn(b.shape, generator=gen) * 0.01)
    model = getattr(torchvision.models, TORCHVISION[cfg])(weights=None)
    names = _torchvision_names(caffe_layer_order(net.params))
    state = {}
    for layer, (w, b) in net.params.items():
        state[f"{names[layer]}.weight"] = w.detach()
        state[f"{names[layer]}.bias"] = b.detach()
    model.load_state_dict(state)
    return net.to(device), model.eval().to(device)


def opencv_net(net: Net, cfg: str, threads: int):
    """OpenCV's dnn module reading the same deploy prototxt and the interpreter's weights as a caffemodel."""
    import cv2
    cv2.setNumThreads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "w.caffemodel")
        net.save_weights(path)
        cvnet = cv2.dnn.readNetFromCaffe(os.path.join(NETS, f"{cfg}_deploy.prototxt"), path)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    return cvnet


def _logits(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    return fn(x).float()


@contextlib.contextmanager
def mode_context(mode: Mode, device: torch.device):
    """TF32 switches (global in torch) for the duration of one mode's rounds."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    tf32 = mode.dtype == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _cast(mode: Mode, device: torch.device):
    if mode.dtype in AUTOCAST:
        return torch.autocast(device.type, dtype=AUTOCAST[mode.dtype])
    return contextlib.nullcontext()


def inference_cases(cfg: str, mode: Mode, args, device: torch.device, x: torch.Tensor) -> dict[str, Callable]:
    """name -> callable(x) returning the logits, for every model in this mode; the outputs are checked first."""
    plain, tv = build_pair(cfg, device)
    autocast = mode.dtype if mode.dtype in AUTOCAST else None
    plain_run = optimize_for_inference(plain, winograd=False, fuse_relu=False, fast_pool=False,   # the plain Net
                                       channels_last=mode.channels_last, autocast=autocast, compile=mode.compiled)
    if mode.channels_last:
        tv = tv.to(memory_format=torch.channels_last)
    tv_run = torch.compile(tv) if mode.compiled else tv

    def run_tv(inp):
        with torch.no_grad(), _cast(mode, device):
            return tv_run(inp.contiguous(memory_format=torch.channels_last) if mode.channels_last else inp)

    cases = {"vggproto": lambda inp: (plain_run(data=inp), plain.blobs["fc8"])[1], "torchvision": run_tv}
    if args.fast:   # optimize_for_inference's defaults: Winograd (CPU fp32), fused ReLU, fast pooling (CPU)
        fast_net, _ = build_pair(cfg, device)
        fast = optimize_for_inference(fast_net, winograd={"auto": None, "on": True, "off": False}[args.winograd],
                                      channels_last=mode.channels_last, autocast=autocast, compile=mode.compiled)
        cases["vggproto+fast"] = lambda inp: (fast(data=inp), fast_net.blobs["fc8"])[1]
    if device.type == "cpu" and mode == Mode("fp32", False, False) and not args.no_opencv:
        cvnet = opencv_net(plain, cfg, args.threads)

        def run_cv(inp):
            cvnet.setInput(inp.numpy())
            return torch.from_numpy(cvnet.forward("fc8"))
        cases["opencv"] = run_cv
    ref = _logits(cases["torchvision"], x)
    tol = 2e-2 if autocast else (2e-3 if mode.dtype == "tf32" else 1e-4)
    for name, fn in cases.items():
        err = ((_logits(fn, x) - ref).abs().max() / ref.abs().max()).item()
        print(f"  check {cfg} {mode} {name:14s} max|Δlogit|/max|logit| = {err:.1e}")
        if err > tol:
            raise SystemExit(f"{name} disagrees with torchvision ({err:.2e} > {tol})")
    return cases


def training_cases(cfg: str, mode: Mode, args, device: torch.device, x: torch.Tensor) -> dict[str, Callable]:
    """One SGD step (forward, cross-entropy on fixed labels, backward, update) of each model."""
    net, tv = build_pair(cfg, device)
    if mode.channels_last:
        net, tv = net.to(memory_format=torch.channels_last), tv.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (x.shape[0],), generator=torch.Generator().manual_seed(1)).to(device)
    net_fwd = torch.compile(net) if mode.compiled else net
    tv_fwd = torch.compile(tv) if mode.compiled else tv

    def stepper(model, logits_of):
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def step(inp):
            inp = inp.contiguous(memory_format=torch.channels_last) if mode.channels_last else inp
            with _cast(mode, device):
                loss = torch.nn.functional.cross_entropy(logits_of(inp).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.detach()
        return step
    return {"vggproto": stepper(net, lambda inp: (net_fwd(data=inp), net.blobs["fc8"])[1]),
            "torchvision": stepper(tv, tv_fwd)}


def time_cases(cases: dict[str, Callable], x: torch.Tensor, warmup: int, rounds: int,
               device: torch.device, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each case, rounds interleaved across the cases."""
    def once(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start
    for fn in cases.values():
        for _ in range(warmup):
            once(fn)
    samples: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            samples[name].append(once(fn))
    return {name: statistics.median(s) for name, s in samples.items()}


def report(title: str, times: dict[str, float], batch: int) -> None:
    baselines = [b for b in ("torchvision", "opencv") if b in times]
    print(f"\n{title}")
    head = f"  {'case':15s} {'ms/batch':>10s} {'img/s':>10s}" + "".join(f" {'vs ' + b:>15s}" for b in baselines)
    print(head)
    for name, t in times.items():
        ratios = "".join(f" {times[b] / t:14.3f}x" for b in baselines)
        print(f"  {name:15s} {t * 1e3:10.1f} {batch / t:10.1f}{ratios}")


def modes(args) -> list[Mode]:
    if args.matrix:
        dtypes = ["fp32", "tf32", "bf16"] if args.device.startswith("cuda") else ["fp32", "bf16"]
        return [Mode(d, cl, c) for d, cl, c in itertools.product(dtypes, [False, True], [False, True])]
    return [Mode(args.dtype, args.channels_last, args.compile)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", default="D", help="comma-separated VGG configurations among A,B,D,E")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch and OpenCV)")
    parser.add_argument("--dtype", choices=["fp32", "tf32", "bf16", "fp16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile both models")
    parser.add_argument("--matrix", action="store_true", help="every dtype x layout x eager/compiled mode")
    parser.add_argument("--train", action="store_true", help="also time one SGD training step")
    parser.add_argument("--no-fast", dest="fast", action="store_false",
                        help="skip the vggproto+fast case (optimize_for_inference with its defaults)")
    parser.add_argument("--winograd", choices=["auto", "on", "off"], default="auto",
                        help="Winograd in the vggproto+fast case (auto: CPU fp32 without autocast)")
    parser.add_argument("--no-opencv", action="store_true")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu: the process's CPU time (with --threads 1 on a loaded shared machine this is "
                             "the time the work would take alone; waiting for a core is not counted)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                                f", {args.threads} threads, {args.clock} clock, load average {os.getloadavg()}"))
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    x = (torch.randn(args.batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 50).to(device)
    for cfg in args.configs.split(","):
        for mode in modes(args):
            with mode_context(mode, device):
                cases = inference_cases(cfg, mode, args, device, x)
                times = time_cases(cases, x, args.warmup + (2 if mode.compiled else 0), args.rounds, device,
                                   clock)
                report(f"VGG-{cfg} ({TORCHVISION[cfg]}) inference, batch {args.batch}, {mode}", times, args.batch)
                if args.train:
                    times = time_cases(training_cases(cfg, mode, args, device, x), x, args.warmup + 1,
                                       args.rounds, device, clock)
                    report(f"VGG-{cfg} training step (SGD), batch {args.batch}, {mode}", times, args.batch)
    if device.type == "cpu":
        print(f"\nload average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
