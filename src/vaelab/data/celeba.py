"""CelebA (Liu et al. 2015), the aligned images: 202,599 face photos of 178 x 218 (img_align_celeba/*.jpg), held as
64 x 64 colour images and split as list_eval_partition.txt assigns them (0 train, 1 valid, 2 test).

Each image is center-cropped to 148 x 148 and resized to 64 x 64 (bilinear), as PyTorch-VAE's CelebA transform does
(CenterCrop(148) then Resize(64)); NVAE's 64 x 64 CelebA takes the same size 5 pixels lower. The JPEGs are decoded in parallel once per split and cached with their sha256 in
vaelab's cache directory by data/user.py, so later loads read one array. CelebA is served from Google Drive behind a
confirmation page, so it is never downloaded: a missing file is refused in one line saying where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .datasets import ImageSet
from .fetching import dataset_folder
from .registry import Dataset, register_dataset
from .user import read_images_cached

IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
SOURCE = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
SPLITS = {"train": "0", "valid": "1", "test": "2"}
CROP = 148
SIZE = 64


def read_partition(path: Path) -> dict[str, list[str]]:
    """The image names of each split, in the file's order, from lines "<name> <0|1|2>"."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read ({type(exc).__name__}: {str(exc)[:100]})") from None
    names = {split: [] for split in SPLITS}
    by_code = {code: split for split, code in SPLITS.items()}
    seen = set()
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in by_code or os.path.basename(fields[0]) != fields[0] or fields[0] in (".", ".."):
            raise DataError(f"{path}: line {number} is {line.strip()[:60]!r}, expected an image file name and 0, 1 or 2")
        if fields[0] in seen:
            raise DataError(f"{path}: line {number} lists {fields[0]} a second time")
        seen.add(fields[0])
        names[by_code[fields[1]]].append(fields[0])
    if not seen:
        raise DataError(f"{path}: lists no images")
    return names


class CelebA(Dataset):
    """CelebA's aligned faces, center-cropped to 148 x 148 and resized to 64 x 64; the official train / valid / test split."""

    name = "celeba"
    folder = "celeba"
    description = (f"CelebA aligned faces, {CROP}x{CROP} center crop resized to {SIZE}x{SIZE} colour, official split "
                   "162,770 train / 19,867 valid / 19,962 test (not downloaded: put the files there by hand)")
    splits = tuple(SPLITS)
    image_shape = (3, SIZE, SIZE)
    classes = ()
    downloaded = False  # Google Drive's confirmation page: the files are put in place by hand

    def files(self, data_dir=None) -> list[Path]:
        """What a load reads: the partition file and the folder of JPEGs."""
        folder = dataset_folder(data_dir, self.folder)
        return [folder / PARTITION, folder / IMAGES]

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True) -> ImageSet:
        if split not in SPLITS:
            raise DataError(f"unknown split {split!r} of {self.name} (choose from {', '.join(SPLITS)})")
        folder = dataset_folder(data_dir, self.folder)
        images_dir, partition = folder / IMAGES, folder / PARTITION
        missing = [name for name, there in ((f"{IMAGES}/", images_dir.is_dir()), (PARTITION, partition.is_file())) if not there]
        if missing:
            raise DataError(f"{folder}: missing {' and '.join(missing)}; CelebA is not downloaded automatically: get the aligned "
                            f"images (img_align_celeba.zip) and {PARTITION} from {SOURCE} and put them at {images_dir}/ and {partition}")
        names = read_partition(partition)[split]
        if not names:
            raise DataError(f"{partition}: lists no images of the {split} split (code {SPLITS[split]})")
        with os.scandir(images_dir) as entries:  # one listing, not 200,000 stats
            present = {entry.name for entry in entries}
        absent = next((n for n in names if n not in present), None)
        if absent is not None:
            raise DataError(f"{partition}: names {absent}, which is not in {images_dir}")
        files = [os.path.join(images_dir, n) for n in names]
        labels = np.zeros(len(files), dtype=np.int64)
        images, labels, _ = read_images_cached(images_dir, files, labels, (), image_size=SIZE, crop=CROP,
                                               source=f"{images_dir} ({self.name} {split})")
        if images.ndim == 3:  # every image of the split grey: held as colour all the same, as the dataset's shape says
            images = np.repeat(images[:, None], 3, axis=1)
        return ImageSet(torch.from_numpy(np.ascontiguousarray(images)).to(device), torch.from_numpy(labels).to(device),
                        f"{self.name}-{split}", classes=())


register_dataset(CelebA())
