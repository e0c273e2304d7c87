"""Datasets: IDX reading, locating and downloading MNIST / Fashion-MNIST, binarization, cs236 subsets.

Images are held as one uint8 tensor on the training device; batches are taken by index and
binarized there (a fresh Bernoulli draw per batch), so no per-item Python runs in the hot path.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Refuse headers claiming more than this before reading anything: no MNIST-like file comes close,
# and a hostile header must not make us allocate terabytes.
MAX_IDX_BYTES = 1 << 32
_READ_CHUNK = 1 << 20


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a numpy array of its declared shape.

    Raises DataError naming the file for a wrong magic number, an unknown type code, a declared
    size that disagrees with the payload (truncated or trailing bytes), or an unreadable gzip stream.
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
            if not compressed:
                available = path.stat().st_size - 4 - 4 * ndim
                if available != n_bytes:
                    raise DataError(f"{path}: IDX header declares shape {shape} ({n_bytes} bytes) but the file holds {available}")
            payload = _read_exactly(f, n_bytes, path, shape)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"{path}: file not found") from None
        raise DataError(f"{path}: cannot read ({exc})") from None
    return np.frombuffer(payload, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _read_exactly(f, n_bytes: int, path: Path, shape) -> bytes:
    # Chunked, so a lying header in a gzip stream cannot trigger one huge allocation.
    chunks, got = [], 0
    while got <= n_bytes:
        chunk = f.read(min(_READ_CHUNK, n_bytes + 1 - got))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    if got != n_bytes:
        detail = "is truncated" if got < n_bytes else "has trailing bytes"
        raise DataError(f"{path}: IDX payload {detail} (header declares shape {tuple(shape)}, {n_bytes} bytes)")
    return b"".join(chunks)


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


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's IDX files live and how to check them.

    `sha256` holds the digest of each file's *decompressed* bytes, so a file verifies whether it was
    stored raw or gzipped and whichever mirror served it.
    """

    name: str
    folder: str
    mirrors: tuple[str, ...]
    sha256: dict  # base file name -> sha256 of the uncompressed IDX bytes

    def file(self, split: str, kind: str) -> str:
        prefix = {"train": "train", "test": "t10k"}[split]
        return f"{prefix}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="mnist",
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="fashion-mnist",
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
        ),
        sha256={
            "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
    ),
}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaelab"


def resolve_data_root(data_dir: str | os.PathLike | None) -> tuple[Path, bool]:
    """The data root: `data_dir`, else $VAELAB_DATA, else the per-user cache. Returns (root, explicit)."""
    if data_dir:
        return Path(data_dir).expanduser(), True
    if os.environ.get("VAELAB_DATA"):
        return Path(os.environ["VAELAB_DATA"]).expanduser(), True
    return default_cache_dir(), False


