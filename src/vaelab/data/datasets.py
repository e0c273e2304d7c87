"""The built-in datasets: locating and downloading MNIST / Fashion-MNIST / SVHN, loading, binarization, cs236
subsets; each is registered (data/registry.py) with the generated dSprites. A path instead of a name loads the
user's own images (data/user.py).

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
from . import caches, dsprites
from .checksums import file_digest
from .formats import read_idx, read_svhn_mat
from .registry import Dataset, lookup, register_dataset

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


DATASET_NAMES = (*DATASETS, "dsprites", "color-dsprites")
"""Every dataset `load` knows by name: the downloaded ones and the generated dSprites, plain and coloured (the
registry's names)."""


def image_shape_of(dataset: str) -> tuple[int, ...]:
    """The shape of one image of a registered dataset, without reading it."""
    return lookup(dataset).image_shape


def default_cache_dir() -> Path:
    """The data root when neither --data-dir nor $VAELAB_DATA names one: $XDG_CACHE_HOME/vaelab, else ~/.cache/vaelab."""
    return caches.user_cache_dir()


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
                os.chmod(tmp, caches.file_mode())  # open()'s mode, not mkstemp's 0600: a shared data folder stays readable
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
            _, named = resolve_data_root(data_dir)
            hint = "" if named else "; if you have the files elsewhere, point --data-dir or $VAELAB_DATA at the folder holding " + spec.folder + "/"
            raise DataError(f"{folder}: missing {expected}; download failed: {exc}{hint}") from None
    return folder


@dataclass
class ImageSet:
    """Images as uint8 (N, H, W) or (N, C, H, W) and labels as int64 (N,), both on one device; for data generated
    from known factors (dsprites), their indices as int64 (N, K) in `factors`.

    Binary images may be held packed, 8 pixels a byte (dsprites: 372 MB instead of 3 GB): then `images` is
    (N, ceil(D / 8)) uint8 as numpy's packbits writes rows, `packed_shape` one image's shape, and `uint8(index)`
    unpacks only the images asked for. Such a set may carry a colour per image, `colours` uint8 (N, C): an image is
    then its mask times its colour, (C, *packed_shape), made only for the images asked for (colour dSprites: 2 MB
    of colours beside the packed masks instead of 9 GB of images)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = ""
    factors: torch.Tensor | None = None
    packed_shape: tuple[int, ...] | None = None
    classes: tuple[str, ...] = ()
    """The names of labels 0, 1, ... (empty when the images carry no labels)."""
    colours: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def x_dim(self) -> int:
        return int(np.prod(self.image_shape))

    @property
    def image_shape(self) -> tuple[int, ...]:
        if self.packed_shape is None:
            return tuple(self.images.shape[1:])
        return tuple(self.packed_shape) if self.colours is None else (self.colours.shape[1], *self.packed_shape)

    def to(self, device) -> "ImageSet":
        return ImageSet(self.images.to(device), self.labels.to(device), self.name,
                        None if self.factors is None else self.factors.to(device), self.packed_shape, self.classes,
                        None if self.colours is None else self.colours.to(device))

    def rows(self, start: int, stop: int | None = None) -> "ImageSet":
        """Images start..stop-1 with their labels, factors and colours: views of this set's tensors, no copy."""
        part = slice(start, stop)
        return ImageSet(self.images[part], self.labels[part], self.name, None if self.factors is None else self.factors[part],
                        self.packed_shape, self.classes, None if self.colours is None else self.colours[part])

    def uint8(self, index=None) -> torch.Tensor:
        """The images (or those at `index`) as uint8 (n, *image_shape), unpacked if held packed."""
        images = self.images if index is None else self.images[index]
        if self.packed_shape is None:
            return images
        if self.colours is None:
            return unpack_bits(images, self.x_dim).view(images.shape[0], *self.packed_shape)
        mask = unpack_bits(images, int(np.prod(self.packed_shape)), on=1)
        colours = self.colours if index is None else self.colours[index]
        return (mask.unsqueeze(1) * colours.unsqueeze(-1)).view(images.shape[0], *self.image_shape)

    def pixels(self, index=None) -> torch.Tensor:
        """Flattened float pixels in [0, 1] (the value / 255 used by the reference)."""
        images = self.uint8(index)
        return images.reshape(images.shape[0], -1).float().div_(255.0)


def unpack_bits(rows: torch.Tensor, pixels: int, on: int = 255) -> torch.Tensor:
    """Rows of bits packed 8 a byte, most significant first (numpy's packbits), as (n, pixels) uint8 in {0, on}, on
    the rows' device."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=rows.device)
    bits = rows.unsqueeze(-1).bitwise_right_shift(shifts).bitwise_and_(1).view(rows.shape[0], -1)[:, :pixels]
    return bits.mul_(on) if on != 1 else bits


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


def load(dataset: str = "mnist", split: str = "train", data_dir=None, device="cpu", download_missing: bool = True,
         test_path=None, test_fraction=None, image_size=None) -> ImageSet:
    """Load one split of a dataset as an ImageSet on `device`. `dataset` is a registered name or a path to your own
    images (a folder, or a .npy / .npz array; docs/your-data.md), to which `test_path`, `test_fraction` and
    `image_size` apply."""
    if dataset not in DATASET_NAMES:  # another registered dataset, or a path
        return lookup(dataset, test_path, test_fraction, image_size).load(split, data_dir, device, download_missing)
    if dataset in ("dsprites", "color-dsprites"):  # generated, not downloaded: data/dsprites.py; held packed, as the cache is
        packed, factors = dsprites.load_split(existing_data_root(data_dir) / "dsprites", split)
        colours = torch.from_numpy(dsprites.colours_of(dsprites.split_indices(split))).to(device) if dataset == "color-dsprites" else None
        factors = torch.from_numpy(factors).to(device)
        return ImageSet(torch.from_numpy(packed).to(device), factors[:, 0], f"{dataset}-{split}", factors, (dsprites.SIZE, dsprites.SIZE),
                        dsprites.SHAPES, colours)
    spec = DATASETS.get(dataset)
    if spec is not None and split not in spec.splits:
        raise DataError(f"unknown split {split!r} of {dataset} (choose from {', '.join(spec.splits)})")
    folder = locate(dataset, data_dir, download_missing, splits=[split])
    paths = [_existing(spec, folder, base) for base in spec.splits[split]]
    images, labels = _load_idx(*paths, spec) if spec.format == "idx" else read_svhn_mat(paths[0])
    # read_idx's arrays are writable views of their own buffers, so torch takes them without a copy.
    images = images if images.flags.writeable else images.copy()
    return ImageSet(torch.from_numpy(images).to(device), torch.from_numpy(labels.astype(np.int64)).to(device), f"{dataset}-{split}",
                    classes=spec.classes)


class BuiltinDataset(Dataset):
    """A registered built-in dataset: its spec answers for it (dSprites has no spec: it is generated)."""

    def __init__(self, name: str, image_shape: tuple[int, ...], classes: tuple[str, ...], splits: tuple[str, ...]):
        self.name, self.image_shape, self.classes, self.splits = name, tuple(image_shape), tuple(classes), tuple(splits)

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True) -> ImageSet:
        return load(self.name, split, data_dir, device, download)


for _spec in DATASETS.values():
    register_dataset(BuiltinDataset(_spec.name, _spec.image_shape, _spec.classes, tuple(_spec.splits)))
register_dataset(BuiltinDataset("dsprites", (dsprites.SIZE, dsprites.SIZE), dsprites.SHAPES, ("train", "test")))
register_dataset(BuiltinDataset("color-dsprites", (3, dsprites.SIZE, dsprites.SIZE), dsprites.SHAPES, ("train", "test")))


def factor_data(dataset: str, data_dir=None) -> "dsprites.Factors":
    """The ground-truth factors of a dataset generated from known factors (dsprites, color-dsprites), for the
    disentanglement metrics."""
    if dataset not in ("dsprites", "color-dsprites"):
        raise DataError(f"{dataset} has no known generative factors; the disentanglement metrics need a run trained on dsprites "
                        "or color-dsprites")
    factors = dsprites.ColourFactors if dataset == "color-dsprites" else dsprites.Factors
    return factors(existing_data_root(data_dir) / "dsprites")
