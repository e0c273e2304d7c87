"""The files of a run directory as a crash or a full disk leaves them: atomic writes, the checksum
manifest, JSON lines.

- Every file whose loss would hurt (config, weights, checkpoints, summaries, evaluations) is written to
  a temporary file in the same folder, fsynced and renamed over its target: a crash leaves either the
  old file or the new one, never half of one. A failed write (a full disk) is one RunDirError naming
  the file, and the temporary file is removed.
- Weights and checkpoints are recorded in RUN_DIR/manifest.json with their size and sha256, after they
  are renamed into place. Readers check a file against it: a flipped byte, a truncated or replaced file,
  or one written but not recorded (a kill between the rename and the manifest update) does not match.
  Run directories written before the manifest existed have none and are read unchecked.
- Nothing inside a run directory is followed as a symbolic link (the run directory's own path may be
  one): check_member refuses a link in one line, files are opened with O_NOFOLLOW (open_member), and an
  atomic write replaces a link rather than writing through it. So nothing outside the run directory is
  ever written, renamed or deleted through one of its members.
- A reader beside a trainer pins a file (Pinned): opened once, hashed and read through that one open
  file, so a checkpoint pruned or replaced meanwhile is read whole or noticed as gone, never half.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import tempfile
import time
from pathlib import Path

from safetensors import SafetensorError

from ..errors import RunDirError

MANIFEST_FILE = "manifest.json"
CHECKPOINT_DIR = "checkpoints"


def check_member(run_dir: Path, path: Path) -> Path:
    """`path`, after checking that neither it nor a folder between RUN_DIR and it is a symbolic link: a
    link is refused in one line (RunDirError), so nothing is read, written, renamed or deleted through it."""
    run_dir, path = Path(run_dir), Path(path)
    current = run_dir
    for part in path.relative_to(run_dir).parts:
        current = current / part
        if os.path.islink(current):
            raise RunDirError(f"{current} is a symbolic link; vaelab follows no links inside a run directory "
                              f"(put the file or folder itself there)")
    return path


def open_member(run_dir: Path, path: Path, flags: int = os.O_RDONLY, mode: int = 0o666) -> int:
    """A file descriptor for RUN_DIR's member `path`, opened without following a link (check_member for
    the folders on the way, O_NOFOLLOW for the file itself) and only if it is a regular file.
    FileNotFoundError is left to the caller (a reader may have lost a race with a pruning trainer)."""
    path = Path(path)
    check_member(run_dir, path.parent)
    try:
        # O_NONBLOCK: a FIFO planted in place of a file must not hang the open; regular files ignore it.
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):
            check_member(run_dir, path)  # raises the one line naming the link
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise RunDirError(f"{path} is not a regular file")
    return fd


def _run_dir_of(path: Path) -> Path:
    # model.safetensors lies in the run directory, checkpoints one folder down.
    path = Path(path)
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent


class Pinned:
    """A file of a run directory opened once (open_member), so that its checksum and its contents come
    from the same bytes even if a trainer prunes or replaces the path meanwhile: `name` reopens this
    very file (/proc/self/fd/N), whatever the path names by then."""

    def __init__(self, path: Path, run_dir: Path | None = None):
        self.path = Path(path)
        self.run_dir = Path(run_dir) if run_dir is not None else _run_dir_of(self.path)
        self.fd = open_member(self.run_dir, self.path)
        st = os.fstat(self.fd)
        self.size, self._identity, self._digest = st.st_size, (st.st_dev, st.st_ino), None
        folder = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
        # Without a folder of open files, the path itself (checked above) is read.
        self.name = f"{folder}/{self.fd}" if folder else str(self.path)

    def __enter__(self) -> "Pinned":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    @property
    def digest(self) -> str:
        if self._digest is None:
            digest, offset = hashlib.sha256(), 0
            while chunk := os.pread(self.fd, 1 << 22, offset):
                digest.update(chunk)
                offset += len(chunk)
            self._digest = digest.hexdigest()
        return self._digest

    def still_in_place(self) -> bool:
        """Whether the path still names the file pinned (not pruned, not replaced by a newer one)."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def problem(self, manifest: dict | None) -> str | None:
        """Why the pinned bytes do not match `manifest` (read_manifest's answer), or None."""
        if manifest is None:
            return None
        entry = manifest.get(self.path.relative_to(self.run_dir).as_posix())
        if entry is None:
            return f"not recorded in {MANIFEST_FILE} (written by a process killed before it could record it?)"
        if self.size != entry["bytes"]:
            return f"{self.size} bytes where {MANIFEST_FILE} records {entry['bytes']}"
        if self.digest != entry["sha256"]:
            return f"its sha256 differs from the one in {MANIFEST_FILE}"
        return None

    def settled_problem(self) -> str | None:
        """problem() for a reader beside a trainer: RACED when the path was pruned or replaced meanwhile
        (not damage); a file not older than the manifest is looked at again until the trainer records it
        (5 s at most while a trainer holds RUN_DIR/.lock, 1 s where that cannot be told, not at all when
        none does), so a checkpoint caught between its rename and its record is not called damaged."""
        held = lock_held(self.run_dir)
        deadline, pause = time.monotonic() + (1.0 if held is None else 5.0 if held else 0.0), 0.002
        written = os.fstat(self.fd).st_mtime_ns
        while True:
            # The manifest's time before its contents: the contents read are at least that new.
            manifest_time = self._manifest_time()
            problem = self.problem(read_manifest(self.run_dir))
            if problem is None:
                return None
            if not self.still_in_place():
                return RACED
            # record() rewrites the manifest after the file is in place: a manifest written after the file
            # that does not match it means damage, not a record still to come.
            if (manifest_time is not None and manifest_time > written) or time.monotonic() > deadline:
                return problem
            time.sleep(pause)  # a record takes one checksum and one small write: look again soon, then less often
            pause = min(2 * pause, 0.05)

    def _manifest_time(self) -> int | None:
        try:
            return os.lstat(self.run_dir / MANIFEST_FILE).st_mtime_ns
        except FileNotFoundError:
            return None


