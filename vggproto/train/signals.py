"""SIGINT/SIGHUP during training, as Caffe's ``SignalHandler`` (``src/caffe/util/signal_handler.cpp``) handles them.

The handler only records a request; the solver polls it once per iteration (and, with several processes,
agrees on it through the all-reduce), so a signal never interrupts a half-done update.

With worker processes (``--gpus cpu:N`` / a GPU list) the launcher is the one process that takes SIGINT/SIGHUP, as
``caffe train`` is one process: it relays each as :data:`RELAYED` (SIGUSR1/SIGUSR2) to rank 0, whose request the
all-reduce spreads to every rank, while the workers ignore SIGINT/SIGHUP themselves.  So ``kill -INT <launcher>``
and a terminal's Ctrl-C (which reaches every process of the foreground group) both ask exactly once.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Literal, get_args

from vggproto.errors import SolverError

log = logging.getLogger("vggproto.train.solver")

#: What a signal asks for (tools/caffe.cpp --sigint_effect / --sighup_effect).
SignalEffect = Literal["stop", "snapshot", "none"]
SIGNAL_EFFECTS: tuple[str, ...] = get_args(SignalEffect)

#: The signal a launcher relays to rank 0 in place of each job signal (POSIX only).
RELAYED: dict[int, int] = {signal.SIGINT: getattr(signal, "SIGUSR1", 0)}
if hasattr(signal, "SIGHUP"):
    RELAYED[signal.SIGHUP] = signal.SIGUSR2

_early: list[int] = []  # relayed signals that reached a worker before its solver polled (see defer_relayed)


def defer_relayed() -> None:
    """In a worker, before the solver exists: ignore the job signals and record relayed ones until a
    :class:`Signals` with ``relayed=True`` takes over (Caffe installs its handler before building the solver)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for job, relay in RELAYED.items():
        signal.signal(job, signal.SIG_IGN)
        if relay:
            signal.signal(relay, lambda signum, frame: _early.append(signum))


def check_effect(effect: str, flag: str) -> SignalEffect:
    """``effect`` if it is one of :data:`SIGNAL_EFFECTS`, else a SolverError naming ``flag``."""
    if effect not in SIGNAL_EFFECTS:
        raise SolverError(f"{flag} '{effect}' is not one of: {', '.join(SIGNAL_EFFECTS)}")
    return effect  # type: ignore[return-value]


class Signals:
    """Caffe's SignalHandler: SIGINT/SIGHUP set a request the loop polls once per iteration."""

    def __init__(self, sigint: SignalEffect, sighup: SignalEffect, relayed: bool = False):
        """``relayed``: a worker of a launcher, which takes SIGINT/SIGHUP as :data:`RELAYED` instead."""
        self.effects = {signal.SIGINT: sigint}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup
        self.names = {sig: signal.Signals(sig).name for sig in self.effects}
        if relayed:
            self.ignored = list(self.effects)
            self.effects = {RELAYED[sig]: effect for sig, effect in self.effects.items()}
            self.names = {RELAYED[sig]: name for sig, name in self.names.items()}
        else:
            self.ignored = []
        self.pending: SignalEffect = "none"
        self._old: dict = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.ignored:
                self._old[sig] = signal.signal(sig, signal.SIG_IGN)
            for sig in self.effects:
                self._old[sig] = signal.signal(sig, self._handle)
            if self.ignored:
                while _early:
                    self._handle(_early.pop(0), None)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        effect = self.effects.get(signum, "none")
        if effect != "none":
            log.info("Caught %s; requested action: %s", self.names.get(signum, str(signum)), effect)
            if self.pending != "stop":
                self.pending = effect

    def take(self) -> SignalEffect:
        """The action requested since the last call ('none' if no signal came), and clear it."""
        action, self.pending = self.pending, "none"
        return action

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
