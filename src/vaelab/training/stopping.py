"""SIGINT and SIGTERM: a flag training reads between steps (never a step cut in half), an exception raised at once
where work may stop anywhere (drawing samples, evaluating), and a line at the start and end of a long phase."""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager

from ..progress import note
from . import distributed

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM, raised where the main thread is, in work that may stop anywhere. A KeyboardInterrupt, so
    no `except Exception` swallows it and `finally` clauses remove partial files; the command exits 128 + signum
    (130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


def _install(handler) -> dict:
    """`handler` for SIGINT and SIGTERM; the handlers it replaces. Python allows handlers in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, handler) for signum in SIGNALS}


def _restore(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def _raise(signum, frame) -> None:
    raise Signalled(signum)


@contextmanager
def signals_raise():
    """Within: SIGINT and SIGTERM raise Signalled wherever the main thread is (between two torch operations). Without
    it SIGTERM ends the process on the spot, leaving partial files and no line. Training replaces it with a
    StopRequest while it runs."""
    previous = _install(_raise)
    try:
        yield
    finally:
        _restore(previous)


class StopRequest:
    """SIGINT and SIGTERM while training set a flag instead of killing the step half-way; the loop looks
    at it between steps, writes a checkpoint and stops (TrainingInterrupted). With at_once=True a signal
    raises Signalled at once until the first check (`requested`) or `defer()`: setting up (reading data,
    building the model) may stop anywhere, as a kill there loses nothing a resume needs. Work that may be cut
    anywhere and writes nothing runs under `interruptible()`, where a signal raises Signalled at once too.
    Handlers are restored by `restore()`, or on leaving a `with StopRequest()` block, which raises Signalled
    for a signal received within it: a write that must not be cut short. Under torchrun the processes agree
    on stopping at log steps, where they already synchronise."""

    def __init__(self, at_once: bool = False):
        self.signum = 0
        self._raising = at_once
        self._previous = _install(self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        if self._raising:
            self._raising = False  # once: the clean-up the exception runs is not cut short by a second signal
            raise Signalled(signum)

    @contextmanager
    def interruptible(self):
        """Within: a signal raises Signalled at once instead of waiting for the next check, as does one received
        before. For work that may be cut short anywhere and writes nothing (a sample grid: minutes for a PixelCNN)."""
        if self.signum:
            raise Signalled(self.signum)
        self._raising = True
        try:
            yield
        finally:
            self._raising = False

    def requested(self, ctx: distributed.Context, step: int, log_every: int) -> int:
        """The signal to stop with, 0 to go on. Under torchrun, at log steps, the largest any process received:
        a signal sent to one process only (kill PID) stops them all. Only the handler writes self.signum, so a
        signal arriving while the processes agree is kept for the next log step."""
        self.defer()
        if not ctx.active:
            return self.signum
        return ctx.max_int(self.signum) if step % log_every == 0 else 0

    def defer(self) -> None:
        """From here on a signal only sets the flag, for the caller to read."""
        self._raising = False

    def restore(self) -> None:
        _restore(self._previous)
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        self.restore()
        if self.signum and kind is None:
            raise Signalled(self.signum)


@contextmanager
def phase(what: str):
    """A phase that takes a while says so on stderr: a line as it starts and one with its seconds as it ends (on a
    terminal a progress bar of its own, such as PixelCNN sampling's, runs between them). An exception, a signal
    included, ends it without the second line."""
    note(f"{what} ...")
    start = time.perf_counter()
    yield
    note(f"{what}: done in {time.perf_counter() - start:.1f} s")
