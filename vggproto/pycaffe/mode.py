"""pycaffe's process-wide mode (``set_mode_cpu``/``set_mode_gpu``/``set_device``/``set_random_seed``).

Caffe keeps one mode per process and every net built afterwards uses it; here it picks the torch device that new
nets and solvers are moved to (a GPU only when torch sees one; otherwise the CPU, with no error, as a CPU-only
Caffe build would refuse but scripts usually just want to run).
"""
from __future__ import annotations

import torch

_STATE = {"gpu": False, "device": 0}


def set_mode_cpu() -> None:
    _STATE["gpu"] = False


def set_mode_gpu() -> None:
    _STATE["gpu"] = True


def set_device(device_id: int) -> None:
    _STATE["device"] = int(device_id)


def set_random_seed(seed: int) -> None:
    """Caffe's ``Caffe::set_random_seed``: seeds the fillers and the random layers (torch's global RNG)."""
    torch.manual_seed(int(seed))


def device() -> torch.device:
    """The device new nets go to."""
    if _STATE["gpu"] and torch.cuda.is_available():
        return torch.device("cuda", _STATE["device"])
    return torch.device("cpu")


_SOLVERS = {"count": 1, "rank": 0, "multiprocess": False}


def solver_count() -> int:
    return _SOLVERS["count"]


def set_solver_count(count: int) -> None:
    _SOLVERS["count"] = int(count)


def solver_rank() -> int:
    return _SOLVERS["rank"]


def set_solver_rank(rank: int) -> None:
    _SOLVERS["rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    _SOLVERS["multiprocess"] = bool(multiprocess)


def has_nccl() -> bool:
    """pycaffe's NCCL bindings are not provided (vggproto trains multi-GPU through ``vggproto train --gpu``)."""
    return False


def init_log(level: int = 0, stderr: bool = True) -> None:
    """glog-style logging of vggproto's net and solver messages at ``level`` (0 INFO … 2 ERROR)."""
    import logging
    logging.basicConfig(level=[logging.INFO, logging.WARNING, logging.ERROR, logging.CRITICAL][min(level, 3)])


def log(message: str) -> None:
    """pycaffe's ``caffe.log``: one INFO line."""
    import logging
    logging.getLogger("vggproto.pycaffe").info(message)


class Timer:
    """Caffe's Timer: ``start()``, ``stop()``, then ``ms`` / ``seconds``."""

    def __init__(self):
        self._start: float | None = None
        self._elapsed = 0.0

    def start(self) -> None:
        import time
        self._start = time.perf_counter()

    def stop(self) -> None:
        import time
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self) -> float:
        return self._elapsed * 1000.0

    @property
    def seconds(self) -> float:
        return self._elapsed
