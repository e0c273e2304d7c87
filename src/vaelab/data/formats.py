"""File formats of the datasets: IDX (MNIST, Fashion-MNIST; raw or gzip), SVHN's MATLAB .mat files and the named
arrays of other .mat files (Omniglot, Caltech 101 Silhouettes, Frey Faces).

Readers validate before they allocate and raise DataError naming the file for anything malformed.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Refuse headers claiming more than this before reading anything: MNIST's largest file holds 47 MB
# (EMNIST's 0.6 GB), and a hostile header, or a gzip bomb, must not make us allocate gigabytes.
MAX_IDX_BYTES = 1 << 30
_READ_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike, check=None, sha256_for=None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array of its declared shape.

    Raises DataError naming the file for a wrong magic number, an unknown type code, a declared
    size that disagrees with the payload (truncated or trailing bytes), or an unreadable gzip stream.
    `check(shape, dtype)` may refuse the header (raising DataError) before any of the payload is read.
    `sha256_for(shape)` may name the sha256 the file's (decompressed) bytes must have: a file with the
    shape of a published one must be that file, byte for byte.
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if compressed else open
        with opener(path, "rb") as f:
            header = f.read(4)
            if len(header) < 4 or header[0] != 0 or header[1] != 0:
                raise DataError(f"{path}: not an IDX file (bad magic number {header.hex() or 'empty'})")
            type_code, ndim = header[2], header[3]
            if type_code not in IDX_DTYPES:
                raise DataError(f"{path}: unknown IDX type code 0x{type_code:02x}")
            if ndim == 0:
                raise DataError(f"{path}: IDX header declares zero dimensions")
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise DataError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", dims_raw)
            dtype = IDX_DTYPES[type_code]
            n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if n_bytes > MAX_IDX_BYTES:
                raise DataError(f"{path}: IDX header claims {n_bytes} bytes of data, more than the {MAX_IDX_BYTES} allowed")
            if check is not None:
                check(shape, dtype)
            if not compressed:
                available = path.stat().st_size - 4 - 4 * ndim
                if available != n_bytes:
                    raise DataError(f"{path}: IDX header declares shape {shape} ({n_bytes} bytes) but the file holds {available}")
            payload = _read_exactly(f, n_bytes, path, shape)
            expected = sha256_for(shape) if sha256_for is not None else None
            if expected is not None:
                digest = hashlib.sha256(header + dims_raw)
                digest.update(payload)
                if digest.hexdigest() != expected:
                    raise DataError(f"{path}: its bytes differ from the published file's (sha256 {digest.hexdigest()[:12]}..., "
                                    f"expected {expected[:12]}...); delete it to download it again")
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot read ({exc})") from None
    # A writable view of the bytes read (no copy); byte-swapped only where the type has more than one byte.
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def _read_exactly(f, n_bytes: int, path: Path, shape) -> bytearray:
    # Chunked into one growing buffer: a lying header in a gzip stream cannot trigger one huge allocation,
    # and the payload is held once, not as chunks plus their join.
    payload = bytearray()
    while len(payload) <= n_bytes:
        chunk = f.read(min(_READ_CHUNK, n_bytes + 1 - len(payload)))
        if not chunk:
            break
        payload += chunk
    if len(payload) != n_bytes:
        detail = "is truncated" if len(payload) < n_bytes else "has trailing bytes"
        raise DataError(f"{path}: IDX payload {detail} (header declares shape {tuple(shape)}, {n_bytes} bytes)")
    return payload


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an array as an IDX file (gzip if the name ends in .gz). Used by tests and tools."""
    path = Path(path)
    codes = {v.newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no IDX type code")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).astype(IDX_DTYPES[code]).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(payload)


# SVHN's extra_32x32.mat holds 531,131 x 3,072 bytes (1.6 GB); nothing legitimate claims more than this.
MAX_MAT_BYTES = 1 << 32
_MAT_ITEMSIZE = {"uint8": 1, "int8": 1, "uint16": 2, "int16": 2, "uint32": 4, "int32": 4, "single": 4, "double": 8,
                 "uint64": 8, "int64": 8, "char": 2, "logical": 1}


def read_svhn_mat(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an SVHN cropped-digits .mat file (train_32x32.mat, test_32x32.mat, extra_32x32.mat).

    Returns uint8 images of shape (N, 3, 32, 32) and int64 labels in 0..9 (the files store digit 0
    as label 10). Raises DataError naming the file when it is unreadable or its arrays are malformed."""
    path = Path(path)
    contents = read_mat_arrays(path, ["X", "y"])
    images, labels = contents["X"], contents["y"]
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.dtype != np.uint8 or images.shape[3] == 0:
        raise DataError(f"{path}: X must be uint8 of shape (32, 32, 3, N) with N >= 1, got {images.dtype} {images.shape}")
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[3]:
        raise DataError(f"{path}: y holds {labels.shape[0]} labels for {images.shape[3]} images")
    if labels.size and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{path}: SVHN labels must lie in 1..10 (10 meaning digit 0)")
    labels = labels.astype(np.int64) % 10
    return np.ascontiguousarray(images.transpose(3, 2, 0, 1)), labels


def read_mat_arrays(path: str | os.PathLike, names, optional=()) -> dict:
    """The named arrays of a MATLAB .mat file (v4 to v7.2; scipy.io.loadmat, which never unpickles), after checking that
    the header claims no more than MAX_MAT_BYTES. Raises DataError naming the file when it is unreadable or a required
    array is absent; `optional` arrays are returned when present."""
    import scipy.io

    path = Path(path)
    wanted = [*names, *optional]
    try:
        # Read the declared shapes first: a hostile header must not make loadmat allocate terabytes.
        declared = {name: (shape, dtype) for name, shape, dtype in scipy.io.whosmat(str(path)) if name in wanted}
        negative = [name for name, (shape, _) in declared.items() if any(d < 0 for d in shape)]
        if negative:  # scipy would read a negative dimension as a huge positive one
            raise DataError(f"{path}: .mat header declares a negative dimension for {', '.join(negative)}")
        claimed = sum(int(np.prod(shape, dtype=object)) * _MAT_ITEMSIZE.get(dtype, 8) for shape, dtype in declared.values())
        if claimed > MAX_MAT_BYTES:
            raise DataError(f"{path}: .mat header claims {claimed} bytes of arrays, more than the {MAX_MAT_BYTES} allowed")
        missing = [n for n in names if n not in declared]
        if missing:
            expected = " and ".join(", ".join(names).rsplit(", ", 1))
            found = sorted(name for name, _, _ in scipy.io.whosmat(str(path)))
            raise DataError(f"{path}: expected variables {expected}, found {', '.join(found) or 'none'}")
        contents = scipy.io.loadmat(str(path), variable_names=[n for n in wanted if n in declared])
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError, zlib errors... for bad files
        raise DataError(f"{path}: not a readable .mat file ({type(exc).__name__}: {str(exc)[:120]})") from None
    return {n: contents[n] for n in wanted if n in contents}
