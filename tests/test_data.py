"""IDX reading on good and malformed files, locating and downloading data, subsets, binarization."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import shutil
import struct
import threading

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.errors import DataError


def test_idx_roundtrip_raw_and_gzip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        data.write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(data.read_idx(tmp_path / name), images)
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    data.write_idx(tmp_path / "f.idx", floats)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "f.idx"), floats)


def _header(type_code, dims):
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"\x01\x02\x08\x01" + struct.pack(">I", 3) + b"abc", "bad magic"),
        (b"", "bad magic"),
        (_header(0x07, [3]) + b"abc", "unknown IDX type code"),
        (_header(0x08, [])[:4], "zero dimensions"),
        (b"\x00\x00\x08\x03" + b"\x00\x00", "truncated IDX header"),
        (_header(0x08, [10, 28, 28]) + bytes(784 * 9), "declares shape"),
        (_header(0x08, [2]) + b"abc", "declares shape"),
        (_header(0x08, [100000, 100000, 100]), "more than"),
    ],
)
def test_malformed_idx_raw_gives_clear_error(tmp_path, payload, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError) as err:
        data.read_idx(path)
    assert message in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "payload, message",
    [
        (_header(0x08, [10, 28, 28]) + bytes(784 * 9), "truncated"),
        (_header(0x08, [2]) + b"abc", "trailing bytes"),
        (_header(0x08, [10**6, 10**6, 10**6]), "more than"),
    ],
)
def test_malformed_idx_gzip_gives_clear_error(tmp_path, payload, message):
    path = tmp_path / "bad-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(payload))
    with pytest.raises(DataError, match=message):
        data.read_idx(path)


def test_corrupt_gzip_stream_gives_clear_error(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_header(0x08, [1000]) + np.random.default_rng(0).bytes(1000))[:400])
    with pytest.raises(DataError, match=str(path)):
        data.read_idx(path)


def test_load_tiny_dataset_and_shapes(tiny_data):
    train = data.load("mnist", "train", tiny_data)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (28, 28)
    assert train.labels.dtype == torch.int64 and len(train.labels) == len(train)
    x = train.pixels(torch.arange(4))
    assert x.shape == (4, 784) and 0 <= x.min() and x.max() <= 1


def test_label_count_mismatch_names_the_file(tmp_path, tiny_data):
    shutil.copytree(tiny_data / "mnist", tmp_path / "mnist")
    data.write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte", np.zeros(7, dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte"):
        data.load("mnist", "train", tmp_path)


def test_missing_data_directory_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"data directory {missing} does not exist"):
        data.load("mnist", "train", missing)


def test_missing_files_without_download_name_folder_and_files(tmp_path):
    with pytest.raises(DataError) as err:
        data.locate("mnist", tmp_path, download_missing=False)
    msg = str(err.value)
    assert str(tmp_path / "mnist") in msg and "train-images-idx3-ubyte[.gz]" in msg and "\n" not in msg


def test_failed_download_names_folder_and_files(tmp_path):
    # Port 9 on loopback refuses connections, as an offline machine would.
    with pytest.raises(DataError) as err:
        data.locate("mnist", tmp_path, mirrors=["http://127.0.0.1:9/"])
    msg = str(err.value)
    assert str(tmp_path / "mnist") in msg and "t10k-labels-idx1-ubyte[.gz]" in msg and "download failed" in msg
    assert not list((tmp_path / "mnist").glob("*.part"))


@pytest.fixture
def http_root(tmp_path):
    """A local HTTP server on 127.0.0.1 serving tmp_path/www; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_verifies_real_checksums_from_local_mirror(http_root, tmp_path, real_data):
    www, url = http_root
    base = "t10k-labels-idx1-ubyte"
    raw = (real_data / "mnist" / base).read_bytes() if (real_data / "mnist" / base).exists() else gzip.open(real_data / "mnist" / (base + ".gz")).read()
    (www / "good").mkdir()
    (www / "good" / (base + ".gz")).write_bytes(gzip.compress(raw))
    dest = tmp_path / "cache" / "mnist"
    # The first mirror 404s; the second serves the real file, which must match the built-in sha256.
    data.download(data.DATASETS["mnist"], dest, [base], mirrors=[f"{url}/missing/", f"{url}/good/"])
    assert (dest / (base + ".gz")).is_file()
    labels = data.read_idx(dest / (base + ".gz"))
    assert labels.shape == (10000,)


