"""How long work shows its progress: every progress bar of vaelab is made by `progress_bar`, and a line saying what
starts or ends by `note`.

On a terminal (or in a notebook) it is tqdm's bar. On anything else, a log file or a pipe, a bar redrawn in place would
add a line to the log at every refresh, so it writes whole lines instead: one at the start, one each time another
LINE_EVERY of the total is done (without a total, at most one every LINE_SECONDS), and one at the end. A new postfix
waits for the next line. With a total, at most 22 lines, however long the work."""

from __future__ import annotations

import math
import sys

from tqdm.auto import tqdm as auto_tqdm
from tqdm.autonotebook import tqdm as notebook_or_std_tqdm
from tqdm.std import tqdm as std_tqdm

LINE_EVERY = 0.05
"""The share of the total between two lines written to a stream that is not a terminal."""
LINE_SECONDS = 30.0
"""The least time between two such lines when the total is not known."""


def _interactive(stream) -> bool:
    if notebook_or_std_tqdm is not std_tqdm:  # tqdm.auto found a notebook: its bar is a widget, not lines of text
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


class _Lines(std_tqdm):
    """tqdm writing whole lines, each when at least `miniters` more are done and `mininterval` seconds have passed
    since the last one, and the last at close."""

    def __init__(self, *args, **kwargs):
        self._line_at = None  # (n, time, postfix) of the last line written
        super().__init__(*args, **{**kwargs, "leave": False})  # close writes the last line itself (below)

    def refresh(self, nolock=False, lock_args=None):
        """Called by update when its counts say so, but also by set_postfix and set_description: a line only when due."""
        if self._line_at is not None:
            n, at, _ = self._line_at
            if self.n - n < self.miniters or self._time() - at < self.mininterval:
                return False
        return super().refresh(nolock, lock_args)

    def display(self, msg=None, pos=None):
        """A line, unless it would say what the last one did; msg="" (tqdm clearing its bar) writes nothing."""
        if msg is None and (self._line_at is None or self._line_at[::2] != (self.n, self.postfix)):
            self.fp.write(f"{self}\n")
            self.fp.flush()
            self._line_at = (self.n, self._time(), self.postfix)
        return False

    def close(self):
        if not self.disable:
            self.display()
        super().close()


def progress_bar(iterable=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; elsewhere a bar that writes at most one line every LINE_EVERY of the
    total. `disable=None` (tqdm's "on a terminal only") shows nothing where the stream is not a terminal."""
    if _interactive(kwargs.get("file") or sys.stderr):
        return auto_tqdm(iterable, **kwargs)
    total = kwargs.get("total")
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if total:
        pace = {"miniters": max(1, math.ceil(total * LINE_EVERY)), "mininterval": 0}
    else:
        pace = {"miniters": 1, "mininterval": LINE_SECONDS}
    # maxinterval: tqdm's monitor thread would otherwise lower miniters to 1 when a line is 10 s old
    return _Lines(iterable, **{**kwargs, **pace, "maxinterval": math.inf})


def note(message: str) -> None:
    """One line on stderr saying what long work is being done (vaelab: ...)."""
    print(f"vaelab: {message}", file=sys.stderr, flush=True)
