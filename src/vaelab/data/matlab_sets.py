"""Benchmarks published as one MATLAB .mat file, read with scipy.io.loadmat (which never unpickles):

- omniglot: the 28 x 28 Omniglot of the IWAE paper (Burda et al. 2016), chardata.mat: `data` (784 x 24,345) and
  `testdata` (784 x 8,070), grey values in [0, 1]. Splits train / test as published; no labels. The paper binarizes
  it dynamically, so it is held as 8-bit grey and a model of binary pixels draws fresh binary pixels each batch.
- caltech101: Caltech 101 Silhouettes at 28 x 28 (Marlin et al. 2010), caltech101_silhouettes_28_split1.mat:
  `train_data` (4,100), `val_data` (2,264), `test_data` (2,307) rows of 784 binary pixels with labels 1..101.
  Already binary, so held packed as fixed binary pixels; inverted as the VampPrior code does (the silhouette is 1).
- frey: Frey Faces (Roweis' frey_rawface.mat): `ff` (560 x 1,965), 8-bit grey 28 x 20. No official split; here a
  fixed one: a permutation drawn with seed 0, its first 200 images test, the next 200 valid, the other 1,565 train
  (the sizes the VampPrior code uses).

MATLAB stores each 28 x 28 image column by column, so Omniglot and Caltech rows are transposed into row-major images
(the VampPrior code's reshape with order='F'). None of these files has a published checksum, so they are downloaded
unverified and checked by format only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import ImageSet
from .fetching import dataset_folder, fetch_missing
from .formats import read_mat_arrays
from .registry import Dataset, register_dataset


def _column_major_images(rows: np.ndarray, side: int = 28) -> np.ndarray:
    """(N, side * side) rows of MATLAB column-major images as (N, side, side)."""
    return rows.reshape(-1, side, side).transpose(0, 2, 1)


def _unit_floats(path: Path, name: str, array: np.ndarray, pixels: int, axis: int) -> np.ndarray:
    """A 2-D array of pixel values in [0, 1] with `pixels` values along `axis`, as rows (N, pixels) float64."""
    if array.ndim != 2 or array.shape[axis] != pixels or not np.issubdtype(array.dtype, np.number) or array.size == 0:
        want = f"({pixels}, N)" if axis == 0 else f"(N, {pixels})"
        raise DataError(f"{path}: {name} must be a numeric array of shape {want}, N >= 1, got {array.dtype} {array.shape}")
    rows = np.asarray(array if axis == 1 else array.T, dtype=np.float64)
    if not np.isfinite(rows).all() or rows.min() < 0 or rows.max() > 1:
        raise DataError(f"{path}: {name} holds values outside [0, 1]")
    return rows


class MatDataset(Dataset):
    """A benchmark read from one .mat file in <data root>/<folder>/, downloaded from `mirrors` when missing."""

    folder = ""
    file = ""
    mirrors: tuple[str, ...] = ()
    description = ""

    def files(self, data_dir=None) -> list[Path]:
        return [dataset_folder(data_dir, self.folder) / self.file]

    def read(self, path: Path, split: str):
        """(images uint8 (N, H, W), labels int64 (N,), class names, binary) of one split."""
        raise NotImplementedError

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True) -> ImageSet:
        if split not in self.splits:
            raise DataError(f"unknown split {split!r} of {self.name} (choose from {', '.join(self.splits)})")
        folder = dataset_folder(data_dir, self.folder)
        fetch_missing(folder, [self.file], self.mirrors, {}, download)
        images, labels, classes, binary = self.read(folder / self.file, split)
        name = f"{self.name}-{split}"
        labels = torch.from_numpy(labels.astype(np.int64)).to(device)
        if binary:  # fixed binary pixels, held as dSprites is: a model of binary pixels sees exactly these
            packed = np.packbits(images.reshape(len(images), -1), axis=1)
            return ImageSet(torch.from_numpy(packed).to(device), labels, name, packed_shape=tuple(images.shape[1:]), classes=classes)
        return ImageSet(torch.from_numpy(np.ascontiguousarray(images)).to(device), labels, name, classes=classes)


class Omniglot(MatDataset):
    """Omniglot 28 x 28 as in the IWAE paper: 24,345 train / 8,070 test grey images, binarized dynamically."""

    name = "omniglot"
    folder = "omniglot"
    file = "chardata.mat"
    mirrors = ("https://github.com/yburda/iwae/raw/master/datasets/OMNIGLOT/",)  # the IWAE paper's repository
    description = "Omniglot 28x28 (the IWAE paper's chardata.mat), 24,345 train / 8,070 test, grey, binarized dynamically, no labels"
    splits = ("train", "test")
    image_shape = (28, 28)
    classes = ()

    def read(self, path, split):
        key = {"train": "data", "test": "testdata"}[split]
        rows = _unit_floats(path, key, read_mat_arrays(path, [key])[key], 784, axis=0)
        images = _column_major_images(np.rint(rows * 255).astype(np.uint8))
        return images, np.zeros(len(images), np.int64), (), False


class Caltech101Silhouettes(MatDataset):
    """Caltech 101 Silhouettes 28 x 28, split 1: 4,100 train / 2,264 valid / 2,307 test fixed binary images, 101 classes."""

    name = "caltech101"
    folder = "caltech101-silhouettes"
    file = "caltech101_silhouettes_28_split1.mat"
    mirrors = ("https://people.cs.umass.edu/~marlin/data/",)  # as the VampPrior code's datasets/Caltech101Silhouettes/README
    description = "Caltech 101 Silhouettes 28x28 (split 1), 4,100 train / 2,264 valid / 2,307 test, fixed binary, 101 classes"
    splits = ("train", "valid", "test")
    image_shape = (28, 28)
    classes = tuple(str(c) for c in range(1, 102))
    """Placeholders of the right count; the names are read from the file's `classnames` with the images."""

    def read(self, path, split):
        key = {"train": "train", "valid": "val", "test": "test"}[split]
        arrays = read_mat_arrays(path, [f"{key}_data", f"{key}_labels"], optional=["classnames"])
        rows = _unit_floats(path, f"{key}_data", arrays[f"{key}_data"], 784, axis=1)
        if not np.isin(rows, (0.0, 1.0)).all():
            raise DataError(f"{path}: {key}_data holds values other than 0 and 1 (the silhouettes are binary)")
        labels = np.asarray(arrays[f"{key}_labels"]).reshape(-1)
        if labels.shape[0] != rows.shape[0]:
            raise DataError(f"{path}: {key}_labels holds {labels.shape[0]} labels for {rows.shape[0]} images")
        if not np.issubdtype(labels.dtype, np.number) or labels.min() < 1 or labels.max() > 101 or (labels % 1 != 0).any():
            raise DataError(f"{path}: {key}_labels must be integers in 1..101")
        images = _column_major_images((1 - rows).astype(np.uint8))  # the silhouette is 1, as VampPrior's
        return images, labels.astype(np.int64) - 1, self._names(arrays.get("classnames")), True

    def _names(self, raw) -> tuple[str, ...]:
        try:
            names = tuple(str(np.asarray(n).reshape(-1)[0]) for n in np.asarray(raw, dtype=object).reshape(-1))
        except (TypeError, ValueError, IndexError):
            names = ()
        return names if len(names) == len(self.classes) else self.classes