def test_download_rejects_checksum_mismatch_and_leaves_nothing(http_root, tmp_path):
    www, url = http_root
    base = "t10k-labels-idx1-ubyte"
    (www / (base + ".gz")).write_bytes(gzip.compress(_header(0x08, [3]) + b"\x01\x02\x03"))
    dest = tmp_path / "cache"
    with pytest.raises(DataError, match="checksum mismatch"):
        data.download(data.DATASETS["mnist"], dest, [base], mirrors=[url + "/"])
    assert list(dest.iterdir()) == []


def test_download_from_file_urls_then_load(tmp_path, tiny_data):
    # A spec whose checksums are those of the tiny dataset, served from file:// URLs.
    src = tiny_data / "mnist"
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    sums = {}
    for path in src.iterdir():
        (mirror / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    spec = data.DatasetSpec("tiny", "tiny", "idx", {}, (mirror.as_uri() + "/",), {k: "sha256:" + v for k, v in sums.items()}, ".gz")
    data.download(spec, tmp_path / "root" / "tiny", sorted(sums))
    for name in sums:
        np.testing.assert_array_equal(data.read_idx(tmp_path / "root" / "tiny" / (name + ".gz")), data.read_idx(src / name))


def test_subset_indices_pick_positions_among_each_digit():
    labels = torch.tensor([3, 0, 1, 0, 1, 0, 2, 2, 1, 3])
    positions = ((2, 0), (1, 1), (0, 1), (1, 0))  # the row of digit 1 repeats a position
    idx = data.subset_indices(labels, positions)
    assert idx.tolist() == [5, 1, 4, 4, 6, 7, 9, 0]
    with pytest.raises(DataError, match="digit 2"):
        data.subset_indices(labels, ((0,), (0,), (5,)))


def test_cs236_subsets_on_real_mnist(real_data):
    test = data.load("mnist", "test", real_data)
    idx = data.subset_indices(test.labels)
    assert len(idx) == 100
    assert test.labels[idx].tolist() == [d for d in range(10) for _ in range(10)]
    assert idx[55] == idx[56] and len(set(idx.tolist())) == 99  # row 5 repeats position 128
    train = data.load("mnist", "train", real_data)
    lab = data.subset_indices(train.labels, data.CS236_TRAIN_LABELLED_POSITIONS)
    assert train.labels[lab].tolist() == [d for d in range(10) for _ in range(10)]
    assert lab[46] == lab[47] and len(set(lab.tolist())) == 99  # row 4 repeats position 2176


def test_cs236_binarization_matches_reference_recipe(tiny_data):
    test = data.load("mnist", "test", tiny_data)
    x, y = data.cs236_test_subset(test)
    reference = test.pixels(data.subset_indices(test.labels))
    torch.manual_seed(0)
    expected = torch.bernoulli(reference)  # the assignment's code: torch.manual_seed(0); torch.bernoulli(x)
    assert torch.equal(x, expected)
    assert y.tolist() == [d for d in range(10) for _ in range(10)]
    assert set(x.unique().tolist()) <= {0.0, 1.0}


def test_binarize_draws_fresh_bernoulli_per_call():
    pixels = torch.full((1000, 50), 0.3)
    a, b = data.binarize(pixels), data.binarize(pixels)
    assert not torch.equal(a, b)
    assert abs(a.mean().item() - 0.3) < 0.01


def test_training_batches_are_bernoulli_draws_of_the_pixels():
    """binarize_batch (1[255 u < pixel]) is Bernoulli(pixel / 255): exact at 0 and 255, the right mean
    within 5 standard errors elsewhere, binary float pixels flattened per image, fresh at every call."""
    torch.manual_seed(0)
    values = torch.tensor([0, 255, 128, 26, 247, 1], dtype=torch.uint8)
    images = values.repeat(200_000, 1).reshape(200_000, 1, 2, 3)
    draws = data.binarize_batch(images)
    assert draws.shape == (200_000, 6) and draws.dtype == torch.float32
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert draws[:, 0].sum() == 0 and draws[:, 1].sum() == len(draws)
    p = values.double() / 255
    assert ((draws.double().mean(0) - p).abs() <= 5 * (p * (1 - p) / len(draws)).sqrt()).all()
    assert not torch.equal(draws, data.binarize_batch(images))


def test_corrupt_deflate_data_gives_clear_error(tmp_path):
    good = gzip.compress(_header(0x08, [5000]) + np.random.default_rng(1).bytes(5000))
    bad = bytearray(good)
    bad[30:60] = b"\xff" * 30  # damage the deflate stream, keep the gzip header
    path = tmp_path / "damaged-idx1-ubyte.gz"
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError, match=str(path)):
        data.read_idx(path)


