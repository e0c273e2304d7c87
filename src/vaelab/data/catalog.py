"""What `vaelab data` shows of each registered dataset: a one-line description, its image shape and classes, where its
files are looked for and whether they are there. A dataset may answer for itself with `description` and
`files(data_dir)`; the built-in specs are answered from their DatasetSpec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from .datasets import DATASETS, resolve_data_root
from .registry import REGISTRY, Dataset

BUILTIN_DESCRIPTIONS = {
    "mnist": "MNIST handwritten digits, 28x28 grey, 60,000 train / 10,000 test (IDX files, sha256-checked)",
    "fashion-mnist": "Fashion-MNIST clothing, 28x28 grey, 10 classes, 60,000 train / 10,000 test (IDX files, sha256-checked)",
    "svhn": "SVHN cropped house-number digits, 32x32 colour, train / test / extra (.mat files, md5-checked)",
    "dsprites": "dSprites-style shapes generated in code, 64x64 binary, five known factors (generated on first use)",
    "color-dsprites": "the dSprites shapes, each in a random colour on black, 64x64 RGB, five known factors (from dsprites' files)",
}
GENERATED = ("dsprites", "color-dsprites")
"""Datasets rendered into vaelab's cache folder on first use rather than downloaded."""


@dataclass
class Entry:
    name: str
    description: str
    image_shape: tuple[int, ...]
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    folder: Path | None
    files: list[Path]
    present: bool | None
    """Whether every file is there (None: the dataset does not say which files it reads)."""
    downloaded: bool = True
    """Whether missing files are downloaded on first use (False: they must be put there by hand)."""


def _files(dataset: Dataset, root: Path, data_dir) -> tuple[Path | None, list[Path]]:
    if hasattr(dataset, "files"):
        files = list(dataset.files(data_dir))
        return (files[0].parent if files else None), files
    spec = DATASETS.get(dataset.name)
    if spec is not None:
        folder = root / spec.folder
        files = []
        for names in spec.splits.values():
            for base in names:  # an IDX file may be stored gzipped
                found = [folder / c for c in spec.candidates(base) if (folder / c).is_file()]
                files.append(found[0] if found else folder / base)
        return folder, files
    if dataset.name in GENERATED:  # rendered into the cache folder; an older vaelab's render in the data root still counts
        from .dsprites import cache_folder

        return (root / "dsprites" if _rendered(root / "dsprites") else cache_folder()), []
    return None, []


def _rendered(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def describe(dataset: Dataset, data_dir=None) -> Entry:
    root, _ = resolve_data_root(data_dir)
    description = getattr(dataset, "description", None) or BUILTIN_DESCRIPTIONS.get(dataset.name) or "(registered without a description)"
    try:
        folder, files = _files(dataset, root, data_dir)
    except DataError:  # a data root that does not exist: nothing is present
        folder, files = None, []
    if files:
        present = all(f.exists() for f in files)  # a dataset may read a whole folder (celeba's JPEGs)
    elif folder is not None and dataset.name in GENERATED:
        present = _rendered(folder)
    else:
        present = None
    return Entry(dataset.name, description, tuple(dataset.image_shape), tuple(dataset.classes), tuple(dataset.splits), folder,
                 files, present, getattr(dataset, "downloaded", True))


def catalog(data_dir=None) -> list[Entry]:
    """Every registered dataset, in registration order."""
    return [describe(dataset, data_dir) for dataset in REGISTRY.values()]
