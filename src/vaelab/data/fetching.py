"""Downloading one benchmark file: tried from each mirror in turn, checked against its published checksum where one is
known, and renamed into place only when complete, so nothing partial is ever read as data.

Unlike datasets.download, the digest is of the bytes as published (an archive's checksum is of the .tar.gz itself,
not of what it decompresses to)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from ..errors import DataError
from .datasets import existing_data_root


def raw_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch(name: str, folder: Path, mirrors, checksum: str | None = None, timeout: float = 30.0) -> Path:
    """folder/name, downloaded from the first mirror that serves it; `checksum` ("md5:hex" or "sha256:hex") must match
    when given. Raises DataError with every mirror's failure in one line."""
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
            if checksum:
                algorithm, expected = checksum.split(":")
                got = raw_digest(Path(tmp), algorithm)
                if got != expected:
                    raise DataError(f"checksum mismatch ({algorithm} {got[:12]}..., expected {expected[:12]}...)")
            os.replace(tmp, folder / name)
            return folder / name
        except (OSError, ValueError, DataError) as exc:
            errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError("; ".join(errors) or f"{name}: no mirror to download it from")


def dataset_folder(data_dir, folder: str) -> Path:
    """Where a dataset's files are looked for: <data root>/<folder> (the root: --data-dir, $VAELAB_DATA or the cache)."""
    return existing_data_root(data_dir) / folder


def fetch_missing(folder: Path, names, mirrors, checksums: dict, download: bool) -> None:
    """Download each of `names` not yet in `folder`; refused in one line naming the folder and files when downloads are off
    or fail."""
    missing = [name for name in names if not (folder / name).is_file()]
    if not missing:
        return
    if not download:
        raise DataError(f"{folder}: missing {', '.join(missing)} (downloads are off)")
    for name in missing:
        try:
            fetch(name, folder, mirrors, checksums.get(name))
        except DataError as exc:
            raise DataError(f"{folder}: missing {name}; download failed: {exc}") from None
