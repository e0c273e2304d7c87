"""The standard benchmarks (CIFAR-10, statically binarized MNIST, Omniglot, Caltech 101 Silhouettes, Frey Faces) on small synthetic files the tests write in each
benchmark's published format: loaded by name through the registry, trained on from the CLI, downloads checked by
checksum, and each bad file refused in one line naming it. `vaelab data` lists every registered dataset."""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile

import numpy as np
import pytest
import scipy.io
import torch

from vaelab import data
from vaelab.data import cifar, matlab_sets, static_mnist
from vaelab.data.fetching import fetch
from vaelab.errors import DataError

FAST = ["--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.log_every=1", "--no-progress", "--device", "cpu"]
RECORDS = 6  # records per synthetic CIFAR batch file (the published files hold 10,000)


def one_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


# --- CIFAR-10 -------------------------------------------------------------------------------------------------------

@pytest.fixture
def small_cifar(monkeypatch):
    monkeypatch.setattr(cifar, "RECORDS_PER_FILE", RECORDS)


def cifar_records(n=RECORDS, seed=0, labels=None):
    """n records as the binary version lays them out: a label byte, then the R, G and B planes of 32 x 32."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels if labels is not None else np.arange(n) % 10, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1).tobytes(), images, labels


def write_cifar(root, seed=0):
    folder = root / "cifar10" / cifar.MEMBER_FOLDER
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate([*cifar.SPLITS["train"], *cifar.SPLITS["test"]]):
        raw, images, labels = cifar_records(seed=seed + i)
        (folder / name).write_bytes(raw)
        written[name] = (images, labels)
    return written


def test_cifar10_loads_by_name_channel_major_with_its_classes(tmp_path, small_cifar):
    written = write_cifar(tmp_path)
    train = data.load("cifar10", "train", tmp_path, download_missing=False)
    assert train.images.shape == (5 * RECORDS, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.x_dim == 3072
    # the third record of data_batch_2: its label byte and its pixels, plane by plane
    images, labels = written["data_batch_2.bin"]
    assert torch.equal(train.images[RECORDS + 2], torch.from_numpy(images[2])) and int(train.labels[RECORDS + 2]) == labels[2]
    assert train.classes[0] == "airplane" and train.classes[9] == "truck" and len(train.classes) == 10
    test = data.load("cifar10", "test", tmp_path, download_missing=False)
    assert len(test) == RECORDS and torch.equal(test.images, torch.from_numpy(written["test_batch.bin"][0]))
    dataset = data.lookup("cifar10")
    assert dataset.image_shape == (3, 32, 32) and dataset.splits == ("train", "test")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        data.load("cifar10", "valid", tmp_path)


@pytest.mark.parametrize("likelihood", ["gaussian", "dlogistic"])
def test_cifar10_trains_a_conv_vae_from_the_cli(cli, tmp_path, small_cifar, likelihood):
    write_cifar(tmp_path)
    proc = cli("train", "vae", "--dataset", "cifar10", "--data-dir", tmp_path, "--net", "conv", "--likelihood", likelihood,
               "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["dataset"] == "cifar10" and saved["model"]["image_shape"] == [3, 32, 32]


@pytest.mark.parametrize("size, message", [(cifar.RECORD * RECORDS - 1, "not a whole number of 3073-byte records"),
                                           (cifar.RECORD * (RECORDS + 1), f"holds {RECORDS + 1} records")])
def test_a_cifar10_file_of_the_wrong_size_is_one_line(cli, tmp_path, small_cifar, size, message):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar10" / cifar.MEMBER_FOLDER / "data_batch_3.bin"
    bad.write_bytes(bytes(size))
    with pytest.raises(DataError, match=message) as err:
        data.load("cifar10", "train", tmp_path, download_missing=False)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    one_line(cli("train", "vae", "--dataset", "cifar10", "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST), bad, message)
    assert not (tmp_path / "run").exists()


def test_a_cifar10_label_outside_0_to_9_is_one_line(tmp_path, small_cifar):
    write_cifar(tmp_path)
    bad = tmp_path / "cifar10" / cifar.MEMBER_FOLDER / "test_batch.bin"
    bad.write_bytes(cifar_records(labels=[0, 1, 2, 10, 4, 5])[0])
    with pytest.raises(DataError, match="record 3 has label 10") as err:
        data.load("cifar10", "test", tmp_path, download_missing=False)
    assert str(bad) in str(err.value)


def cifar_archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def test_cifar10_is_downloaded_md5_checked_and_only_its_batch_files_extracted(tmp_path, small_cifar, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    members = {f"{cifar.MEMBER_FOLDER}/{name}": cifar_records(seed=i)[0]
               for i, name in enumerate([*cifar.SPLITS["train"], *cifar.SPLITS["test"]])}
    members["../escape.txt"] = b"never written"
    cifar_archive(mirror / cifar.ARCHIVE, members)
    good = hashlib.md5((mirror / cifar.ARCHIVE).read_bytes()).hexdigest()
    monkeypatch.setattr(cifar, "MIRRORS", (mirror.as_uri(),))
    monkeypatch.setattr(cifar, "CHECKSUMS", {cifar.ARCHIVE: "md5:" + "0" * 32})
    (tmp_path / "root-bad").mkdir()
    with pytest.raises(DataError, match="checksum mismatch") as err:
        data.load("cifar10", "test", tmp_path / "root-bad")
    assert "\n" not in str(err.value) and not (tmp_path / "root-bad" / "cifar10" / cifar.ARCHIVE).exists()
    monkeypatch.setattr(cifar, "CHECKSUMS", {cifar.ARCHIVE: "md5:" + good})
    (tmp_path / "root").mkdir()
    test = data.load("cifar10", "test", tmp_path / "root")
    assert len(test) == RECORDS
    extracted = sorted(p.name for p in (tmp_path / "root" / "cifar10" / cifar.MEMBER_FOLDER).iterdir())
    assert extracted == ["test_batch.bin"] and not (tmp_path / "root" / "escape.txt").exists()
    assert len(data.load("cifar10", "train", tmp_path / "root")) == 5 * RECORDS  # from the archive already there
    with pytest.raises(DataError, match="downloads are off"):
        data.load("cifar10", "test", tmp_path / "root-bad", download_missing=False)
    # an archive put there by hand is unpacked only if it is the published one
    (tmp_path / "root-bad" / "cifar10" / cifar.ARCHIVE).write_bytes(b"not the archive")
    with pytest.raises(DataError, match="is not the published archive's") as err:
        data.load("cifar10", "test", tmp_path / "root-bad", download_missing=False)
    assert str(tmp_path / "root-bad" / "cifar10" / cifar.ARCHIVE) in str(err.value)


def test_the_published_cifar10_checksum_is_the_md5_of_the_archive_itself(tmp_path):
    # the archive's md5 is of its gzip bytes, so the digest must not decompress first (as the IDX checksums do)
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    cifar_archive(mirror / "x.tar.gz", {"a": b"abc"})
    md5 = hashlib.md5((mirror / "x.tar.gz").read_bytes()).hexdigest()
    assert fetch("x.tar.gz", tmp_path / "out", (mirror.as_uri(),), "md5:" + md5).is_file()
    assert cifar.CHECKSUMS[cifar.ARCHIVE] == "md5:c32a1d4ab5d03f1284b67883e8d87530"


# --- Statically binarized MNIST -------------------------------------------------------------------------------------

def write_amat(path, n, seed=0, newline="\n"):
    bits = (np.random.default_rng(seed).random((n, 784)) < 0.2).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(" ".join(map(str, row)) + newline for row in bits))
    return bits


def write_static_mnist(root):
    folder = root / "static-mnist"
    return {split: write_amat(folder / name, n, seed=i)
            for i, (split, name, n) in enumerate(zip(static_mnist.SPLITS, static_mnist.SPLITS.values(), (12, 5, 7)))}


def test_static_mnist_loads_each_split_as_fixed_binary_pixels(tmp_path):
    bits = write_static_mnist(tmp_path)
    for split, n in (("train", 12), ("valid", 5), ("test", 7)):
        images = data.load("static-mnist", split, tmp_path, download_missing=False)
        assert len(images) == n and images.image_shape == (28, 28) and images.x_dim == 784
        assert images.uint8().dtype == torch.uint8 and torch.equal(images.uint8(), torch.from_numpy(bits[split].reshape(n, 28, 28) * 255))
        assert images.labels.dtype == torch.int64 and images.classes == ()
    train = data.load("static-mnist", "train", tmp_path, download_missing=False)
    assert train.packed_shape == (28, 28)  # held as fixed binary pixels: what a binary model sees is these pixels
    x = train.pixels()
    assert torch.equal(data.binarize_batch(train.uint8()), x)  # dynamic binarization of binary pixels is the identity
    assert torch.equal(data.binarized_test_set(train), x)
    assert data.lookup("static-mnist").splits == ("train", "valid", "test")


def test_static_mnist_reads_windows_line_ends_and_trailing_blank_lines(tmp_path):
    path = tmp_path / "x.amat"
    bits = write_amat(path, 3, newline=" \r\n")
    path.write_bytes(path.read_bytes() + b"\n\n")
    assert np.array_equal(static_mnist.read_amat(path), bits)


def test_static_mnist_trains_from_the_cli(cli, tmp_path):
    write_static_mnist(tmp_path)
    proc = cli("train", "vae", "--dataset", "static-mnist", "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("edit, message", [
    (lambda lines: lines.__setitem__(2, lines[2][:-2]), "line 3 holds 783 values, expected 784"),
    (lambda lines: lines.__setitem__(1, lines[1] + " 0"), "line 2 holds 785 values, expected 784"),
    (lambda lines: lines.__setitem__(4, "2" + lines[4][1:]), "line 5 holds a value other than 0 or 1"),
    (lambda lines: lines.__setitem__(0, "0.5" + lines[0][1:]), "line 1 holds a value other than 0 or 1"),
    (lambda lines: lines.__setitem__(3, "10" + lines[3][1:]), "line 4 holds a value other than 0 or 1"),
    (lambda lines: lines.insert(2, ""), "line 3 holds 0 values"),
])
def test_a_malformed_amat_file_is_one_line_naming_it(cli, tmp_path, edit, message):
    write_static_mnist(tmp_path)
    path = tmp_path / "static-mnist" / "binarized_mnist_train.amat"
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        data.load("static-mnist", "train", tmp_path, download_missing=False)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    one_line(cli("train", "vae", "--dataset", "static-mnist", "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST), path, message)


def test_static_mnist_missing_files_name_the_folder_and_file(tmp_path, monkeypatch):
    monkeypatch.setattr(static_mnist, "MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(DataError) as err:
        data.load("static-mnist", "test", tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "static-mnist") in msg and "binarized_mnist_test.amat" in msg and "download failed" in msg
    assert "\n" not in msg and not any((tmp_path / "static-mnist").iterdir())


def test_static_mnist_downloads_when_missing(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    bits = write_amat(mirror / "binarized_mnist_valid.amat", 4)
    monkeypatch.setattr(static_mnist, "MIRRORS", (mirror.as_uri(),))
    (tmp_path / "root").mkdir()
    valid = data.load("static-mnist", "valid", tmp_path / "root")
    assert torch.equal(valid.pixels(), torch.from_numpy(bits).float())


# --- Omniglot, Caltech 101 Silhouettes, Frey Faces (.mat) ---------------------------------------------------------

def column_major(images):
    """(N, 28, 28) images as MATLAB stores them: each image column by column, one row of 784 per image."""
    return images.transpose(0, 2, 1).reshape(len(images), -1)


def write_omniglot(root, n_train=9, n_test=4):
    rng = np.random.default_rng(0)
    train, test = rng.random((n_train, 28, 28)), rng.random((n_test, 28, 28))
    (root / "omniglot").mkdir(parents=True)
    scipy.io.savemat(root / "omniglot" / "chardata.mat", {"data": column_major(train).T, "testdata": column_major(test).T})
    return train, test


def test_omniglot_loads_the_iwae_split_as_grey_images_binarized_dynamically(tmp_path):
    train, test = write_omniglot(tmp_path)
    loaded = data.load("omniglot", "train", tmp_path, download_missing=False)
    assert loaded.images.shape == (9, 28, 28) and loaded.images.dtype == torch.uint8 and loaded.packed_shape is None
    assert torch.equal(loaded.images, torch.from_numpy(np.rint(train * 255).astype(np.uint8)))  # row-major, as drawn
    assert len(data.load("omniglot", "test", tmp_path, download_missing=False)) == 4 and loaded.classes == ()


def write_caltech(root, sizes=(8, 3, 4), **overrides):
    rng = np.random.default_rng(0)
    contents, silhouettes = {}, {}
    for key, n in zip(("train", "val", "test"), sizes):
        silhouettes[key] = (rng.random((n, 28, 28)) < 0.3).astype(np.uint8)
        contents[f"{key}_data"] = column_major(1 - silhouettes[key]).astype(np.float64)  # the file's silhouettes are 0
        contents[f"{key}_labels"] = (np.arange(n) % 101 + 1).reshape(n, 1).astype(np.float64)
    contents["classnames"] = np.array([f"name{i}" for i in range(101)], dtype=object)
    contents.update(overrides)
    (root / "caltech101-silhouettes").mkdir(parents=True)
    scipy.io.savemat(root / "caltech101-silhouettes" / "caltech101_silhouettes_28_split1.mat", contents)
    return silhouettes


def test_caltech101_loads_fixed_binary_silhouettes_with_labels_and_class_names(tmp_path):
    silhouettes = write_caltech(tmp_path)
    for split, key, n in (("train", "train", 8), ("valid", "val", 3), ("test", "test", 4)):
        loaded = data.load("caltech101", split, tmp_path, download_missing=False)
        assert len(loaded) == n and loaded.packed_shape == (28, 28)
        assert torch.equal(loaded.uint8(), torch.from_numpy(silhouettes[key] * 255))
        assert loaded.labels.tolist() == list(range(n)) and loaded.classes[:2] == ("name0", "name1")
        x = loaded.pixels()
        assert torch.equal(data.binarize_batch(loaded.uint8()), x) and torch.equal(data.binarized_test_set(loaded), x)


def test_caltech101_non_binary_pixels_are_one_line(tmp_path):
    write_caltech(tmp_path, val_data=np.full((3, 784), 0.5))
    with pytest.raises(DataError, match="val_data holds values other than 0 and 1") as err:
        data.load("caltech101", "valid", tmp_path, download_missing=False)
    assert "caltech101_silhouettes_28_split1.mat" in str(err.value) and "\n" not in str(err.value)


def write_frey(root, n=40):
    faces = np.random.default_rng(0).integers(0, 256, (n, 28, 20), dtype=np.uint8)
    (root / "frey").mkdir(parents=True)
    scipy.io.savemat(root / "frey" / "frey_rawface.mat", {"ff": faces.reshape(n, -1).T})
    return faces


def test_frey_faces_has_a_fixed_split_of_its_images(tmp_path):
    faces = write_frey(tmp_path)
    splits = {s: data.load("frey", s, tmp_path, download_missing=False) for s in ("train", "valid", "test")}
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [32, 4, 4] and splits["train"].image_shape == (28, 20)
    every = torch.cat([splits[s].images for s in splits])
    assert sorted(map(bytes, every.numpy())) == sorted(map(bytes, faces))  # each image in exactly one split
    assert {k: len(v) for k, v in matlab_sets.frey_split(1965).items()} == {"test": 200, "valid": 200, "train": 1565}
    assert torch.equal(splits["test"].images, data.load("frey", "test", tmp_path, download_missing=False).images)


def test_frey_faces_trains_a_conv_vae_from_the_cli(cli, tmp_path):
    write_frey(tmp_path)
    proc = cli("train", "vae", "--dataset", "frey", "--data-dir", tmp_path, "--net", "conv", "--likelihood", "gaussian",
               "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name, folder, file, contents, message", [
    ("omniglot", "omniglot", "chardata.mat", {"testdata": np.zeros((784, 2))}, "expected variables data, found testdata"),
    ("omniglot", "omniglot", "chardata.mat", {"data": np.full((784, 2), 2.0), "testdata": np.zeros((784, 2))}, "data holds values outside [0, 1]"),
    ("omniglot", "omniglot", "chardata.mat", {"data": np.zeros((700, 2)), "testdata": np.zeros((784, 2))}, "data must be a numeric array of shape (784, N)"),
    ("frey", "frey", "frey_rawface.mat", {"ff": np.zeros((560, 10), np.float64)}, "ff must be uint8 of shape (560, N)"),
    ("caltech101", "caltech101-silhouettes", "caltech101_silhouettes_28_split1.mat",
     {"train_data": np.zeros((4, 784)), "train_labels": np.ones((3, 1))}, "train_labels holds 3 labels for 4 images"),
])
def test_malformed_mat_files_are_one_line_naming_them(cli, tmp_path, name, folder, file, contents, message):
    (tmp_path / folder).mkdir()
    scipy.io.savemat(tmp_path / folder / file, contents)
    with pytest.raises(DataError, match=re.escape(message)) as err:
        data.load(name, "train", tmp_path, download_missing=False)
    assert str(tmp_path / folder / file) in str(err.value) and "\n" not in str(err.value)
    (tmp_path / folder / file).write_bytes(b"MATLAB 5.0 MAT-file" + bytes(100))
    one_line(cli("train", "vae", "--dataset", name, "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST), tmp_path / folder / file,
             "not a readable .mat file")


# --- vaelab data ----------------------------------------------------------------------------------------------------

def test_vaelab_data_lists_every_registered_dataset_and_whether_its_files_are_present(cli, tmp_path, small_cifar):
    write_cifar(tmp_path)
    proc = cli("data", "--data-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in data.REGISTRY:
        assert f"\n{name}: " in proc.stdout
    block = proc.stdout.split("\ncifar10: ")[1].split("\n\n")[0]
    assert "3 x 32 x 32" in block and "airplane" in block and "present" in block and str(tmp_path / "cifar10") in block
    block = proc.stdout.split("\nstatic-mnist: ")[1].split("\n\n")[0]
    assert "28 x 28" in block and "no labels" in block and "missing binarized_mnist_train.amat" in block
