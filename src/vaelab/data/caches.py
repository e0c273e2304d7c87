"""Where vaelab keeps what it derives from data (dSprites' rendered images, the decoded images of your folders) and how
such a file is written. Never in the data folder, which may be shared or read-only: in `cache_dir()`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab"


def cache_dir() -> Path:
    """The folder of every cache: $VAELAB_CACHE, else $XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab."""
    return Path(os.environ["VAELAB_CACHE"]).expanduser() if os.environ.get("VAELAB_CACHE") else user_cache_dir()


def file_mode() -> int:
    """The mode open() gives a new file under the process's umask (0644 under umask 022)."""
    umask = os.umask(0)  # the umask can only be read by setting it
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: Path, write) -> None:
    """Call write(temporary path) on a new file beside `path`, then rename it over `path`: a write cut short (a signal, a
    full disk) leaves nothing under the name, and the temporary is removed. The file gets open()'s mode, not
    mkstemp's 0600, so a shared cache stays readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        os.chmod(tmp, file_mode())
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
