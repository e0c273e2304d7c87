"""CIFAR-10 (Krizhevsky 2009), read from its binary version: 60,000 32 x 32 colour images in ten classes, 50,000 for
training (data_batch_1.bin .. data_batch_5.bin) and 10,000 for testing (test_batch.bin).

The binary version is used, not the pickled Python one, so nothing is ever unpickled: each record is one label byte
then 3,072 pixel bytes, the red, green and blue planes of 32 x 32 in turn (channel-major), which is exactly the
(3, 32, 32) layout an ImageSet holds. cifar-10-binary.tar.gz is downloaded when missing, checked against its published
md5, and only the six batch files are taken out of it (by name, as regular files of the expected size; nothing else
in the archive is written anywhere).
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import ImageSet
from .fetching import dataset_folder, fetch_missing, raw_digest
from .registry import Dataset, register_dataset

ARCHIVE = "cifar-10-binary.tar.gz"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)
# The md5 the dataset's page (https://www.cs.toronto.edu/~kriz/cifar.html) publishes for the binary version; the same
# value is used by public loaders of this archive (e.g. dataeval's CIFAR10 resource list).
CHECKSUMS = {ARCHIVE: "md5:c32a1d4ab5d03f1284b67883e8d87530"}
MEMBER_FOLDER = "cifar-10-batches-bin"
SPLITS = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHAPE = (3, 32, 32)
RECORD = 1 + 3 * 32 * 32
RECORDS_PER_FILE = 10_000
"""Every published batch file holds exactly this many records (a module constant so tests can write small files)."""


def read_cifar_binary(path: Path, records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file as uint8 images (N, 3, 32, 32) and int64 labels (N,). Its size must be a whole
    number of 3,073-byte records, `records` of them (default RECORDS_PER_FILE), and every label in 0..9."""
    path = Path(path)
    records = RECORDS_PER_FILE if records is None else records
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    if size % RECORD:
        raise DataError(f"{path}: {size} bytes is not a whole number of {RECORD}-byte records (1 label + 3,072 pixels)")
    if size // RECORD != records:
        raise DataError(f"{path}: holds {size // RECORD} records, a CIFAR-10 batch file holds {records}")
    try:
        raw = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if raw.size != size:
        raise DataError(f"{path}: changed while being read")
    rows = raw.reshape(records, RECORD)
    labels = rows[:, 0].astype(np.int64)
    if labels.size and labels.max() > 9:
        bad = int(np.argmax(labels > 9))
        raise DataError(f"{path}: record {bad} has label {labels[bad]}; CIFAR-10 labels lie in 0..9")
    return np.ascontiguousarray(rows[:, 1:]).reshape(records, *SHAPE), labels


def check_archive(archive: Path) -> None:
    algorithm, expected = CHECKSUMS[ARCHIVE].split(":")
    got = raw_digest(archive, algorithm)
    if got != expected:
        raise DataError(f"{archive}: its {algorithm} {got[:12]}... is not the published archive's {expected[:12]}...; delete it to download it again")


def extract_batches(archive: Path, folder: Path, names) -> None:
    """Take the named batch files out of the archive into folder/cifar-10-batches-bin/, each only if it is a regular file
    of the published size; written to a temporary name first, so an interrupted extraction leaves nothing half-written."""
    target = folder / MEMBER_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                try:
                    member = tar.getmember(f"{MEMBER_FOLDER}/{name}")
                except KeyError:
                    raise DataError(f"{archive}: has no {MEMBER_FOLDER}/{name}") from None
                if not member.isfile() or member.size != RECORDS_PER_FILE * RECORD:
                    raise DataError(f"{archive}: {member.name} is not a regular file of {RECORDS_PER_FILE * RECORD} bytes")
                fd, tmp = tempfile.mkstemp(dir=target, prefix=f".{name}.", suffix=".part")
                try:
                    with os.fdopen(fd, "wb") as out, tar.extractfile(member) as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    os.replace(tmp, target / name)
                finally:
                    if os.path.exists(tmp):
                        os.unlink(tmp)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: not a readable .tar.gz ({type(exc).__name__}: {str(exc)[:120]}); delete it to download it again") from None


class Cifar10(Dataset):
    """CIFAR-10, the binary version: 32 x 32 colour images of ten classes (50,000 train, 10,000 test)."""

    name = "cifar10"
    folder = "cifar10"
    description = "CIFAR-10: 32x32 colour photos of 10 classes, 50,000 train / 10,000 test (binary version, md5-checked)"
    splits = tuple(SPLITS)
    image_shape = SHAPE
    classes = CLASSES

    def files(self, data_dir=None) -> list[Path]:
        """The files a load reads (the archive is only needed while they are missing)."""
        folder = dataset_folder(data_dir, self.folder)
        return [folder / MEMBER_FOLDER / name for names in SPLITS.values() for name in names]

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True) -> ImageSet:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} of {self.name} (choose from {', '.join(SPLITS)})")
        folder = dataset_folder(data_dir, self.folder)
        paths = [folder / MEMBER_FOLDER / name for name in SPLITS[split]]
        missing = [p.name for p in paths if not p.is_file()]
        if missing:
            try:
                fetch_missing(folder, [ARCHIVE], MIRRORS, CHECKSUMS, download)
            except DataError as exc:
                raise DataError(f"{exc} (or put {', '.join(missing)} in {folder / MEMBER_FOLDER})") from None
            check_archive(folder / ARCHIVE)  # also one put there by hand: only the published archive is unpacked
            extract_batches(folder / ARCHIVE, folder, missing)
        parts = [read_cifar_binary(p) for p in paths]
        images = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        labels = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return ImageSet(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device), f"{self.name}-{split}",
                        classes=CLASSES)


register_dataset(Cifar10())
