"""Where a command writes. Every output path is checked here before anything is computed, so a bad --out is one
line naming the option with nothing written; a write that fails later (a read-only folder, a full disk) is one
line naming the file, and the file it would have replaced is left as it was."""

from __future__ import annotations

import os
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import RunDirError, VaelabError

FIGURE_SUFFIXES = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".tiff", ".webp", ".gif", ".eps", ".ps")
"""What both of matplotlib's writers (imsave for grids, savefig for figures) take, told apart by the suffix."""


def reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def os_error_line(exc: OSError) -> str:
    """An operating system's refusal (permission, a full disk, a file where a folder should be) as one line: the
    file, then the reason."""
    where = " -> ".join(str(name) for name in (exc.filename, exc.filename2) if name is not None)
    return f"{where}: {reason(exc)}" if where else reason(exc)


def _nearest_existing(path: Path) -> Path:
    """The path itself or its closest ancestor that exists (the folder a new file or folder would go in)."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _writable_folder(folder: Path, option: str) -> None:
    """A folder that exists or can be made: no part of it a file, and permission to write in what exists."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise RunDirError(f"{option}: {existing} is a file, not a folder" + (f" (so {folder} cannot be made)" if existing != folder else ""))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"{option}: cannot write in {existing}: Permission denied")


def output_file(path: Path | None, default: Path, option: str) -> Path:
    """The file one figure goes to: `default` when `path` is None, `path/<default's name>` when `path` is a folder, and
    `path` with the default's suffix added when it has none. Refused, naming `option`: a path under a regular file, a
    suffix that is not an image format, a folder or a special file in the file's place, a folder that cannot be written.
    A default in a run directory that is missing or not a folder is left to the command's reading of that run."""
    if path is None:
        if not default.parent.is_dir():
            return default
        target, option = default, f"{option} (default {default})"
    else:
        path = Path(path).expanduser()
        target = path / default.name if path.is_dir() else path if path.suffix else path.with_name(path.name + default.suffix)
    if target.suffix.lower() not in FIGURE_SUFFIXES:
        raise VaelabError(f"{option}: {target} is not an image file name (end it in {', '.join(FIGURE_SUFFIXES)})")
    _writable_folder(target.parent, option)
    if target.is_dir():
        raise RunDirError(f"{option}: {target} is a folder")
    if target.exists() and not target.is_file():
        raise RunDirError(f"{option}: {target} is not a regular file")
    return target


def output_folder(path: Path, option: str) -> Path:
    """A folder a command writes several files into: it exists as a folder or can be made, and can be written."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{option}: {path} is a file, not a folder")
    _writable_folder(path, option)
    return path


def distinct(**targets: Path) -> None:
    """Two outputs of one command must not be the same file (the second would replace the first)."""
    seen: dict[Path, str] = {}
    for option, target in targets.items():
        key = Path(os.path.abspath(target))
        if key in seen:
            raise VaelabError(f"{seen[key]} and {option} both name {target}")
        seen[key] = option


@contextmanager
def written(*targets: Path) -> Iterator[list[Path]]:
    """Temporary paths beside `targets` (same suffix, so the format stays) for the body to write; renamed over the
    targets once every one is written. An OSError in writing one is one line naming its target, and no target
    changes; an OSError about another file (reading the test set) is left as it is."""
    partial = [t.with_name(f".{t.stem}.partial-{os.getpid()}{t.suffix}") for t in targets]
    with ExitStack() as cleanup:
        for p in partial:
            cleanup.callback(_remove, p)
        try:
            yield partial
        except OSError as exc:
            named = [t for t, p in zip(targets, partial) if exc.filename in (str(p), p)]
            begun = [t for t, p in zip(targets, partial) if p.exists()]  # written in order: the last begun failed
            if named or (exc.filename is None and begun):
                raise RunDirError(f"cannot write {(named or begun)[-1]}: {reason(exc)}") from None
            raise
        for target, p in zip(targets, partial):
            if not os.path.lexists(p):  # the writer wrote nothing there (a test that keeps figures in memory)
                continue
            try:
                os.replace(p, target)
            except OSError as exc:
                raise RunDirError(f"cannot write {target}: {reason(exc)}") from None


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # a folder that became read-only meanwhile: the partial file stays, the error already said why
        pass
