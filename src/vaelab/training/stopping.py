"""SIGINT and SIGTERM during training: a flag the loop reads between steps, never a step cut in half."""

from __future__ import annotations

import signal
import threading

from . import distributed


class StopRequest:
    """SIGINT and SIGTERM while training set a flag instead of killing the step half-way; the loop looks
    at it between steps, writes a checkpoint and stops (TrainingInterrupted). Handlers are installed
    only in the main thread (Python allows no other) and restored when training ends. Under torchrun
    the processes agree on stopping at log steps, where they already synchronise."""

    def __init__(self):
        self.signum = 0
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def requested(self, ctx: distributed.Context, step: int, log_every: int) -> int:
        """The signal to stop with, 0 to go on. Under torchrun, at log steps, the largest any process received:
        a signal sent to one process only (kill PID) stops them all. Only the handler writes self.signum, so a
        signal arriving while the processes agree is kept for the next log step."""
        if not ctx.active:
            return self.signum
        return ctx.max_int(self.signum) if step % log_every == 0 else 0

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
