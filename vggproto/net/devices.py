"""The one parser of ``--gpus`` / ``--gpu`` values (Caffe: tools/caffe.cpp get_gpus), for every command and library.

``0`` / ``0,1`` name CUDA devices, ``all`` every device torch sees, ``cpu`` (or nothing) the CPU and ``cpu:N`` N CPU
worker processes (gloo; the multi-process training path on any machine).  :func:`parse_devices` checks the syntax
first, without asking torch anything (this module imports torch only for GPU ids), so a typo fails before CUDA
is initialised and the CPU forms never touch it; only then are CUDA ids checked against the devices torch sees,
and a failure says what torch sees, in one line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from vggproto.errors import SolverError

Kind = Literal["cpu", "cuda"]


class DeviceError(SolverError):
    """A ``--gpus`` value that names no usable device.

    A :class:`SolverError` because ``--gpus`` is the solver tools' flag (Caffe's ``caffe train``/``caffe test``),
    so code that catches the launcher's errors catches these too.
    """


@dataclass(frozen=True)
class Devices:
    """Where a command runs: ``kind`` and one id per worker process (CPU workers are numbered 0..N-1)."""

    kind: Kind
    ids: tuple[int, ...]

    @property
    def device(self) -> str:
        """The torch device of the first worker (the only one, for one-device commands): cpu or cuda:N."""
        return f"cuda:{self.ids[0]}" if self.kind == "cuda" else "cpu"


CPU = Devices("cpu", (0,))


def parse_devices(spec: str | None, flag: str = "--gpus", single: str | None = None) -> Devices:
    """Parse a ``--gpus`` value; raise :class:`DeviceError` (one line) on bad syntax or a device torch lacks.

    ``single`` names a command that runs in one process: it refuses lists, ``all`` and ``cpu:N`` with N > 1
    (before CUDA is asked).  ``flag`` is the spelling used in messages.
    """
    text = (spec or "").strip()
    lowered = text.lower()
    if lowered in ("", "cpu"):
        return CPU
    kind: Kind = "cpu" if lowered.startswith("cpu:") else "cuda"
    ids: tuple[int, ...] | None = None  # None: every CUDA device ("all")
    if kind == "cpu":
        count = lowered.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise DeviceError(f"{flag} {text}: expected cpu:N with N >= 1 CPU workers")
        ids = tuple(range(int(count)))
    elif lowered != "all":
        ids = _syntax_ids(text, flag)
    if single and (ids is None or len(ids) > 1):
        raise DeviceError(f"{flag} {text}: {single} runs on one device; give a single GPU id (or cpu)")
    if kind == "cuda":
        ids = _visible(text, flag) if ids is None else _check_ids(ids, text, flag)
    return Devices(kind, ids)


def _syntax_ids(text: str, flag: str) -> tuple[int, ...]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts or not all(p.isascii() and p.isdigit() for p in parts):
        raise DeviceError(f"{flag} {text}: expected GPU ids like 0 or 0,1, 'all', 'cpu' or cpu:N")
    ids = tuple(int(p) for p in parts)
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DeviceError(f"{flag} {text}: GPU {repeated[0]} is given more than once")
    return ids


def _visible(text: str, flag: str) -> tuple[int, ...]:
    import torch
    count = torch.cuda.device_count()
    if count == 0:
        raise DeviceError(f"{flag} {text}: {_seen(0)}")
    return tuple(range(count))


def _check_ids(ids: tuple[int, ...], text: str, flag: str) -> tuple[int, ...]:
    import torch
    count = torch.cuda.device_count()
    missing = [i for i in ids if i >= count]
    if missing:
        raise DeviceError(f"{flag} {text}: no such CUDA device (GPU {missing[0]} does not exist); {_seen(count)}")
    return ids


def _seen(count: int) -> str:
    """What torch sees, for error messages."""
    if count == 0:
        return "no CUDA device is visible to torch (torch.cuda.device_count() == 0)"
    import torch
    names = ", ".join(f"{i} ({torch.cuda.get_device_name(i)})" for i in range(count))
    return f"torch sees {count} CUDA device{'s' if count > 1 else ''}: {names}"


def usable_cpus() -> int:
    """CPUs this process can really use for compute threads: its affinity mask, capped by a cgroup CPU quota
    (``cpu.max``), less what other work keeps busy right now (:func:`busy_cpus`).  On a loaded 2-core machine two
    OpenMP threads that spin-wait on each other run many times slower than one, so this errs towards fewer."""
    import math
    import os
    mask = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cpus = len(mask)
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass                              # no cgroup v2 quota: the affinity mask decides
    return max(1, min(cpus, math.floor(cpus - busy_cpus(mask) + 0.5)))


def busy_cpus(mask: list[int], window_s: float = 0.3) -> float:
    """How many of the CPUs in ``mask`` other work keeps busy now: their non-idle time in ``/proc/stat`` over
    ``window_s`` seconds (Linux).  Not the load average, which lags by minutes: right after a pip install or an
    earlier training run it still reports the machine busy and would halve the threads of an idle machine.
    Elsewhere, the 1-minute load average."""
    import os
    import time
    try:
        before = _cpu_times(mask)
        time.sleep(window_s)
        after = _cpu_times(mask)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0
    total = sum(a[0] - b[0] for a, b in zip(after, before))
    idle = sum(a[1] - b[1] for a, b in zip(after, before))
    return len(mask) * (total - idle) / total if total > 0 else 0.0


def _cpu_times(mask: list[int]) -> list[tuple[int, int]]:
    """(all jiffies, idle + iowait jiffies) of each CPU in ``mask``, from ``/proc/stat``'s ``cpuN`` lines."""
    wanted, found = {f"cpu{i}" for i in mask}, {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name in wanted:
                ticks = [int(v) for v in fields[:8]]   # user nice system idle iowait irq softirq steal
                found[name] = (sum(ticks), ticks[3] + ticks[4])
    if len(found) != len(wanted):
        raise ValueError("/proc/stat does not list every CPU of the affinity mask")
    return [found[f"cpu{i}"] for i in mask]