FREY_SEED = 0
FREY_HELD_OUT = 200 / 1965
"""The fraction of images in each of test and valid: 200 of the published 1,965."""


class FreyFaces(MatDataset):
    """Frey Faces: 1,965 grey 28 x 20 images of one face; a fixed split (seed 0) of 1,565 train / 200 valid / 200 test."""

    name = "frey"
    folder = "frey"
    file = "frey_rawface.mat"
    mirrors = ("https://cs.nyu.edu/~roweis/data/",)  # Sam Roweis' data page, where the file is published
    description = "Frey Faces 28x20 grey, 1,965 images; fixed split (seed 0) 1,565 train / 200 valid / 200 test, no labels"
    splits = ("train", "valid", "test")
    image_shape = (28, 20)
    classes = ()

    def read(self, path, split):
        ff = read_mat_arrays(path, ["ff"])["ff"]
        if ff.ndim != 2 or ff.shape[0] != 28 * 20 or ff.dtype != np.uint8 or ff.shape[1] < 3:
            raise DataError(f"{path}: ff must be uint8 of shape (560, N) with N >= 3, got {ff.dtype} {ff.shape}")
        images = np.ascontiguousarray(ff.T).reshape(-1, 28, 20)
        index = frey_split(len(images))[split]
        return images[index], np.zeros(len(index), np.int64), (), False


def frey_split(n: int) -> dict[str, np.ndarray]:
    """The fixed split of n Frey images: test, then valid, the first 200 / 1,965 of a seed-0 permutation each."""
    order = np.random.default_rng(FREY_SEED).permutation(n)
    held = max(1, round(n * FREY_HELD_OUT))
    return {"test": np.sort(order[:held]), "valid": np.sort(order[held:2 * held]), "train": np.sort(order[2 * held:])}


for _dataset in (Omniglot(), Caltech101Silhouettes(), FreyFaces()):
    register_dataset(_dataset)
