"""Graceful stop: SIGTERM (a preemption, ``scancel``, ``docker stop``) or SIGINT (Ctrl-C) ends a run
after its current step, with that step saved; a second signal aborts at once.

In a multi-process run every process must stop at the same step (their checkpoint is one step): each
step they OR their stop flags in one tiny collective, and honour the platform preemption notice that
JAX's distributed service exposes (``multihost_utils.reached_preemption_sync_point``). A single
process only reads its flag.
"""

from __future__ import annotations

import os
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

# The exit code of a run that stopped gracefully with its step saved (sysexits' EX_TEMPFAIL: rerun
# the same command to resume). 2 stays the code of a user error, 0 of a finished run.
EXIT_STOPPED = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(Exception):
    """Training stopped on a signal after saving ``step`` (the message says how to resume)."""

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class StopSignals:
    """Catches SIGTERM and SIGINT for the duration of a ``with`` block (main thread only: elsewhere
    signals keep their handlers) and says whether the run should stop (:meth:`requested`)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._preemption_service = True
        self._others = False  # some process of a multi-process run got a signal

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]  # what signal.signal returned
        self._previous = {}

    def _handle(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if self.signum is not None:  # the second signal: abort now, as the signal would have
            os.write(2, f"error: {name} again: aborting without saving\n".encode())
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        os.write(2, f"note: {name}: stopping after this step and saving it (again to abort)\n".encode())

    @property
    def name(self) -> str:
        """What stopped the run: this process's signal, another process's, or a preemption notice."""
        if self.signum is not None:
            return signal.Signals(self.signum).name
        return "a signal to another process" if self._others else "a preemption notice"

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step``. Every process of a multi-process run gets the same answer
        (call it at the same steps on all of them)."""
        if jax.process_count() == 1:
            return self.signum is not None
        flags = multihost_utils.process_allgather(np.int32(self.signum is not None))
        self._others = bool(np.any(flags))
        return self._others or self._preempted(step)

    def _preempted(self, step: int) -> bool:
        """The platform's preemption notice (all processes reach the sync step together)."""
        if not self._preemption_service:
            return False
        try:
            return multihost_utils.reached_preemption_sync_point(step)
        except RuntimeError:  # jax_enable_preemption_service is off
            self._preemption_service = False
            return False
