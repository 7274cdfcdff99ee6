#!/usr/bin/env python3
"""Prove vggproto's CUDA paths and measure its speed on one GPU, in one run of at most 8 minutes on an H200.

Steps (one or more rows each in the table):
  1. device facts: torch/CUDA/cuDNN/NCCL versions, the device, the measured bf16 matmul rate (8192^3);
  2. correctness: the 67 golden layer nets forward+backward vs Caffe (tests/test_golden_layers.py's tolerances,
     x10 for cuDNN convolutions) and vs vggproto on the CPU; the golden sgd_step and adam solver runs vs Caffe's
     weights; the gpu_decode data layer vs the CPU data path on OpenCV-written JPEGs;
  3. training speed: VGG-16 (bf16 autocast, channels_last) at batch 64 and 128, eager and torch.compile, against
     torchvision vgg16 with the same Caffe SGD (tools/bench_train.py): img/s, ratio, MFU (92.8 GFLOP per 224^2
     image against the measured matmul rate), peak memory; a torch.profiler table of the vggproto step;
  4. inference speed: batch 256 bf16, eager and compiled: the plain Net, optimize_for_inference's GPU options
     (fused ReLU, channels_last, autocast, compile) and torchvision vgg16 with the same weights;
  5. data pipeline: JPEG -> VGG training crop on the GPU (nvJPEG, gpu_decode) vs CPU loader workers;
  6. distributed: 2 gloo ranks on the one device (CUDA tensors) vs 1 process; NCCL with world size 1 and the
     bucketed, overlapped gradient all-reduce.
Every step is timed, runs in its own try/except under a time limit (a failure is recorded as its one-line error
and the run goes on), and results.json / results.md (plus profile.txt) in --out are rewritten after each step, so
a run cut short keeps what it measured.  Exit status 1 when a step FAILED.

On the device machine, from the repository root (the `run` tool; $OUT comes back):

    PYTHONUNBUFFERED=1 python3 tools/gpu_check.py --out $OUT

Packages the device image lacks, or holds outside pyproject.toml's ranges, travel as wheels in .whl/ (git-ignored,
named in `carry`; fetched here, e.g. ``pip download --no-deps --only-binary=:all: --python-version 3.12
--platform manylinux2014_x86_64 -d .whl protobuf==7.36.2``); then prefix the command with
``python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site;``.

Dry run: every step on the CPU with tiny sizes (VGG-16 widths / 16 at 32x32, batches 2 and 4, 2 iterations;
torch.compile with the "eager" backend; gloo also through launch(cpu:2); NCCL skipped), run by
tests/test_gpu_check.py (``--dry-run --device cuda`` runs the same tiny sizes on a GPU: a quick smoke test there):

    python tools/gpu_check.py --dry-run --out /tmp/gpu-check
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import bench_data  # noqa: E402 (tools/ is on sys.path as the script's folder)
import bench_forward  # noqa: E402
import bench_train  # noqa: E402
import gpu_steps as S  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from vggproto.data.options import DataOptions  # noqa: E402
from vggproto.fast import optimize_for_inference  # noqa: E402
from vggproto.net.interpreter import Net  # noqa: E402
from vggproto.vgg.generate import build_net  # noqa: E402
from vggproto.weights.torchvision import _torchvision_names, caffe_layer_order  # noqa: E402

INFER_TOL = 2e-2   # max |logit - torchvision's| / max |logit| under bf16 autocast (tools/bench_forward.py)


# ------------------------------------------------------------------------------------------- models

def scaled(net, div: int):
    """``net`` with every Convolution / InnerProduct width divided by ``div`` (1: unchanged)."""
    for layer in net.layer:
        if layer.type in ("Convolution", "InnerProduct"):
            param = layer.convolution_param if layer.type == "Convolution" else layer.inner_product_param
            param.num_output = max(1, param.num_output // div)
    return net


def torchvision_vgg16(div: int, size: int) -> nn.Module:
    """torchvision's vgg16; with ``div`` > 1 or another input size its twin with the widths divided and the
    classifier sized for ``size`` (torchvision's VGG forward: features, avgpool, flatten, classifier)."""
    import torchvision
    if div == 1 and size == 224:
        return torchvision.models.vgg16(weights=None)
    from torchvision.models.vgg import VGG, cfgs, make_layers
    cfg = [v if v == "M" else v // div for v in cfgs["D"]]
    with torch.device("meta"):   # only the shell: its 25088x4096 classifier is replaced below
        model = VGG(nn.Identity(), init_weights=False)
    side, hidden = size // 32, 4096 // div
    model.features, model.avgpool = make_layers(cfg), nn.AdaptiveAvgPool2d(side)
    model.classifier = nn.Sequential(nn.Linear(cfg[-2] * side * side, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(),
                                     nn.Linear(hidden, 1000 // div))
    return model


def vggproto_trainer(ctx: S.Context, batch: int) -> bench_train.Trainer:
    """bench_train's vggproto side (its train net, init, channels_last, Caffe SGD step) at ``ctx.sizes``."""
    s = ctx.sizes
    net = Net(scaled(bench_train.vgg16_train_net(batch, s.size), s.width_div), phase="TRAIN", seed=0)
    with torch.no_grad():
        for lp in net.learnable_params:
            lp.param.normal_(0, 0.01 if lp.param.dim() > 1 else 0.0)
    net.to(ctx.device).to(memory_format=torch.channels_last)

    def forward(x, y):
        net.forward(data=x, label=y)
        return net.loss
    lps = net.learnable_params
    return bench_train.Trainer("vggproto", forward, [lp.param for lp in lps],
                               ([lp.lr_mult for lp in lps], [lp.decay_mult for lp in lps]), ctx.device, True)


def torchvision_trainer(ctx: S.Context) -> bench_train.Trainer:
    model = torchvision_vgg16(ctx.sizes.width_div, ctx.sizes.size).to(ctx.device)
    model.to(memory_format=torch.channels_last).train()

    def forward(x, y):
        return F.cross_entropy(model(x).float(), y.long())
    params = list(model.parameters())
    return bench_train.Trainer("torchvision", forward, params, ([1.0] * len(params), [1.0] * len(params)),
                               ctx.device, True)


def trainers(ctx: S.Context, batch: int) -> tuple:
    """(vggproto, torchvision, x, y) for ``batch``, built once for the rows of that batch (the last batch's are
    dropped first, to free their memory)."""
    if ("train", batch) not in ctx.cache:
        ctx.cache.clear()
        torch._dynamo.reset()
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        pair = [vggproto_trainer(ctx, batch), torchvision_trainer(ctx)]
        for t in pair:
            t.eager = t.forward
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 3, ctx.sizes.size, ctx.sizes.size, generator=gen).to(ctx.device)
        y = torch.randint(0, 1000 // ctx.sizes.width_div, (batch,), generator=gen).float().to(ctx.device)
        ctx.cache[("train", batch)] = (*pair, x.contiguous(memory_format=torch.channels_last), y)
    return ctx.cache[("train", batch)]


# ------------------------------------------------------------------------------------------- 3-5. speed

def graph_breaks() -> int:
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def train_row(ctx: S.Context, index: int, compiled: bool) -> dict:
    """img/s, ratio to torchvision, MFU and peak memory (both models resident) of one training configuration."""
    s, batch = ctx.sizes, ctx.sizes.train_batches[index]
    vgg, tv, x, y = trainers(ctx, batch)
    step_flop = bench_train.STEP_GFLOP_224 * 1e9 * (s.size / 224) ** 2 / s.width_div ** 2
    peak = ctx.peak_tflops or bench_train.PEAK_TFLOPS
    figures: dict = {"batch": batch}
    for t in (vgg, tv):
        t.forward = torch.compile(t.eager, dynamic=False) if compiled else t.eager
        if ctx.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(ctx.device)
        breaks = graph_breaks()
        for _ in range(s.warmup):
            t.step(x, y)
        if compiled:   # a graph break splits the compiled step; each one costs a round trip through Python
            figures[f"{t.name}_graph_breaks"] = graph_breaks() - breaks
        per_step = statistics.median(bench_train.time_steps(t, x, y, s.iters, ctx.device) for _ in range(s.rounds))
        figures[f"{t.name}_img_s"] = batch / per_step
        figures[f"{t.name}_MFU_%"] = 100 * batch / per_step * step_flop / (peak * 1e12)
        if ctx.device.type == "cuda":
            figures[f"{t.name}_peak_GiB"] = peak_gib(ctx.device)
    figures["ratio_vs_torchvision"] = figures["vggproto_img_s"] / figures["torchvision_img_s"]
    return figures


def profile_step(ctx: S.Context) -> dict:
    """torch.profiler over 3 eager vggproto steps at the first batch: the top 15 ops by (self) device time."""
    vgg, _, x, y = trainers(ctx, ctx.sizes.train_batches[0])
    vgg.forward = vgg.eager
    vgg.step(x, y)
    cuda = ctx.device.type == "cuda"
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(3):
            vgg.step(x, y)
        S.sync(ctx.device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=key, row_limit=15)
    (ctx.out / "profile.txt").write_text(table)
    ctx.notes["profile"] = (f"torch.profiler, 3 vggproto training steps, batch {x.shape[0]}: top 15 ops by "
                            f"{'CUDA' if cuda else 'CPU'} self time", table)
    total = sum(getattr(e, key) for e in averages) or 1.0
    top = max(averages, key=lambda e: getattr(e, key))
    return {"steps": 3, "top_op": top.key, "top_op_share_%": 100 * getattr(top, key) / total}


def deploy_pair(ctx: S.Context, batch: int) -> tuple[Net, Net, nn.Module]:
    """Two VGG-16 deploy Nets sharing He-scaled random weights (the plain one and the one to optimise) and
    torchvision's twin holding the same weights (Caffe's BGR convention on both sides), on the device."""
    s = ctx.sizes
    param = scaled(build_net("D", "deploy"), s.width_div)
    dims = param.layer[0].input_param.shape[0].dim
    del dims[:]
    dims.extend([batch, 3, s.size, s.size])
    net, fast = Net(param, seed=0), Net(param, seed=0)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for w, b in net.params.values():
            w.copy_(torch.randn(w.shape, generator=gen) * (2.0 / w[0].numel()) ** 0.5)
            b.copy_(torch.randn(b.shape, generator=gen) * 0.01)
    tv = torchvision_vgg16(s.width_div, s.size)
    names = _torchvision_names(caffe_layer_order(net.params))
    tv.load_state_dict({f"{names[layer]}.{kind}": t.detach() for layer, blobs in net.params.items()
                        for kind, t in zip(("weight", "bias"), blobs)})
    net.to(ctx.device)
    fast.to(ctx.device).share_weights_from(net)
    return net, fast, tv.eval().to(ctx.device).to(memory_format=torch.channels_last)


def infer_row(ctx: S.Context, compiled: bool) -> dict:
    """Inference img/s (bf16 autocast, channels_last) of the plain Net, optimize_for_inference's defaults for
    this device, and torchvision, after checking that their logits agree."""
    s, dev = ctx.sizes, ctx.device
    net, fast_net, tv = deploy_pair(ctx, s.infer_batch)
    options = dict(channels_last=True, autocast="bf16", compile=compiled)
    plain = optimize_for_inference(net, winograd=False, fuse_relu=False, fast_pool=False, **options)
    fast = optimize_for_inference(fast_net, **options)   # on CUDA: fused ReLU (Winograd and fast pooling are CPU's)
    tv_run = torch.compile(tv, dynamic=False) if compiled else tv

    def run_tv(inp):
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16):
            return tv_run(inp.contiguous(memory_format=torch.channels_last))
    cases = {"vggproto": lambda inp: (plain(data=inp), net.blobs["fc8"])[1],
             "vggproto+fast": lambda inp: (fast(data=inp), fast_net.blobs["fc8"])[1], "torchvision": run_tv}
    x = (torch.randn(s.infer_batch, 3, s.size, s.size, generator=torch.Generator().manual_seed(0)) * 50).to(dev)
    breaks, ref = graph_breaks(), run_tv(x).float()
    err = max(float((cases[n](x).float() - ref).abs().max() / ref.abs().max()) for n in ("vggproto", "vggproto+fast"))
    times = bench_forward.time_cases(cases, x, s.warmup, s.rounds * s.iters, dev)
    figures: dict = {"batch": s.infer_batch, "max_rel_logit_err": err, "graph_breaks": graph_breaks() - breaks}
    for name, seconds in times.items():
        figures[f"{name}_img_s"] = s.infer_batch / seconds
    for name in ("vggproto", "vggproto+fast"):
        figures[f"{name}_vs_torchvision"] = times["torchvision"] / times[name]
    if err > INFER_TOL:
        raise S.StepFailed(f"logits differ from torchvision's by {err:.3g} (> {INFER_TOL})", figures)
    return figures


def data_pipeline(ctx: S.Context) -> dict:
    """JPEG -> 224 VGG training crop (scale jitter 256-512, flip, colour shift, mean): the gpu_decode data layer on
    the device vs bench_data's CPU loaders (vggproto BatchFeed and torchvision DataLoader) with N workers."""
    s = ctx.sizes
    with tempfile.TemporaryDirectory() as folder:
        paths = bench_data.make_jpegs(folder, s.images)
        ours, theirs = bench_data.with_workers(folder, paths, s.loader_batches, s.workers)
        layer = S.image_layer(folder, 32, 224, (256, 512), DataOptions(seed=1, gpu_decode=True, device=str(ctx.device)))
        layer()
        seconds = S.seconds_per_call(layer, s.loader_batches, ctx.device)
    return {"device_img_s": 32 / seconds, "cpu_workers": s.workers, "cpu_vggproto_img_s": ours,
            "cpu_torchvision_img_s": theirs, "device_vs_cpu_vggproto": 32 / seconds / ours}


# ------------------------------------------------------------------------------------------- the run

@dataclass(frozen=True)
class Step:
    key: str                         # stable id (results.json, the test)
    title: str                       # table row; {b0} {b1} {ib}: the batch sizes of this run
    fn: Callable[[S.Context], dict]
    limit_s: float                   # time limit of this step
    precise: bool                    # TF32 and cuDNN autotuning off (correctness) / on (speed, as bench_train)


# Ordered so that a run cut short by its budget loses the least: the cheap pass/fail checks first, then every
# eager measurement, the compiled ones (minutes of inductor work) last; b{b1} before b{b0} saves a rebuild.
STEPS = [
    Step("facts", "1 device facts, bf16 matmul", S.device_facts, 60, True),
    Step("golden_layers", "2 golden layer nets fwd+bwd", S.golden_layers, 150, True),
    Step("solver_sgd_step", "2 golden solver sgd_step", partial(S.golden_solver, variant="sgd_step"), 60, True),
    Step("solver_adam", "2 golden solver adam", partial(S.golden_solver, variant="adam"), 60, True),
    Step("data_layer", "2 data layer gpu_decode vs CPU", S.data_layer_path, 60, True),
    Step("dist_gloo", "6 gloo, 2 ranks on one device", S.dist_gloo, 120, True),
    Step("dist_nccl", "6 NCCL world 1, bucketed", S.dist_nccl, 60, True),
    Step("data_pipeline", "5 JPEG to crop: device vs CPU", data_pipeline, 90, False),
    Step("train_1_eager", "3 train b{b0} eager", partial(train_row, index=0, compiled=False), 90, False),
    Step("profile", "3 profile vggproto step b{b0}", profile_step, 60, False),
    Step("train_2_eager", "3 train b{b1} eager", partial(train_row, index=1, compiled=False), 90, False),
    Step("infer_eager", "4 inference b{ib} eager", partial(infer_row, compiled=False), 90, False),
    Step("train_2_compiled", "3 train b{b1} compiled", partial(train_row, index=1, compiled=True), 200, False),
    Step("train_1_compiled", "3 train b{b0} compiled", partial(train_row, index=0, compiled=True), 200, False),
    Step("infer_compiled", "4 inference b{ib} compiled", partial(infer_row, compiled=True), 200, False),
]


class StepTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float):
    """Raise StepTimeout in the step when it runs past ``seconds`` (SIGALRM; checked between Python bytecodes)."""
    def expire(signum, frame):
        raise StepTimeout(f"over its time limit of {seconds:.0f} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_step(step: Step, ctx: S.Context, left_s: float) -> dict:
    """One row: status ok / FAILED / skipped, seconds, key figures, the one-line error."""
    s = ctx.sizes
    row = {"key": step.key, "step": step.title.format(b0=s.train_batches[0], b1=s.train_batches[1], ib=s.infer_batch),
           "status": "ok", "seconds": 0.0, "figures": {}, "error": ""}
    if left_s < 5:
        row.update(status="skipped", error="the run's time budget is spent")
        return row
    torch.backends.cudnn.benchmark = not step.precise
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = not step.precise
    start = time.perf_counter()
    try:
        with time_limit(min(step.limit_s, left_s)):
            row["figures"] = step.fn(ctx)
    except S.Skip as exc:
        row.update(status="skipped", error=str(exc))
    except Exception as exc:   # every failure is recorded and the run goes on
        row.update(status="FAILED", error=S.one_line(exc), figures=getattr(exc, "figures", {}))
    row["seconds"] = time.perf_counter() - start
    return row


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def markdown(results: dict, notes: dict) -> str:
    lines = [f"# gpu_check on {results['device_name']}{' (dry run)' if results['dry_run'] else ''}", "",
             f"{results['started']}, {results['total_s']:.1f} s in all.", "",
             "| step | status | seconds | key figures |", "|---|---|---|---|"]
    for row in results["steps"]:
        figures = ", ".join(f"{k}={_cell(v)}" for k, v in row["figures"].items())
        text = "; ".join(t for t in (_cell(row["error"]) if row["error"] else "", figures) if t)
        lines.append(f"| {row['step']} | {row['status']} | {row['seconds']:.1f} | {text} |")
    for title, body in notes.values():
        lines += ["", f"## {title}", "", "```text", body.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def write(ctx: S.Context, results: dict) -> None:
    (ctx.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (ctx.out / "results.md").write_text(markdown(results, ctx.notes))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for results.json, results.md and profile.txt")
    ap.add_argument("--dry-run", action="store_true", help="every step on the CPU with tiny sizes")
    ap.add_argument("--device", help="default: cuda when available (cpu in the dry run)")
    ap.add_argument("--budget-s", type=float, default=450.0, help="steps not started by then are skipped")
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"))
    if not args.dry_run and device.type != "cuda":
        ap.error("the full-size run needs CUDA; use --dry-run on a CPU")
    ctx = S.Context(device, S.DRY_SIZES if args.dry_run else S.DEVICE_SIZES, Path(args.out), args.dry_run)
    ctx.out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    results = {"device": str(device), "device_name": name, "dry_run": args.dry_run, "total_s": 0.0,
               "started": datetime.datetime.now().isoformat(timespec="seconds"), "steps": []}
    start = time.perf_counter()
    with S.compile_backend("eager" if args.dry_run else "inductor"):
        for step in STEPS:
            row = run_step(step, ctx, args.budget_s - (time.perf_counter() - start))
            results["steps"].append(row)
            results["total_s"] = time.perf_counter() - start
            write(ctx, results)
            print(f"[{results['total_s']:6.1f} s] {row['step']}: {row['status']} {row['error']}", flush=True)
    print(markdown(results, ctx.notes))
    finite = all(math.isfinite(v) for r in results["steps"] for v in r["figures"].values() if isinstance(v, float))
    return 0 if finite and all(r["status"] != "FAILED" for r in results["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
