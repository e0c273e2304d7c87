"""Hostile inputs: the IDX and .mat readers either read a file or raise DataError, never anything
else, and never allocate what a lying header claims."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaelab.errors import DataError
from vaelab.data.formats import MAX_IDX_BYTES, read_idx, read_svhn_mat, write_idx

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid_idx() -> bytes:
    buf = io.BytesIO()
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 3, 4, 5)
    buf.write(header + images.tobytes())
    return buf.getvalue()


def _read_or_data_error(reader, path):
    try:
        return reader(path)
    except DataError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return None


@FUZZ
@given(st.binary(max_size=300))
def test_idx_random_bytes(tmp_path, payload):
    path = tmp_path / "f-idx3-ubyte"
    path.write_bytes(payload)
    _read_or_data_error(read_idx, path)


@FUZZ
@given(st.data(), st.booleans())
def test_idx_mutations_of_a_valid_file(tmp_path, data, compress):
    raw = bytearray(_valid_idx())
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw) + 5))])
    blob = gzip.compress(raw) if compress else raw
    if compress and data.draw(st.booleans()):  # damage the compressed stream too
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    path = tmp_path / ("f-idx3-ubyte" + (".gz" if compress else ""))
    path.write_bytes(blob)
    result = _read_or_data_error(read_idx, path)
    if result is not None:
        assert result.nbytes <= len(raw)


@FUZZ
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=4), st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]))
def test_idx_headers_claiming_any_size(tmp_path, dims, type_code):
    path = tmp_path / "h-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + bytes(64)))
    result = _read_or_data_error(read_idx, path)
    assert result is None or result.nbytes == 64


def test_header_claiming_a_trillion_items_is_refused_before_allocating(tmp_path):
    path = tmp_path / "big-idx1-ubyte"
    path.write_bytes(bytes([0, 0, 0x08, 2]) + struct.pack(">2I", 10**6, 10**6))
    with pytest.raises(DataError, match=f"more than the {MAX_IDX_BYTES} allowed"):
        read_idx(path)


def _valid_mat() -> bytes:
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [10]], np.uint8)})
    return buf.getvalue()


VALID_MAT = _valid_mat()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mat_mutations(tmp_path, data):
    raw = bytearray(VALID_MAT)
    for _ in range(data.draw(st.integers(0, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    raw = bytes(raw[: data.draw(st.integers(0, len(raw)))])
    path = tmp_path / "m.mat"
    path.write_bytes(raw)
    result = _read_or_data_error(read_svhn_mat, path)
    if result is not None:
        images, labels = result
        assert images.shape[1:] == (3, 32, 32) and labels.min() >= 0 and labels.max() <= 9


def test_writer_roundtrip_guard(tmp_path):
    with pytest.raises(ValueError):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.complex64))
