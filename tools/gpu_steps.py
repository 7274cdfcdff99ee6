"""The shared context and the correctness steps of ``tools/gpu_check.py`` (1, 2 and 6; the speed steps 3-5 live
there): one function per row of its table, each ``step(ctx) -> key figures``.

The dry run and the device run execute the same functions; only :class:`Sizes` (tiny on the CPU: VGG-16 widths
divided by 16 at 32x32) and torch.compile's backend differ.  A step raises :class:`Skip` to be reported "skipped"
and :class:`StepFailed` for a measured failure that still has figures to show; any other exception is a failure.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from vggproto.caffe.proto import caffe_pb2
from vggproto.caffe.prototxt import read_net
from vggproto.data.options import DataOptions
from vggproto.layers.registry import LayerSpec, build_layer, supported_types
from vggproto.net.devices import parse_devices
from vggproto.net.interpreter import Net
from vggproto.train.distributed import ProcessGroupComm, _free_port, launch
from vggproto.train.solver import Solver, TrainOptions
from vggproto.vgg.configs import MEAN_BGR
from vggproto.weights.caffemodel import read_weights

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "data" / "golden"
FWD_TOL, BWD_TOL = 1e-5, 1e-4   # tests/test_golden_layers.py: relative to max(1, max|ref|); "mask" blobs exact
# Relaxed on CUDA for nets with convolutions only: cuDNN picks implicit-GEMM/Winograd/FFT algorithms whose float32
# sums run in another order than the CPU's im2col GEMM (TF32 is off in the correctness steps).
CUDNN_RELAX, CONV_TYPES = 10.0, {"Convolution", "Deconvolution"}
# nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo (OpenCV) by a few levels; on the CPU the two
# libjpeg-turbo decodes and the bilinear rounding differ by at most one level each.
JPEG_TOL = {"cuda": (8.0, 1.0), "cpu": (2.0, 0.5)}   # (max, mean) |gpu_decode - CPU path|
DIST_SOLVER = ('net: "train_val.prototxt"\nmax_iter: 1\nsnapshot_prefix: "{prefix}"\nrandom_seed: 1\nbase_lr: 0.05\n'
               'momentum: 0.9\nweight_decay: 0.0005\nlr_policy: "fixed"\n')


class Skip(Exception):
    """The step does not apply here (its message says why)."""


class StepFailed(Exception):
    """A check failed; ``figures`` are what was measured before it did."""

    def __init__(self, message: str, figures: dict | None = None):
        super().__init__(message)
        self.figures = figures or {}


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is."""

    train_batches: tuple[int, int]   # the two training rows
    size: int                        # input side
    width_div: int                   # VGG-16's conv/fc widths divided by this
    infer_batch: int
    warmup: int                      # untimed calls first (compiling happens there)
    iters: int                       # timed calls per round
    rounds: int                      # timed rounds (median)
    matmul: int                      # side of the bf16 matmul that measures the peak
    images: int                      # JPEGs for the data pipeline
    loader_batches: int              # batches of 32 per loader measurement
    workers: int                     # CPU loader worker processes


DEVICE_SIZES = Sizes((64, 128), 224, 1, 256, 3, 10, 3, 8192, 64, 12, min(8, os.cpu_count() or 1))
DRY_SIZES = Sizes((2, 4), 32, 16, 2, 1, 2, 1, 256, 8, 1, 1)


@dataclass
class Context:
    """What the steps share: where they run, how big, and what earlier steps left (peak, cached models)."""

    device: torch.device
    sizes: Sizes
    out: Path
    dry: bool
    peak_tflops: float = 0.0                    # measured by device_facts; bench_train.PEAK_TFLOPS until then
    cache: dict = field(default_factory=dict)   # the training rows' models, shared by the rows of one batch
    notes: dict = field(default_factory=dict)   # text for results.md (the profiler table)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_call(fn, iters: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


@contextlib.contextmanager
def compile_backend(backend: str):
    """Every ``torch.compile`` in the block (also inside vggproto.fast) uses ``backend``: the dry run captures the
    graphs with dynamo but skips inductor's C++ code generation, which takes minutes on two CPU cores."""
    real = torch.compile
    if backend != "inductor":
        torch.compile = lambda model=None, **kw: real(model, **{**kw, "backend": backend, "mode": None})
    try:
        yield
    finally:
        torch.compile = real


# ------------------------------------------------------------------------------------------- 1. device facts

def _nccl_version() -> str:
    try:
        version = torch.cuda.nccl.version()
    except Exception:   # CPU-only builds
        return "-"
    return ".".join(map(str, version)) if isinstance(version, tuple) else str(version)