RACED = "raced"  # Pinned.settled_problem: the file was pruned or replaced while it was read


def lock_held(run_dir: Path) -> bool | None:
    """Whether a process holds the flock on RUN_DIR/.lock (a trainer is writing the run), as /proc/locks
    tells; None where that cannot be read. Looking takes no lock, so it never gets in a trainer's way."""
    try:
        inode = os.lstat(Path(run_dir) / ".lock").st_ino
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        with open("/proc/locks") as f:
            table = f.read()
    except OSError:
        return None
    # "1: FLOCK  ADVISORY  WRITE 4242 fe:00:5309290 0 EOF": matched by inode (another file system's same
    # number only makes a reader wait).
    return any(line.split()[1:2] == ["FLOCK"] and f":{inode} " in line for line in table.splitlines())


def _write_error(path: Path, exc: BaseException) -> RunDirError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0][:200]
    return RunDirError(f"cannot write {path}: {reason}")


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()  # read once, at import: os.umask can only be read by setting it


def atomic_write_bytes(path: Path, write, checksum: bool = False) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file.
    With checksum=True the file is then recorded in its run directory's manifest (see record)."""
    path = Path(path)
    if path.parent.name == CHECKPOINT_DIR:  # the folder a checkpoint goes into must not lead elsewhere
        check_member(path.parent.parent, path.parent)
    # mkstemp never opens an existing name, and os.replace renames over a link instead of following it.
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600, and so does safetensors' save_file, whatever the file had: after writing, the file
        # gets the mode open() would have given it
        os.chmod(tmp, _FILE_MODE)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # a full disk, a quota, a read-only folder
        raise _write_error(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if checksum:
        record(path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def sha256(path: Path) -> str:
    with Pinned(path) as pinned:
        return pinned.digest


def _read_member(path: Path) -> bytes | None:
    """The bytes of a run directory's file, read without following a link; None when it does not exist."""
    try:
        fd = open_member(_run_dir_of(path), path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def read_manifest(run_dir: Path) -> dict | None:
    """{relative path: {"sha256": hex, "bytes": size}}, or None for a run directory without a manifest."""
    path = Path(run_dir) / MANIFEST_FILE
    try:
        raw = _read_member(path)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if raw is None:
        return None
    try:
        files = json.loads(raw.decode())["files"]
        if not all(isinstance(k, str) and isinstance(v["sha256"], str) and isinstance(v["bytes"], int) for k, v in files.items()):
            raise ValueError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise RunDirError(f"{path}: damaged (not the manifest vaelab writes); move it aside to read the run unchecked") from None
    return files


def record(path: Path) -> None:
    """Enter `path`'s size and sha256 into its run directory's manifest, forgetting files that are gone."""
    path = Path(path)
    run_dir = _run_dir_of(path)
    files = read_manifest(run_dir) or {}
    files = {name: entry for name, entry in files.items() if _is_regular(run_dir / name)}
    with Pinned(path, run_dir) as pinned:
        files[path.relative_to(run_dir).as_posix()] = {"sha256": pinned.digest, "bytes": pinned.size}
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def verify(path: Path) -> str | None:
    """Why `path` cannot be trusted (a size or checksum that differs from the manifest, no manifest
    entry), or None when it matches or its run directory has no manifest."""
    path = Path(path)
    run_dir = _run_dir_of(path)
    files = read_manifest(run_dir)
    if files is None:
        return None
    with Pinned(path, run_dir) as pinned:
        return pinned.problem(files)


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def append_jsonl(path: Path, entry: dict) -> None:
    path = Path(path)
    try:
        fd = open_member(_run_dir_of(path), path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as exc:
        raise _write_error(path, exc) from None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file. A last line cut short (a crash or a full disk mid-append, so
    no newline ends it) is dropped; any other line that is not a JSON object is a RunDirError."""
    path = Path(path)
    try:
        raw = _read_member(path)
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if raw is None:
        return []
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a text file of JSON lines") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(lines):  # the unterminated last line: an append that did not finish
                break
            raise RunDirError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Drop metrics logged after `last_step` (they are re-logged when a resumed run redoes those steps);
    returns the records kept."""
    kept = [r for r in read_jsonl(path) if isinstance(r.get("step"), int) and r["step"] <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left behind (.NAME.XXXX.tmp)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        check_member(run_dir, folder)
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)  # a link among them is removed itself, never its target
