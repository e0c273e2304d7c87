"""The SVHN .mat loader on small synthetic files the tests write, malformed ones included."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import scipy.io

from vaelab import data
from vaelab.errors import DataError
from vaelab.data.formats import read_svhn_mat


def _write_svhn(path, n=12, labels=None, **overrides):
    rng = np.random.default_rng(0)
    contents = {"X": rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8),
                "y": (labels if labels is not None else (np.arange(n) % 10 + 1)).reshape(n, 1).astype(np.uint8)}
    contents.update(overrides)
    scipy.io.savemat(path, contents)
    return contents


def test_reads_images_channels_first_and_maps_label_10_to_0(tmp_path):
    contents = _write_svhn(tmp_path / "train_32x32.mat")
    images, labels = read_svhn_mat(tmp_path / "train_32x32.mat")
    assert images.shape == (12, 3, 32, 32) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[5, 1], contents["X"][:, :, 1, 5])  # image 5, green channel
    assert labels.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2]


def test_load_svhn_split_as_imageset(tmp_path):
    (tmp_path / "svhn").mkdir()
    _write_svhn(tmp_path / "svhn" / "test_32x32.mat", n=7)
    test = data.load("svhn", "test", tmp_path, download_missing=False)
    assert test.images.shape == (7, 3, 32, 32) and test.x_dim == 3072
    x = test.pixels()
    assert x.shape == (7, 3072) and 0 <= float(x.min()) and float(x.max()) <= 1
    # Only the requested split's file is needed.
    with pytest.raises(DataError, match="train_32x32.mat"):
        data.load("svhn", "train", tmp_path, download_missing=False)
    with pytest.raises(DataError, match="unknown split 'valid'"):
        data.load("svhn", "valid", tmp_path)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", "not a readable .mat file"),
        (b"MATLAB 5.0 MAT-file" + bytes(100), "not a readable .mat file"),
        (np.random.default_rng(0).bytes(3000), "not a readable .mat file"),
    ],
)
def test_corrupt_mat_files(tmp_path, payload, message):
    path = tmp_path / "train_32x32.mat"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=message) as err:
        read_svhn_mat(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_truncated_mat_file(tmp_path):
    path = tmp_path / "train_32x32.mat"
    _write_svhn(path, n=50)
    path.write_bytes(path.read_bytes()[:20000])
    with pytest.raises(DataError, match=str(path)):
        read_svhn_mat(path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"X": np.zeros((28, 28, 3, 4), np.uint8)}, "X must be uint8 of shape"),
        ({"X": np.zeros((32, 32, 3, 4), np.float32)}, "X must be uint8 of shape"),
        ({"y": np.ones((5, 1), np.uint8)}, "5 labels for 12 images"),
        ({"y": np.zeros((12, 1), np.uint8)}, "labels must lie in 1..10"),
    ],
)
def test_malformed_arrays(tmp_path, overrides, message):
    path = tmp_path / "x.mat"
    _write_svhn(path, **overrides)
    with pytest.raises(DataError, match=message):
        read_svhn_mat(path)


def test_missing_variables(tmp_path):
    path = tmp_path / "x.mat"
    scipy.io.savemat(path, {"images": np.zeros((2, 2))})
    with pytest.raises(DataError, match="expected variables X and y"):
        read_svhn_mat(path)


def test_svhn_missing_and_download_failure_name_folder_and_file(tmp_path):
    with pytest.raises(DataError) as err:
        data.locate("svhn", tmp_path, mirrors=["http://127.0.0.1:9/"], splits=["test"])
    msg = str(err.value)
    assert str(tmp_path / "svhn") in msg and "test_32x32.mat" in msg and "download failed" in msg
    assert "train_32x32.mat" not in msg


def test_svhn_download_verifies_md5(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _write_svhn(mirror / "test_32x32.mat", n=5)
    good = hashlib.md5((mirror / "test_32x32.mat").read_bytes()).hexdigest()
    spec = data.DATASETS["svhn"]
    fake = data.DatasetSpec(spec.name, spec.folder, spec.format, spec.splits, (mirror.as_uri(),), {"test_32x32.mat": "md5:" + good})
    data.download(fake, tmp_path / "root" / "svhn", ["test_32x32.mat"])
    images, _ = read_svhn_mat(tmp_path / "root" / "svhn" / "test_32x32.mat")
    assert images.shape[0] == 5
    bad = data.DatasetSpec(spec.name, spec.folder, spec.format, spec.splits, (mirror.as_uri(),), {"test_32x32.mat": "md5:" + "0" * 32})
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download(bad, tmp_path / "other", ["test_32x32.mat"])
    assert list((tmp_path / "other").iterdir()) == []


def test_huge_declared_arrays_are_refused_before_loading(tmp_path, monkeypatch):
    import vaelab.data.formats as formats

    path = tmp_path / "x.mat"
    _write_svhn(path, n=4)
    monkeypatch.setattr(formats, "MAX_MAT_BYTES", 1000)  # the 4 images claim 12,288 bytes
    loaded = []
    monkeypatch.setattr(scipy.io, "loadmat", lambda *a, **k: loaded.append(1))
    with pytest.raises(DataError, match="claims 12292 bytes"):
        read_svhn_mat(path)
    assert loaded == []


def test_a_negative_dimension_in_the_header_is_refused(tmp_path):
    """scipy reads a dimension of -12 as 12 and loads the file; vaelab refuses it as malformed."""
    import struct

    path = tmp_path / "train_32x32.mat"
    _write_svhn(path, n=12)
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<4i", 32, 32, 3, 12))
    raw[at : at + 16] = struct.pack("<4i", 32, 32, 3, -12)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="declares a negative dimension for X"):
        read_svhn_mat(path)
    _write_svhn(path, n=0)
    with pytest.raises(DataError, match="N >= 1"):
        read_svhn_mat(path)
