"""Statically binarized MNIST (Larochelle & Murray 2011): MNIST binarized once, the same for every user, as the static
MNIST of the IWAE and VampPrior papers and pythae's binary MNIST. binarized_mnist_{train,valid,test}.amat hold one
image a line, 784 space-separated 0 / 1 values, 50,000 / 10,000 / 10,000 images, without labels.

Splits: train = the 50,000 of binarized_mnist_train.amat (as the VampPrior code trains), valid = the 10,000 of the
valid file, test = the 10,000 of the test file. The pixels are already binary, so the set is held packed (8 pixels a
byte, like dSprites) and a model of binary pixels sees exactly these pixels: a Bernoulli draw of a pixel in {0, 1}
is the pixel.

The files are downloaded from Larochelle's page when missing; no checksum for them is published, so they are not
verified by checksum, only by format (every line 784 values, each 0 or 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import ImageSet
from .fetching import dataset_folder, fetch_missing
from .registry import Dataset, register_dataset

MIRRORS = ("http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",)
SPLITS = {"train": "binarized_mnist_train.amat", "valid": "binarized_mnist_valid.amat", "test": "binarized_mnist_test.amat"}
SIDE = 28
PIXELS = SIDE * SIDE


def _line_of(raw: np.ndarray, position: int) -> int:
    return int(np.count_nonzero(raw[:position] == 10)) + 1


def read_amat(path: Path, values: int = PIXELS) -> np.ndarray:
    """An .amat file of 0 / 1 values, `values` a line, as uint8 (N, values) in {0, 1}. Parsed as bytes with numpy (a
    second for the 50,000-line file): every value must be the single character 0 or 1, separated by whitespace."""
    path = Path(path)
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    digit = (raw == 48) | (raw == 49)
    space = (raw == 32) | (raw == 9) | (raw == 13) | (raw == 10)
    other = ~(digit | space)
    if other.any():
        at = int(np.argmax(other))
        raise DataError(f"{path}: line {_line_of(raw, at)} holds a value other than 0 or 1 (byte {bytes(raw[at:at + 1])!r})")
    joined = digit[:-1] & digit[1:]  # "10", "11", ...: a value of more than one character
    if joined.any():
        at = int(np.argmax(joined))
        raise DataError(f"{path}: line {_line_of(raw, at)} holds a value other than 0 or 1")
    line = np.cumsum(raw == 10)[digit]
    counts = np.bincount(line) if line.size else np.zeros(0, np.int64)
    filled = np.flatnonzero(counts)
    n_lines = int(filled[-1]) + 1 if filled.size else 0  # blank lines after the last image are allowed
    wrong = np.flatnonzero(counts[:n_lines] != values)
    if wrong.size:
        first = int(wrong[0])
        raise DataError(f"{path}: line {first + 1} holds {int(counts[first])} values, expected {values}")
    if n_lines == 0:
        raise DataError(f"{path}: holds no images")
    return (raw[digit] - 48).reshape(n_lines, values)


class StaticMnist(Dataset):
    """MNIST binarized once (Larochelle's fixed binarization), 28 x 28 binary pixels, no labels."""

    name = "static-mnist"
    folder = "static-mnist"
    description = "statically binarized MNIST (Larochelle's fixed binarization), 50,000 train / 10,000 valid / 10,000 test, no labels"
    splits = tuple(SPLITS)
    image_shape = (SIDE, SIDE)
    classes = ()
    binary = True

    def files(self, data_dir=None) -> list[Path]:
        folder = dataset_folder(data_dir, self.folder)
        return [folder / name for name in SPLITS.values()]

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True) -> ImageSet:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} of {self.name} (choose from {', '.join(SPLITS)})")
        folder = dataset_folder(data_dir, self.folder)
        fetch_missing(folder, [SPLITS[split]], MIRRORS, {}, download)
        bits = read_amat(folder / SPLITS[split])
        packed = np.packbits(bits, axis=1)  # held as dSprites is: a model of binary pixels sees these pixels, unchanged
        labels = torch.zeros(len(bits), dtype=torch.int64)
        return ImageSet(torch.from_numpy(packed).to(device), labels.to(device), f"{self.name}-{split}", packed_shape=(SIDE, SIDE))


register_dataset(StaticMnist())