def _existing(folder: Path, base: str) -> Path | None:
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _decompressed_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"
    with (gzip.open if compressed else open)(path, "rb") as f:
        for chunk in iter(lambda: f.read(_READ_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download(spec: DatasetSpec, folder: Path, files: list[str], mirrors=None, timeout: float = 30.0) -> None:
    """Fetch `files` (base names) into `folder` as .gz, trying each mirror and verifying the sha256
    of the decompressed bytes. A file is renamed into place only once verified."""
    folder.mkdir(parents=True, exist_ok=True)
    for base in files:
        errors = []
        for mirror in mirrors or spec.mirrors:
            url = mirror.rstrip("/") + "/" + base + ".gz"
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out)
                got = _decompressed_sha256(Path(tmp))
                if got != spec.sha256[base]:
                    raise DataError(f"checksum mismatch for {url} (sha256 {got[:12]}..., expected {spec.sha256[base][:12]}...)")
                os.replace(tmp, folder / (base + ".gz"))
                break
            except (OSError, ValueError, EOFError, zlib.error, DataError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError("; ".join(errors))


def locate(dataset: str, data_dir=None, download_missing: bool = True, mirrors=None) -> Path:
    """The folder holding `dataset`'s four IDX files, downloading missing ones when allowed."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    spec = DATASETS[dataset]
    root, explicit = resolve_data_root(data_dir)
    if explicit and not root.is_dir():
        raise DataError(f"data directory {root} does not exist")
    folder = root / spec.folder
    missing = [base for base in spec.sha256 if _existing(folder, base) is None]
    if missing:
        expected = ", ".join(f"{base}[.gz]" for base in missing)
        if not download_missing:
            raise DataError(f"{folder}: missing {expected} (downloads are off)")
        try:
            download(spec, folder, missing, mirrors=mirrors)
        except DataError as exc:
            raise DataError(f"{folder}: missing {expected}; download failed: {exc}") from None
    return folder


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W) and labels as int64 (N,), both on one device."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def x_dim(self) -> int:
        return int(np.prod(self.images.shape[1:]))

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.name)

    def pixels(self, index=None) -> torch.Tensor:
        """Flattened float pixels in [0, 1] (the value / 255 used by the reference)."""
        images = self.images if index is None else self.images[index]
        return images.reshape(images.shape[0], -1).float().div_(255.0)


def load(dataset: str = "mnist", split: str = "train", data_dir=None, device="cpu", download_missing: bool = True) -> ImageSet:
    """Load one split of an IDX dataset as an ImageSet on `device`."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r} (choose train or test)")
    spec = DATASETS.get(dataset)
    folder = locate(dataset, data_dir, download_missing)
    images_path = _existing(folder, spec.file(split, "images"))
    labels_path = _existing(folder, spec.file(split, "labels"))
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{labels_path}: expected {images.shape[0]} labels to match {images_path.name}, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{labels_path}: labels must lie in 0..9")
    return ImageSet(torch.from_numpy(images.copy()).to(device), torch.from_numpy(labels.astype(np.int64)).to(device), f"{dataset}-{split}")


def binarize(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel: x ~ Bernoulli(pixel)."""
    return torch.bernoulli(pixels, generator=generator)


# --- The cs236 subsets (REFERENCE.md section 1): positions among the images of each digit. ---
CS236_TEST_POSITIONS = (
    (684, 559, 629, 192, 835, 763, 707, 359, 9, 723),
    (277, 599, 1094, 600, 314, 705, 551, 87, 174, 849),
    (537, 845, 72, 777, 115, 976, 755, 448, 850, 99),
    (984, 177, 755, 797, 659, 147, 910, 423, 288, 961),
    (265, 697, 639, 544, 543, 714, 244, 151, 675, 510),
    (459, 882, 183, 28, 802, 128, 128, 53, 550, 488),
    (756, 273, 335, 388, 617, 42, 442, 543, 888, 257),
    (57, 291, 779, 430, 91, 398, 611, 908, 633, 84),
    (203, 324, 774, 964, 47, 639, 131, 972, 868, 180),
    (1000, 846, 143, 660, 227, 954, 791, 719, 909, 373),
)
CS236_TRAIN_LABELLED_POSITIONS = (
    (2732, 2607, 1653, 3264, 4931, 4859, 5827, 1033, 4373, 5874),
    (5924, 3468, 6458, 705, 2599, 2135, 2222, 2897, 1701, 537),
    (2893, 2163, 5072, 4851, 2046, 1871, 2496, 99, 2008, 755),
    (797, 659, 3219, 423, 3337, 2745, 4735, 544, 714, 2292),
    (151, 2723, 3531, 2930, 1207, 802, 2176, 2176, 1956, 3622),
    (3560, 756, 4369, 4484, 1641, 3114, 4984, 4353, 4071, 4009),
    (2105, 3942, 3191, 430, 4187, 2446, 2659, 1589, 2956, 2681),
    (4180, 2251, 4420, 4870, 1071, 4735, 6132, 5251, 5068, 1204),
    (3918, 1167, 1684, 3299, 2767, 2957, 4469, 560, 5425, 1605),
    (5795, 1472, 3678, 256, 3762, 5412, 1954, 816, 2435, 1634),
)


def subset_indices(labels: torch.Tensor, positions=CS236_TEST_POSITIONS) -> torch.Tensor:
    """Global indices of the images at `positions[d][j]` among the images of digit d, digits in order."""
    labels = labels.cpu()
    picked = []
    for digit, row in enumerate(positions):
        of_digit = torch.nonzero(labels == digit).flatten()
        row_t = torch.tensor(row, dtype=torch.long)
        if len(of_digit) <= int(row_t.max()):
            raise DataError(f"subset needs position {int(row_t.max())} of digit {digit}, but only {len(of_digit)} images have that label")
        picked.append(of_digit[row_t])
    return torch.cat(picked)


def cs236_test_subset(test: ImageSet, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 100-image evaluation subset, binarized once as the reference does:
    `torch.manual_seed(0); x = torch.bernoulli(x)` on the CPU. Returns (x, y) on the set's device."""
    index = subset_indices(test.labels)
    pixels = test.pixels(index.to(test.images.device)).cpu()
    x = binarize(pixels, torch.Generator().manual_seed(seed))
    return x.to(test.images.device), test.labels[index.to(test.labels.device)]


def binarized_test_set(test: ImageSet, seed: int = 0) -> torch.Tensor:
    """The whole test set binarized once with a fixed seed (CPU generator, so it is the same on any device)."""
    return binarize(test.pixels().cpu(), torch.Generator().manual_seed(seed)).to(test.images.device)
