"""File checksums, shared by the downloaded datasets and the generated ones' caches."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes, decompressed first if it is gzip."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
