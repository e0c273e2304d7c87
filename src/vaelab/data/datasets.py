"""Datasets: locating and downloading MNIST / Fashion-MNIST / SVHN, loading, binarization, cs236 subsets.

Images are held as one uint8 tensor on the training device; batches are taken by index and
binarized there (a fresh Bernoulli draw per batch), so no per-item Python runs in the hot path.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from . import dsprites
from .checksums import file_digest
from .formats import read_idx, read_svhn_mat

@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset's files live, which files make each split, and how to check them.

    `checksums` maps each file to "algorithm:hexdigest" of its *decompressed* bytes (IDX files are
    fetched gzipped but may be stored either way); `remote_suffix` is appended to a file's name on
    the mirrors."""

    name: str
    folder: str
    format: str  # "idx" or "svhn-mat"
    splits: dict  # split -> tuple of file names (images first)
    mirrors: tuple[str, ...]
    checksums: dict
    remote_suffix: str = ""
    classes: tuple[str, ...] = tuple(str(d) for d in range(10))
    """The names of labels 0..9, for figures."""
    image_shape: tuple[int, ...] = (28, 28)
    """(H, W) or (C, H, W) of one image, known before the files are read (settings are checked against it)."""

    def candidates(self, base: str) -> tuple[str, ...]:
        return (base, base + ".gz") if self.format == "idx" else (base,)


def _idx_splits():
    return {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"), "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        folder="mnist",
        format="idx",
        splits=_idx_splits(),
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
        checksums={
            "train-images-idx3-ubyte": "sha256:ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "sha256:65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "sha256:0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "sha256:ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        remote_suffix=".gz",
    ),
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        folder="fashion-mnist",
        format="idx",
        splits=_idx_splits(),
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://ossci-datasets.s3.amazonaws.com/fashion-mnist/",
        ),
        checksums={
            "train-images-idx3-ubyte": "sha256:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte": "sha256:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte": "sha256:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte": "sha256:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        remote_suffix=".gz",
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    ),
    # The official cropped-digit files (http://ufldl.stanford.edu/housenumbers/); md5 as published
    # with torchvision's SVHN dataset.
    "svhn": DatasetSpec(
        name="svhn",
        folder="svhn",
        format="svhn-mat",
        splits={"train": ("train_32x32.mat",), "test": ("test_32x32.mat",), "extra": ("extra_32x32.mat",)},
        mirrors=("http://ufldl.stanford.edu/housenumbers/",),
        checksums={
            "train_32x32.mat": "md5:e26dedcc434d2e4c54c9b2d4a06d8373",
            "test_32x32.mat": "md5:eb5a983be6a315427106f1b164d9cef3",
            "extra_32x32.mat": "md5:a93ce644f1a588dc4d68dda5feec44a7",
        },
        image_shape=(3, 32, 32),
    ),
}


DATASET_NAMES = (*DATASETS, "dsprites")
"""Every dataset `load` knows: the downloaded ones and the generated dSprites."""


def image_shape_of(dataset: str) -> tuple[int, ...]:
    """The shape of one image of a dataset, without reading it."""
    return (dsprites.SIZE, dsprites.SIZE) if dataset == "dsprites" else DATASETS[dataset].image_shape


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


def existing_data_root(data_dir: str | os.PathLike | None) -> Path:
    """resolve_data_root's root, refused in one line when it was given (option or $VAELAB_DATA) and does not exist."""
    root, explicit = resolve_data_root(data_dir)
    if explicit and not root.is_dir():
        raise DataError(f"data directory {root} {'is a file, not a folder' if root.exists() else 'does not exist'}")
    return root


def _existing(spec: DatasetSpec, folder: Path, base: str) -> Path | None:
    for name in spec.candidates(base):
        if (folder / name).is_file():
            return folder / name
    return None


def download(spec: DatasetSpec, folder: Path, files: list[str], mirrors=None, timeout: float = 30.0) -> None:
    """Fetch `files` into `folder`, trying each mirror in turn and verifying each file's checksum.
    A file is renamed into place only once verified; nothing partial is left behind."""
    folder.mkdir(parents=True, exist_ok=True)
    for base in files:
        algorithm, expected = spec.checksums[base].split(":")
        errors = []
        for mirror in mirrors or spec.mirrors:
            url = mirror.rstrip("/") + "/" + base + spec.remote_suffix
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                    shutil.copyfileobj(resp, out)
                got = file_digest(Path(tmp), algorithm)
                if got != expected:
                    raise DataError(f"checksum mismatch for {url} ({algorithm} {got[:12]}..., expected {expected[:12]}...)")
                os.replace(tmp, folder / (base + spec.remote_suffix))
                break
            except (OSError, ValueError, EOFError, zlib.error, DataError) as exc:
                errors.append(f"{url}: {getattr(exc, 'reason', exc)}")
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            raise DataError("; ".join(errors))


