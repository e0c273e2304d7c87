"""Your own images: a folder of PNG / JPEG / BMP files (optionally one sub-folder per class, as torchvision's
ImageFolder lays them out: the sorted sub-folder names are the classes) or a .npy / .npz array.

They are held as the built-in sets are: uint8 (N, H, W) for grey images, (N, 3, H, W) for colour ones, labels int64.
A folder is decoded once, in parallel, and cached as one uint8 array with its sha256 beside it in vaelab's cache
directory (never in the user's folder, which may be read-only), keyed by the folder's path, its files' names, sizes
and modification times and image_size: the next run starts at once, and a changed folder is read again. An array
file is already one array and is read directly. Without a second path for the test split, a fraction of the images
drawn with a fixed seed is held out, so training and evaluation see the same split.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, warn
from . import caches
from .registry import Dataset

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
ARRAY_SUFFIXES = (".npy", ".npz")
DEFAULT_TEST_FRACTION = 0.1
SPLIT_SEED = 0  # fixed, so a run's evaluation holds out the images its training held out
CACHE_VERSION = 1
CACHE_FOLDER = "user-images"
# Pillow modes without colour: decoded as one channel; every other mode (P, RGB, RGBA, CMYK, ...) as RGB.
GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_BLOCK = 256  # images decoded per task: one future per image would cost more than a small PNG's decode


def decode_image(path: str | Path, image_size: int | None = None, crop: int | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) or (H, W, 3); with image_size, center-cropped to a square (of side `crop`, else
    the shorter side) and resized to it."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if crop and min(im.size) < crop:
                raise DataError(f"{path}: is {im.size[0]}x{im.size[1]}, smaller than the {crop} x {crop} center crop")
            im = im.convert("L" if im.mode in GREY_MODES else "RGB")
            if image_size:
                im = _crop_resize(im, image_size, crop)
            return np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({type(exc).__name__}: {str(exc)[:100]})") from None


def _crop_resize(im, size: int, crop: int | None = None):
    from PIL import Image

    w, h = im.size
    side = crop or min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BILINEAR)


def _decode_block(paths, image_size, crop=None):
    return [decode_image(p, image_size, crop) for p in paths]


def _scan(folder: str, recursive: bool) -> tuple[list[str], list[str]]:
    """(image files, sub-folders) of a folder, each sorted by name; with recursive, the image files below its
    sub-folders follow its own. os.scandir, not pathlib: a folder of 60,000 images is listed in a fraction of the time."""
    files, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                folders.append(entry.path)
            elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                files.append(entry.path)
    files.sort()
    folders.sort()
    if recursive:
        for sub in folders:
            files += _scan(sub, True)[0]
    return files, folders


def list_folder(folder: Path) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """The image files of a folder in a fixed order, their labels and the class names (empty without class sub-folders)."""
    top, sub = _scan(str(folder), recursive=False)
    if top and sub:
        raise DataError(f"{folder}: holds both images and sub-folders; put every image in a class sub-folder, or none")
    if top:
        return top, np.zeros(len(top), dtype=np.int64), ()
    files, labels = [], []
    for index, class_dir in enumerate(sub):
        found = _scan(class_dir, recursive=True)[0]
        if not found:
            raise DataError(f"{class_dir}: class sub-folder holds no PNG, JPEG or BMP images")
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(f"{folder}: holds no PNG, JPEG or BMP images (nor class sub-folders of them)")
    return files, np.asarray(labels, dtype=np.int64), tuple(os.path.basename(d) for d in sub)


def _stack(files: list[str], arrays: list[np.ndarray], image_size, where: Path) -> np.ndarray:
    sizes = {}
    for path, a in zip(files, arrays):
        sizes.setdefault(a.shape[:2], path)
    if len(sizes) > 1:
        (s1, f1), (s2, f2) = list(sizes.items())[:2]
        raise DataError(f"{where}: images differ in size ({os.path.relpath(f1, where)} is {s1[1]}x{s1[0]}, "
                        f"{os.path.relpath(f2, where)} is {s2[1]}x{s2[0]}); "
                        f"set data.image_size to center-crop and resize them")
    if any(a.ndim == 3 for a in arrays):  # some colour: all as RGB
        arrays = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))
    return np.stack(arrays)


def decode_folder(folder: Path, files: list[str], image_size, workers: int | None = None, crop: int | None = None) -> np.ndarray:
    """Every file decoded (in a thread pool: Pillow's decoders release the GIL) and stacked, sizes checked."""
    blocks = [files[i : i + _BLOCK] for i in range(0, len(files), _BLOCK)]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = [a for block in pool.map(_decode_block, blocks, [image_size] * len(blocks), [crop] * len(blocks)) for a in block]
    return _stack(files, arrays, image_size, folder)


def _fingerprint(source: str, files: list[str], image_size, crop=None) -> str:
    described = {"version": CACHE_VERSION, "path": source, "image_size": image_size}
    if crop:  # only when set, so the entries cached before crops existed keep their keys
        described["crop"] = crop
    digest = hashlib.sha256(json.dumps(described).encode())
    for path in files:
        st = os.stat(path)
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _read_cache(cache: Path, key: str):
    meta_path, data_path = cache / f"{key}.json", cache / f"{key}.npz"
    try:
        meta = json.loads(meta_path.read_text())
        raw = data_path.read_bytes()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(raw).hexdigest() != meta.get("sha256"):
        warn(f"{data_path}: cached images differ from their sha256; reading the images again")
        return None
    with np.load(io.BytesIO(raw), allow_pickle=False) as arrays:
        return arrays["images"], arrays["labels"], tuple(meta["classes"])


def _write_cache(cache: Path, key: str, source: str, images, labels, classes) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        np.savez(buffer, images=images, labels=labels)
        raw = buffer.getvalue()
        meta = {"source": str(source), "images": list(images.shape), "classes": list(classes), "sha256": hashlib.sha256(raw).hexdigest()}
        for suffix, content in ((".npz", raw), (".json", json.dumps(meta).encode())):  # the .json last: it marks the entry complete
            caches.write_atomically(cache / f"{key}{suffix}", lambda tmp, content=content: tmp.write_bytes(content))
        for other in cache.glob("*.json"):  # an older read of the same folder is stale now
            if other.stem != key and json.loads(other.read_text()).get("source") == str(source):
                other.unlink(missing_ok=True)
                other.with_suffix(".npz").unlink(missing_ok=True)
    except (OSError, ValueError) as exc:  # a cache that cannot be written costs the next run a decode, nothing more
        warn(f"{cache}: could not cache the decoded images ({exc})")


def read_images_cached(folder: Path, files: list[str], labels, classes=(), image_size=None, cache_dir: Path | None = None,
                       source: str | None = None, crop: int | None = None):
    """(images, labels, classes) of these image files under `folder`: decoded in parallel and cached with their sha256,
    then read from the cache while the files are unchanged. `source` (default the folder) names the cache entry that a
    newer read of it replaces."""
    source = source or str(folder)
    key = _fingerprint(source, files, image_size, crop)
    cache = Path(cache_dir or caches.cache_dir()) / CACHE_FOLDER
    cached = _read_cache(cache, key)
    if cached is not None:
        return cached
    images = decode_folder(folder, files, image_size, crop=crop)
    _write_cache(cache, key, source, images, labels, classes)
    return images, labels, classes


def read_folder(folder: Path, image_size=None, cache_dir: Path | None = None):
    """(images, labels, classes) of a folder of images, from the cache when its files are unchanged."""
    files, labels, classes = list_folder(folder)
    return read_images_cached(folder, files, labels, classes, image_size, cache_dir)


def read_array(path: Path, image_size=None):
    """(images, labels, classes) of a .npy or .npz array of images, checked."""
    try:
        if path.suffix.lower() == ".npy":
            images, labels = np.load(path, allow_pickle=False), None
        else:
            with np.load(path, allow_pickle=False) as arrays:
                names = [n for n in arrays.files if n != "labels"]
                if "images" not in arrays.files and len(names) != 1:
                    raise DataError(f"{path}: expected an array named images (or a single array), found {', '.join(arrays.files) or 'none'}")
                images = arrays["images" if "images" in arrays.files else names[0]]
                labels = arrays["labels"] if "labels" in arrays.files else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable {path.suffix} file ({type(exc).__name__}: {str(exc)[:100]})") from None
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)) or 0 in images.shape[1:]:
        raise DataError(f"{path}: expected images of shape (N, H, W) or (N, H, W, C) with C 1 or 3, got shape {images.shape}")
    if images.shape[0] == 0:
        raise DataError(f"{path}: holds no images")
    if images.dtype.kind == "f":
        if np.isnan(images).any():
            raise DataError(f"{path}: {int(np.isnan(images).sum())} NaN pixels; float pixels must lie in [0, 1]")
        low, high = float(images.min()), float(images.max())
        if low < 0 or high > 1:
            raise DataError(f"{path}: float pixels must lie in [0, 1], found {low:g} .. {high:g}")
        images = np.rint(images * 255.0).astype(np.uint8)
    elif images.dtype != np.uint8:
        raise DataError(f"{path}: expected uint8 pixels (0-255) or floats in [0, 1], got {images.dtype}")
    if images.ndim == 4:
        images = images[..., 0] if images.shape[3] == 1 else images
    if image_size:
        from PIL import Image

        images = np.stack([np.asarray(_crop_resize(Image.fromarray(a), image_size)) for a in images])
    if images.ndim == 4:
        images = images.transpose(0, 3, 1, 2)
    images = np.ascontiguousarray(images)
    if labels is None:
        return images, np.zeros(images.shape[0], dtype=np.int64), ()
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: labels has shape {labels.shape}, expected ({images.shape[0]},), one per image")
    if labels.dtype.kind not in "iu" or (labels.size and labels.min() < 0):
        raise DataError(f"{path}: labels must be integers >= 0, got {labels.dtype}")
    labels = labels.astype(np.int64)
    return images, labels, tuple(str(c) for c in range(int(labels.max()) + 1))


