"""Error types. Every error a user can cause derives from VaelabError; the CLI prints it as one line."""

import operator
import sys


def warn(message: str) -> None:
    """One line on stderr for something recovered from (a damaged checkpoint skipped, a run restarted)."""
    print(f"vaelab: warning: {message}", file=sys.stderr, flush=True)


class VaelabError(Exception):
    """A problem with the user's input (data, options, run directory), reported without a traceback."""


class DataError(VaelabError):
    """A dataset file is missing, corrupt or of the wrong shape."""


class ConfigError(VaelabError):
    """An option, preset or override is unknown or out of range."""


class RunDirError(VaelabError):
    """A run directory is missing, incomplete or would be overwritten."""


class TrainingDiverged(VaelabError):
    """Too many consecutive steps had a non-finite loss or gradient."""


class TrainingInterrupted(VaelabError):
    """SIGINT or SIGTERM stopped training between two steps, after a checkpoint was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class ArgumentError(VaelabError, ValueError):
    """An argument of the Python API out of its range (a negative count, too few points); also a ValueError, as
    Python's own checks of an argument are."""


def require_count(value, name: str, minimum: int = 1) -> int:
    """`value` as an int of at least `minimum`, else an ArgumentError naming `name` and the minimum. Counts that
    reach torch unchecked fail deep inside it (a negative size, a division by zero) with no word of which argument."""
    try:
        number = operator.index(value)
    except TypeError:
        number = None
    if number is None or isinstance(value, bool) or number < minimum:
        raise ArgumentError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return number