def device_facts(ctx: Context) -> dict:
    """Versions, the device, and the measured bf16 matmul rate (the peak MFU is taken against)."""
    dev, n = ctx.device, ctx.sizes.matmul
    figures = {"torch": torch.__version__, "cuda": torch.version.cuda or "-",
               "cudnn": torch.backends.cudnn.version() or 0, "nccl": _nccl_version()}
    if dev.type == "cuda":
        prop = torch.cuda.get_device_properties(dev)
        figures.update(name=prop.name, memory_GiB=prop.total_memory / 2**30, capability=f"{prop.major}.{prop.minor}",
                       SMs=prop.multi_processor_count)
    else:
        figures.update(name=platform.processor() or platform.machine(), cpus=os.cpu_count() or 0)
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(ctx.sizes.warmup):
        a @ b
    seconds = seconds_per_call(lambda: a @ b, 2 * ctx.sizes.iters, dev)
    ctx.peak_tflops = 2 * n**3 / seconds / 1e12
    return {**figures, "matmul_n": n, "bf16_TFLOPs": ctx.peak_tflops}


# ------------------------------------------------------------------------------------------- 2. correctness

def golden_outputs(case: str, device: torch.device) -> tuple[dict, dict, set]:
    """One golden layer case (tests/test_golden_layers.py's protocol) on ``device``: forward from ``blob:`` inputs,
    backward from ``topdiff:`` seeds; returns ({npz key: our value}, the npz, the layer types)."""
    folder = GOLDEN / "layers"
    proto = str(folder / f"{case}.prototxt")
    types = {layer.type for layer in read_net(proto).layer}
    if types - set(supported_types()):
        raise Skip(f"{case}: {', '.join(sorted(types - set(supported_types())))} not implemented")
    ref = dict(np.load(folder / f"{case}.npz"))
    net = Net(proto, str(folder / f"{case}.caffemodel"), phase="TRAIN" if case == "batchnorm_train" else "TEST")
    net.to(device).track_diffs = True
    net(**{n: torch.tensor(ref[f"blob:{n}"], device=device, requires_grad=True) for n in net.input_names})
    got = {}
    for key in ref:
        kind, _, name = key.partition(":")
        if kind == "blob":
            got[key] = net.blobs[name].detach().cpu().numpy()
        elif kind == "param_after":
            layer, index = name.split(":")
            got[key] = net.params[layer][int(index)].detach().cpu().numpy()
    seeds = {key.split(":", 1)[1]: ref[key] for key in ref if key.startswith("topdiff:")}
    if seeds:   # loss tops are seeded with their loss weight by Net.backward itself
        net.backward(**{name: value for name, value in seeds.items() if name not in net.loss_weights})
    for key in ref:
        kind, _, name = key.partition(":")
        if kind == "diff":
            got[key] = net.diff(name).cpu().numpy()
        elif kind == "pdiff":
            layer, index = name.split(":")
            param = net.params[layer][int(index)]
            got[key] = param.grad.cpu().numpy() if param.grad is not None else np.zeros(tuple(param.shape), np.float32)
    return got, ref, types


