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
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors import SafetensorError

from ..errors import RunDirError

MANIFEST_FILE = "manifest.json"


def _write_error(path: Path, exc: BaseException) -> RunDirError:
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0][:200]
    return RunDirError(f"cannot write {path}: {reason}")


def atomic_write_bytes(path: Path, write, checksum: bool = False) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file.
    With checksum=True the file is then recorded in its run directory's manifest (see record)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    try:
        write(tmp)
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
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run_dir_of(path: Path) -> Path:
    # model.safetensors lies in the run directory, checkpoints one folder down.
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def read_manifest(run_dir: Path) -> dict | None:
    """{relative path: {"sha256": hex, "bytes": size}}, or None for a run directory without a manifest."""
    path = Path(run_dir) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text())["files"]
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
    files = {name: entry for name, entry in files.items() if (run_dir / name).is_file()}
    files[path.relative_to(run_dir).as_posix()] = {"sha256": sha256(path), "bytes": path.stat().st_size}
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps({"files": files}, indent=1, sort_keys=True) + "\n")


def verify(path: Path) -> str | None:
    """Why `path` cannot be trusted (a size or checksum that differs from the manifest, no manifest
    entry), or None when it matches or its run directory has no manifest."""
    path = Path(path)
    run_dir = _run_dir_of(path)
    files = read_manifest(run_dir)
    if files is None:
        return None
    entry = files.get(path.relative_to(run_dir).as_posix())
    if entry is None:
        return f"not recorded in {MANIFEST_FILE} (written by a process killed before it could record it?)"
    if path.stat().st_size != entry["bytes"]:
        return f"{path.stat().st_size} bytes where {MANIFEST_FILE} records {entry['bytes']}"
    if sha256(path) != entry["sha256"]:
        return f"its sha256 differs from the one in {MANIFEST_FILE}"
    return None


def append_jsonl(path: Path, entry: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")
    except OSError as exc:
        raise _write_error(path, exc) from None


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file. A last line cut short (a crash or a full disk mid-append, so
    no newline ends it) is dropped; any other line that is not a JSON object is a RunDirError."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text()
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
    for folder in (Path(run_dir), Path(run_dir) / "checkpoints"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