def test_a_gzip_bomb_whose_header_disagrees_is_refused_before_its_payload_is_read(tmp_path, tiny_data, monkeypatch):
    """A 1 MB gzip stream that inflates to 785 MB of images for the 600 labels beside it: refused from the
    headers alone, so no memory is spent on it (it once peaked at 3.2 GB before its error)."""
    import vaelab.data.formats as formats

    root = tmp_path / "root"
    shutil.copytree(tiny_data / "mnist", root / "mnist")
    bomb = root / "mnist" / "train-images-idx3-ubyte"
    bomb.unlink()
    with gzip.open(str(bomb) + ".gz", "wb", compresslevel=1) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_000_000, 28, 28))
        f.write(bytes(1 << 20))  # only the start: the header is what matters
    payloads = []
    real = formats._read_exactly
    monkeypatch.setattr(formats, "_read_exactly", lambda f, n, path, shape: payloads.append(path.name) or real(f, n, path, shape))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: expected 1000000 labels to match train-images-idx3-ubyte.gz"):
        data.load("mnist", "train", root, download_missing=False)
    assert payloads == ["train-labels-idx1-ubyte"]  # the labels (600 bytes) were read, the images never


def test_idx_headers_of_the_wrong_kind_are_refused_before_reading(tmp_path, tiny_data):
    root = tmp_path / "root"
    shutil.copytree(tiny_data / "mnist", root / "mnist")
    data.write_idx(root / "mnist" / "train-images-idx3-ubyte", np.zeros((600, 784), dtype=np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: expected uint8 images of shape \(N, H, W\), header declares"):
        data.load("mnist", "train", root, download_missing=False)
    data.write_idx(root / "mnist" / "train-labels-idx1-ubyte", np.zeros(600, dtype=np.int32))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte: expected uint8 labels"):
        data.load("mnist", "train", root, download_missing=False)


def test_a_published_file_damaged_on_disk_is_refused(tmp_path, real_data):
    """1,000 random bytes written into the middle of MNIST's test images: same size, same header, different
    bytes; refused by the published sha256 instead of being trained or evaluated on."""
    shutil.copytree(real_data / "mnist", tmp_path / "mnist")
    path = next(p for p in (tmp_path / "mnist").iterdir() if p.name.startswith("t10k-images"))
    if path.suffix == ".gz":
        raw = gzip.decompress(path.read_bytes())
        path.unlink()
        path = path.with_suffix("")
    else:
        raw = path.read_bytes()
    damaged = bytearray(raw)
    damaged[4_000_000:4_001_000] = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(damaged))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: its bytes differ from the published file's .* delete it"):
        data.load("mnist", "test", tmp_path, download_missing=False)
    path.write_bytes(raw)  # the intact file loads
    assert len(data.load("mnist", "test", tmp_path, download_missing=False)) == 10000


def test_a_failed_download_without_a_named_data_root_says_how_to_name_one(tmp_path, monkeypatch):
    from vaelab.data import datasets

    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "cache" / "vaelab").mkdir(parents=True)
    with pytest.raises(datasets.DataError) as caught:
        datasets.locate("mnist", None, mirrors=["http://127.0.0.1:9/"])
    msg = str(caught.value)
    assert "download failed" in msg and "--data-dir or $VAELAB_DATA" in msg and "mnist/" in msg
    with pytest.raises(datasets.DataError) as caught:  # a root the user named: no hint, the folder is theirs
        datasets.locate("mnist", tmp_path / "cache" / "vaelab", mirrors=["http://127.0.0.1:9/"])
    assert "VAELAB_DATA" not in str(caught.value)
