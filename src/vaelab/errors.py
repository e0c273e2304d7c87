"""Error types. Every error a user can cause derives from VaelabError; the CLI prints it as one line."""


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