def locate(dataset: str, data_dir=None, download_missing: bool = True, mirrors=None, splits=None) -> Path:
    """The folder holding `dataset`'s files for `splits` (default all), downloading missing ones when allowed."""
    if dataset not in DATASETS:
        raise DataError(f"unknown dataset {dataset!r} (choose from {', '.join(DATASETS)})")
    spec = DATASETS[dataset]
    folder = existing_data_root(data_dir) / spec.folder
    wanted = [base for split in (splits or spec.splits) for base in spec.splits[split]]
    missing = [base for base in wanted if _existing(spec, folder, base) is None]
    if missing:
        expected = ", ".join(base + ("[.gz]" if spec.format == "idx" else "") for base in missing)
        if not download_missing:
            raise DataError(f"{folder}: missing {expected} (downloads are off)")
        try:
            download(spec, folder, missing, mirrors=mirrors)
        except DataError as exc:
            raise DataError(f"{folder}: missing {expected}; download failed: {exc}") from None
    return folder


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W) or (N, C, H, W) and labels as int64 (N,), both on one device; for data generated
    from known factors (dsprites), their indices as int64 (N, K) in `factors`.

    Binary images may be held packed, 8 pixels a byte (dsprites: 372 MB instead of 3 GB): then `images` is
    (N, ceil(D / 8)) uint8 as numpy's packbits writes rows, `packed_shape` one image's shape, and `uint8(index)`
    unpacks only the images asked for."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""
    factors: torch.Tensor | None = None
    packed_shape: tuple[int, ...] | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def x_dim(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.packed_shape) if self.packed_shape is not None else tuple(self.images.shape[1:])

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.name,
                        None if self.factors is None else self.factors.to(device), self.packed_shape)

    def uint8(self, index=None) -> torch.Tensor:
        """The images (or those at `index`) as uint8 (n, *image_shape), unpacked if held packed."""
        images = self.images if index is None else self.images[index]
        if self.packed_shape is None:
            return images
        return unpack_bits(images, self.x_dim).view(images.shape[0], *self.packed_shape)

    def pixels(self, index=None) -> torch.Tensor:
        """Flattened float pixels in [0, 1] (the value / 255 used by the reference)."""
        images = self.uint8(index)
        return images.reshape(images.shape[0], -1).float().div_(255.0)


def unpack_bits(rows: torch.Tensor, pixels: int) -> torch.Tensor:
    """Rows of bits packed 8 a byte, most significant first (numpy's packbits), as (n, pixels) uint8 in {0, 255}, on
    the rows' device."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=rows.device)
    bits = rows.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and_(1).view(rows.shape[0], -1)[:, :pixels]
    return bits.mul_(255)


# The shapes of the published IDX files (MNIST and Fashion-MNIST alike): a file of one of these shapes
# must have the published checksum, so damage inside a file on disk is caught, not trained on.
PUBLISHED_SHAPES = {(60000, 28, 28), (10000, 28, 28), (60000,), (10000,)}


def _load_idx(images_path: Path, labels_path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray]:
    """Labels first, then images whose header must agree with them (N, H, W uint8 for N labels): a file
    whose header disagrees is refused before its payload is read, so a gzip bomb costs no memory. A
    file of a published file's shape must match its sha256 (other shapes are the user's own data)."""

    def published(path: Path):
        base = path.name.removesuffix(".gz")
        checksum = spec.checksums.get(base, "")
        return lambda shape: checksum.split(":", 1)[1] if tuple(shape) in PUBLISHED_SHAPES and checksum.startswith("sha256:") else None

    def check_labels(shape, dtype):
        if len(shape) != 1 or dtype != np.uint8:
            raise DataError(f"{labels_path}: expected uint8 labels of shape (N,), header declares {dtype} {shape}")

    def check_images(shape, dtype):
        if len(shape) != 3 or dtype != np.uint8:
            raise DataError(f"{images_path}: expected uint8 images of shape (N, H, W), header declares {dtype} {shape}")
        if shape[0] != labels.shape[0]:
            raise DataError(f"{labels_path}: expected {shape[0]} labels to match {images_path.name}, got shape {labels.shape}")

    labels = read_idx(labels_path, check_labels, published(labels_path))
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_path}: labels must lie in 0..9")
    images = read_idx(images_path, check_images, published(images_path))
    if images.shape[0] == 0:
        raise DataError(f"{images_path}: holds no images")
    return images, labels


def load(dataset: str = "mnist", split: str = "train", data_dir=None, device="cpu", download_missing: bool = True) -> ImageSet:
    """Load one split of a dataset as an ImageSet on `device`."""
    if dataset == "dsprites":  # generated, not downloaded: data/dsprites.py; held packed, as the cache is
        packed, factors = dsprites.load_split(existing_data_root(data_dir) / "dsprites", split)
        factors = torch.from_numpy(factors).to(device)
        return ImageSet(torch.from_numpy(packed).to(device), factors[:, 0], f"{dataset}-{split}", factors, (dsprites.SIZE, dsprites.SIZE))
    spec = DATASETS.get(dataset)
    if spec is not None and split not in spec.splits:
        raise DataError(f"unknown split {split!r} of {dataset} (choose from {', '.join(spec.splits)})")
    folder = locate(dataset, data_dir, download_missing, splits=[split])
    paths = [_existing(spec, folder, base) for base in spec.splits[split]]
    images, labels = _load_idx(*paths, spec) if spec.format == "idx" else read_svhn_mat(paths[0])
    # read_idx's arrays are writable views of their own buffers, so torch takes them without a copy.
    images = images if images.flags.writeable else images.copy()
    return ImageSet(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device), f"{dataset}-{split}")


def factor_data(dataset: str, data_dir=None) -> "dsprites.Factors":
    """The ground-truth factors of a dataset generated from known factors (dsprites), for the disentanglement metrics."""
    if dataset != "dsprites":
        raise DataError(f"{dataset} has no known generative factors; the disentanglement metrics need a run trained on dsprites")
    return dsprites.Factors(existing_data_root(data_dir) / "dsprites")


def binarize(pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli draw per pixel: x ~ Bernoulli(pixel), with torch.bernoulli's random stream.
    The fixed evaluation sets are drawn this way, so their numbers stay comparable across versions."""
    return torch.bernoulli(pixels, generator=generator)