def read_source(path: Path, image_size=None, cache_dir=None):
    """(images, labels, classes) of a folder or an array file."""
    if not path.exists():
        raise DataError(f"{path}: does not exist")
    if path.is_dir():
        return read_folder(path, image_size, cache_dir)
    if path.suffix.lower() in ARRAY_SUFFIXES:
        return read_array(path, image_size)
    raise DataError(f"{path}: expected a folder of images or a .npy / .npz array")


class UserImages(Dataset):
    """Your images at `path`; the test split is `test_path`'s images, else `test_fraction` of them held out with a fixed seed."""

    name = "user"

    def __init__(self, path, test_path=None, test_fraction=None, image_size=None, cache_dir=None):
        self.path = Path(path).expanduser().absolute()
        self.test_path = Path(test_path).expanduser().absolute() if test_path else None
        self.test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else float(test_fraction)
        self.image_size = int(image_size) if image_size else None
        self.cache_dir = cache_dir
        self._read: dict[Path, tuple] = {}

    def _source(self, path: Path):
        if path not in self._read:
            self._read[path] = read_source(path, self.image_size, self.cache_dir)
        return self._read[path]

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self._source(self.path)[0].shape[1:])

    @property
    def classes(self) -> tuple[str, ...]:
        return self._source(self.path)[2]

    def split_indices(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) indices of n images: test_fraction of them, drawn with a fixed seed."""
        f = self.test_fraction
        if not 0 < f < 1:
            raise DataError(f"{self.path}: data.test_fraction must lie strictly between 0 and 1 (got {f:g})")
        n_test = max(1, round(f * n))
        if n_test >= n:
            raise DataError(f"{self.path}: data.test_fraction {f:g} of {n} images leaves no training images")
        order = np.random.default_rng(SPLIT_SEED).permutation(n)
        return np.sort(order[n_test:]), np.sort(order[:n_test])

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True):
        from .datasets import ImageSet

        if split not in ("train", "test"):
            raise DataError(f"unknown split {split!r} of {self.path} (choose from train, test)")
        images, labels, classes = self._source(self.path)
        if self.test_path is None:
            index = self.split_indices(len(images))[split == "test"]
            images, labels = images[index], labels[index]
        elif split == "test":
            images, labels = self._test_images(images, classes)
        return ImageSet(torch.from_numpy(np.ascontiguousarray(images)).to(device), torch.from_numpy(labels).to(device),
                        f"{self.path.name}-{split}", classes=classes)

    def _test_images(self, train_images, classes):
        images, labels, test_classes = self._source(self.test_path)
        if images.shape[1:] != train_images.shape[1:]:
            raise DataError(f"{self.test_path}: images of shape {images.shape[1:]}, but {self.path}'s are {train_images.shape[1:]}")
        if bool(classes) != bool(test_classes) and self.test_path.is_dir():
            raise DataError(f"{self.test_path}: {'has' if test_classes else 'has no'} class sub-folders, unlike {self.path}")
        if test_classes and self.test_path.is_dir():  # by name: a test folder may lack a class
            unknown = [c for c in test_classes if c not in classes]
            if unknown:
                raise DataError(f"{self.test_path}: class {unknown[0]!r} is not one of {self.path}'s ({', '.join(classes)})")
            labels = np.asarray([classes.index(c) for c in test_classes], dtype=np.int64)[labels]
        return images, labels
