"""SIGINT/SIGHUP during training, as Caffe's ``SignalHandler`` (``src/caffe/util/signal_handler.cpp``) handles them.

The handler only records a request; the solver polls it once per iteration (and, with several processes,
agrees on it through the all-reduce), so a signal never interrupts a half-done update.
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


def check_effect(effect: str, flag: str) -> SignalEffect:
    """``effect`` if it is one of :data:`SIGNAL_EFFECTS`, else a SolverError naming ``flag``."""
    if effect not in SIGNAL_EFFECTS:
        raise SolverError(f"{flag} '{effect}' is not one of: {', '.join(SIGNAL_EFFECTS)}")
    return effect  # type: ignore[return-value]


class Signals:
    """Caffe's SignalHandler: SIGINT/SIGHUP set a request the loop polls once per iteration."""

    def __init__(self, sigint: SignalEffect, sighup: SignalEffect):
        self.effects = {signal.SIGINT: sigint}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup
        self.pending: SignalEffect = "none"
        self._old: dict = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in self.effects:
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        effect = self.effects.get(signum, "none")
        if effect != "none":
            log.info("Caught %s; requested action: %s", signal.Signals(signum).name, effect)
            if self.pending != "stop":
                self.pending = effect

    def take(self) -> SignalEffect:
        """The action requested since the last call ('none' if no signal came), and clear it."""
        action, self.pending = self.pending, "none"
        return action

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