def model_input(images, binary: bool = True, seed: int | None = 0, device=None) -> torch.Tensor:
    """Images as a dataset gives them, as the flat float pixels a model takes.

    `images`: a tensor or numpy array, uint8 in 0..255 or float in [0, 1], of shape (N, H, W),
    (N, C, H, W) or already flat (N, D); one image without the N axis is taken as a batch of one only if
    you add it. Returns (N, D) float32 values / 255 and, for a model of binary pixels (`model.binary_pixels`),
    one Bernoulli draw of them, seeded by `seed` (None: torch's global stream) as the evaluation sets are."""
    x = torch.as_tensor(images)
    if x.ndim < 2:
        raise DataError(f"images: expected a batch (N, H, W), (N, C, H, W) or (N, D), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        x = x.float().div_(255.0)
    elif x.is_floating_point():
        if x.numel() and bool(x.isnan().any()):  # NaN passes both range comparisons below
            raise DataError(f"images: {int(x.isnan().sum())} NaN pixels; float pixels must lie in [0, 1]")
        if x.numel() and (float(x.min()) < 0 or float(x.max()) > 1):
            raise DataError("images: float pixels must lie in [0, 1] (uint8 images are divided by 255)")
        x = x.float()
    else:
        raise DataError(f"images: expected uint8 or float pixels, got {x.dtype}")
    x = x.reshape(x.shape[0], -1)
    if binary:
        x = binarize(x.cpu(), torch.Generator().manual_seed(seed) if seed is not None else None)
    return x.to(device) if device is not None else x


def binarize_batch(images: torch.Tensor) -> torch.Tensor:
    """A training batch of uint8 images (N, ...) as flattened binary float pixels (N, D): the same
    Bernoulli(pixel / 255) draw as `binarize`, taken as 1[u < pixel / 255] = 1[255 u < pixel] with
    u ~ U[0, 1), straight from the uint8 values. On the CPU a uniform draw and one comparison take a
    fraction of torch.bernoulli's time per batch (docs/performance.md). Its random stream differs
    from torch.bernoulli's, so it is used for training batches only."""
    flat = images.reshape(images.shape[0], -1)
    return torch.empty(flat.shape, device=flat.device).uniform_(0, 255).lt_(flat)


# --- The cs236 subsets (docs/reference.md section 1): positions among the images of each digit. ---
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
    if test.packed_shape is not None:  # already binary: a Bernoulli draw of pixels in {0, 1} is the pixels, without a second copy
        return test.pixels()
    return binarize(test.pixels().cpu(), torch.Generator().manual_seed(seed)).to(test.images.device)
