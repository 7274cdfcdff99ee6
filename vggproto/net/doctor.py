"""What ``vggproto doctor`` and ``device_query`` report: library versions, CUDA devices, NCCL and graphviz.

A bug report or a slow run usually comes down to the environment (a CPU-only torch, a missing NCCL, OpenCV
absent so images cannot be decoded); one report that lists all of it answers the first questions at once.
Every probe survives a missing or broken package and says "not installed" rather than failing.
"""
from __future__ import annotations

import importlib
import platform
import shutil
from typing import Sequence

#: (what the report calls it, module to import); the version is the module's ``__version__``.
PACKAGES = (("torch", "torch"), ("protobuf", "google.protobuf"), ("OpenCV", "cv2"), ("onnx", "onnx"),
            ("onnxruntime", "onnxruntime"), ("numpy", "numpy"), ("h5py", "h5py"), ("lmdb", "lmdb"),
            ("plyvel (LevelDB)", "plyvel"))


def package_version(module: str) -> str:
    """The version of ``module``, or ``not installed`` (also when importing it fails)."""
    try:
        return str(getattr(importlib.import_module(module), "__version__", "installed"))
    except Exception:  # a broken install is reported, not raised: the doctor must finish
        return "not installed"


def version_lines() -> list[str]:
    """``Python 3.11.9``, then one ``name: version`` line per package of :data:`PACKAGES`."""
    return [f"Python: {platform.python_version()}", *(f"{name}: {package_version(module)}"
                                                       for name, module in PACKAGES)]


def device_lines(gpus: Sequence[int] | None = None) -> list[str]:
    """The CUDA devices torch sees (``gpus``: only these ids) with memory and compute capability, and NCCL."""
    try:
        import torch
    except ImportError:
        return ["CUDA: torch not installed"]
    if not torch.cuda.is_available():
        built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
        return [f"CUDA: no device available (torch {torch.__version__}, {built})", nccl_line()]
    count = torch.cuda.device_count()
    lines = [f"CUDA: {torch.version.cuda}, {count} device(s)"]
    for index in (range(count) if gpus is None else gpus):
        if not 0 <= index < count:
            lines.append(f"  device {index}: no such device (torch sees {count})")
            continue
        props = torch.cuda.get_device_properties(index)
        lines.append(f"  device {index}: {props.name}, {props.total_memory / 2**30:.1f} GiB, "
                     f"compute capability {props.major}.{props.minor}, {props.multi_processor_count} SMs")
    return lines + [nccl_line()]


def nccl_line() -> str:
    """Whether torch.distributed can use NCCL (multi-GPU training), with its version."""
    try:
        import torch.distributed as dist
        if not dist.is_available() or not dist.is_nccl_available():
            return "NCCL: not available"
        import torch
        version = torch.cuda.nccl.version()
        return "NCCL: " + (".".join(map(str, version)) if isinstance(version, tuple) else str(version))
    except Exception as exc:  # a broken CUDA install: say so in the report
        return f"NCCL: not available ({exc})"


def tool_lines() -> list[str]:
    """External programs some commands use: graphviz ``dot`` (``vggproto draw`` to PNG/SVG)."""
    dot = shutil.which("dot")
    return [f"graphviz dot: {dot}" if dot else "graphviz dot: not on PATH (vggproto draw writes .dot only)"]


def doctor_report() -> list[str]:
    """Every line ``vggproto doctor`` prints."""
    return [*version_lines(), *device_lines(), *tool_lines()]