def _relative(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        raise StepFailed(f"shape {got.shape} vs {ref.shape}")
    return float(np.abs(got.astype(np.float64) - ref).max(initial=0.0)) / max(1.0, float(np.abs(ref).max(initial=0)))


def golden_ratio(got: dict, ref: dict, relax: float) -> float:
    """Worst error / tolerance over every compared output (<= 1 passes; an inexact mask counts as inf)."""
    worst = 0.0
    for key, value in got.items():
        kind, _, name = key.partition(":")
        if kind == "blob" and name == "mask":
            worst = max(worst, 0.0 if np.array_equal(value, ref[key]) else float("inf"))
            continue
        tol = (FWD_TOL if kind in ("blob", "param_after") else BWD_TOL) * relax
        worst = max(worst, _relative(value, ref[key]) / tol)
    return worst


def golden_layers(ctx: Context) -> dict:
    """Every recorded single-layer case on the device against Caffe, plus the device's distance to vggproto's CPU."""
    cases = sorted(p.stem for p in (GOLDEN / "layers").glob("*.prototxt"))
    ratios, bad, skipped, vs_cpu = {}, [], 0, 0.0
    for case in cases:
        try:
            got, ref, types = golden_outputs(case, ctx.device)
            relax = CUDNN_RELAX if ctx.device.type == "cuda" and types & CONV_TYPES else 1.0
            ratios[case] = golden_ratio(got, ref, relax)
            if ctx.device.type != "cpu":
                cpu = golden_outputs(case, torch.device("cpu"))[0]
                vs_cpu = max([vs_cpu] + [_relative(got[k], cpu[k]) for k in got])
        except Skip:
            skipped += 1
            continue
        except Exception as exc:
            bad.append(f"{case} ({one_line(exc)})")
            continue
        if ratios[case] > 1:
            bad.append(f"{case} (err/tol {ratios[case]:.3g})")
    worst = sorted(ratios, key=ratios.get, reverse=True)[:3]
    figures = {"cases": len(cases), "passed": len(cases) - len(bad) - skipped, "skipped": skipped,
               "worst_err/tol": max(ratios.values(), default=0.0), "worst_cases": " ".join(worst)}
    if ctx.device.type != "cpu":
        figures["max_rel_vs_cpu"] = vs_cpu
    if bad:
        raise StepFailed(f"{len(bad)} of {len(cases)} cases failed: " + "; ".join(bad[:4]), figures)
    return figures


@contextlib.contextmanager
def solver_folder():
    """A writable copy of tests/data/golden/solver as the working directory (Caffe ran with it as its CWD)."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        folder = Path(tmp) / "solver"
        shutil.copytree(GOLDEN / "solver", folder)
        for path in folder.iterdir():
            path.chmod(0o644)
        os.chdir(folder)
        try:
            yield folder
        finally:
            os.chdir(old)


def weights_diff(ours: str, ref: str, rtol: float = 0.0, atol: float = 1.0) -> float:
    """max |a - b| / (atol + rtol |b|) over every blob (<= 1: np.testing.assert_allclose(rtol, atol) passes)."""
    a, b = read_weights(ours), read_weights(ref)
    if list(a) != list(b):
        raise StepFailed(f"{ours} has layers {list(a)}, {ref} {list(b)}")
    return max(float(np.max(np.abs(x - y) / (atol + rtol * np.abs(y)), initial=0.0))
               for layer in b for x, y in zip(a[layer], b[layer]))


def golden_solver(ctx: Context, variant: str) -> dict:
    """tests/test_solver_golden.py's run of ``variant`` (20 iterations) on the device vs Caffe's final weights."""
    with solver_folder():
        solver = Solver(f"{variant}_solver.prototxt", TrainOptions(weights=("init.caffemodel",), device=str(ctx.device),
                                                                   progress=False, csv=False))
        solver.param.snapshot_prefix = "ours"
        solver.solve()
        ratio = weights_diff("ours_iter_20.caffemodel", f"{variant}_iter_20.caffemodel", rtol=1e-4, atol=1e-5)
    figures = {"iters": solver.iter, "err/tol": ratio}
    if ratio > 1:
        raise StepFailed(f"weights after 20 iterations off by {ratio:.3g} x tolerance (rtol 1e-4, atol 1e-5)", figures)
    return figures


def write_jpegs(folder: str, count: int) -> None:
    """Smooth random JPEGs (OpenCV, quality 95) of slightly different sizes and their list.txt."""
    import cv2
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        img = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (120 + 8 * i, 90 + 6 * i),
                         interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(os.path.join(folder, f"s{i}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        lines.append(f"s{i}.jpg {i}\n")
    Path(folder, "list.txt").write_text("".join(lines))


def image_layer(folder: str, batch: int, crop: int, scales: tuple[int, int], options: DataOptions):
    """An ImageData TRAIN layer over ``folder``/list.txt with the VGG augmentation (scale jitter, colour shift)."""
    text = (f'layer {{ name: "d" type: "ImageData" top: "data" top: "label" image_data_param {{ source: '
            f'"{folder}/list.txt" root_folder: "{folder}/" batch_size: {batch} shuffle: true }} transform_param {{ '
            f'crop_size: {crop} mirror: true ' + " ".join(f"mean_value: {m}" for m in MEAN_BGR) +
            f' vgg_augmentation_param {{ scale_min: {scales[0]} scale_max: {scales[1]} color_shift_std: 0.1 }} }} }}')
    return build_layer(LayerSpec(read_net(text).layer[0], [], caffe_pb2.TRAIN, options=options))


def data_layer_path(ctx: Context) -> dict:
    """DataOptions(gpu_decode=True, device=...) batches vs the CPU path's: same records, draws, labels."""
    from vggproto.data.gpu import DeviceBatchMaker
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(folder, 6)
        cpu = image_layer(folder, 6, 64, (72, 96), DataOptions(seed=3))
        dev = image_layer(folder, 6, 64, (72, 96), DataOptions(seed=3, gpu_decode=True, device=str(ctx.device)))
        if not isinstance(dev.feed.maker, DeviceBatchMaker):
            raise StepFailed("gpu_decode=True did not take the device path")
        diffs = []
        for _ in range(2):
            (a, la), (b, lb) = cpu(), dev()
            if b.device.type != ctx.device.type or not torch.equal(la, lb.cpu()):
                raise StepFailed(f"batch on {b.device} with labels {lb.tolist()} (CPU path: {la.tolist()})")
            diffs.append((a - b.cpu()).abs())
    diff = torch.stack(diffs)
    figures = {"batches": len(diffs), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    tol_max, tol_mean = JPEG_TOL[ctx.device.type]
    if figures["max_abs_diff"] > tol_max or figures["mean_abs_diff"] > tol_mean:
        raise StepFailed(f"pixels differ beyond max {tol_max} / mean {tol_mean}", figures)
    return figures


# ------------------------------------------------------------------------------------------- 6. distributed

def _gloo_worker(rank: int, world: int, port: int, folder: str, solver: str, options: TrainOptions) -> None:
    """One rank of a gloo job whose ranks share ``options.device`` (NCCL refuses two ranks on one GPU)."""
    import torch.distributed as dist
    os.chdir(folder)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        comm = ProcessGroupComm(torch.device(options.device))
        Solver(solver, replace(options, rank=rank, world_size=world), comm=comm).solve()
    finally:
        dist.destroy_process_group()


def spawn_gloo(solver: str, options: TrainOptions, world: int) -> None:
    """``world`` spawned processes training ``solver`` (in the working directory) over gloo on one device."""
    import torch.multiprocessing as mp
    mp.start_processes(_gloo_worker, args=(world, _free_port(), os.getcwd(), solver, options), nprocs=world,
                       join=True, start_method="spawn")


def _one_step_reference(options: TrainOptions) -> None:
    """one.prototxt / two.prototxt (one SGD step on the golden tiny net) and the single-process run of one."""
    for prefix in ("one", "two"):
        Path(f"{prefix}.prototxt").write_text(DIST_SOLVER.format(prefix=prefix))
    Solver("one.prototxt", options).solve()


def dist_gloo(ctx: Context) -> dict:
    """Two gloo ranks on the one device (CUDA tensors there; the dry run: ``cpu:2`` through the launcher and the
    spawn path on CPU tensors) make the same step as one process on the same global batch (8 = 2 x 4 rows)."""
    options = TrainOptions(weights=("init.caffemodel",), device=str(ctx.device), progress=False, csv=False)
    figures: dict = {"world": 2}
    with solver_folder():
        _one_step_reference(options)
        runs = {"spawn": lambda: spawn_gloo("two.prototxt", options, 2)}
        if ctx.device.type == "cpu":
            runs["launch_cpu2"] = lambda: launch("two.prototxt", options, gpus=parse_devices("cpu:2"))
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            figures[f"{name}_s"] = time.perf_counter() - start
            figures[f"{name}_max_abs_diff"] = weights_diff("one_iter_1.caffemodel", "two_iter_1.caffemodel")
            os.remove("two_iter_1.caffemodel")
        figures["step_size"] = weights_diff("one_iter_1.caffemodel", "init.caffemodel")
    tol = 1e-6 if ctx.device.type == "cpu" else 1e-5   # on CUDA, cuDNN may pick other algorithms for 4 rows than 8
    worst = max(v for k, v in figures.items() if k.endswith("max_abs_diff"))
    if worst > tol or figures["step_size"] == 0:
        raise StepFailed(f"2-rank step differs from 1 process by {worst:.3g} (tolerance {tol})", figures)
    return figures


def dist_nccl(ctx: Context) -> dict:
    """A real NCCL process group of world size 1: an all-reduce, then a Solver step through ProcessGroupComm with
    tiny buckets (GradSync's overlapped all-reduces during backward) equal to the plain 1-process step."""
    if ctx.device.type != "cuda":
        raise Skip("NCCL needs CUDA")
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    torch.cuda.set_device(ctx.device.index or 0)
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        buf = torch.ones(64 << 20, device=ctx.device)   # 256 MiB of float32
        seconds = seconds_per_call(lambda: dist.all_reduce(buf), 5, ctx.device)
        if not bool((buf == 1).all()):
            raise StepFailed("all_reduce over one rank changed the values")
        options = TrainOptions(weights=("init.caffemodel",), device=str(ctx.device), progress=False, csv=False)
        with solver_folder():
            _one_step_reference(options)
            comm = ProcessGroupComm(ctx.device, bucket_mb=0.0005)
            Solver("two.prototxt", options, comm=comm).solve()
            diff = weights_diff("one_iter_1.caffemodel", "two_iter_1.caffemodel")
    finally:
        dist.destroy_process_group()
    figures = {"nccl": _nccl_version(), "allreduce_256MiB_ms": seconds * 1e3, "buckets": len(comm.sync.buckets),
               "max_abs_diff": diff}
    if diff > 1e-6 or figures["buckets"] < 2:
        raise StepFailed("the bucketed NCCL step differs from the plain step (or used one bucket)", figures)
    return figures
