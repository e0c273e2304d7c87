"""The dataset registry: every dataset `load` knows by name, and the lookup from a name or a path to one.

A dataset answers the questions the rest of vaelab asks of it (its image shape, its class names, its
splits) and loads a split as an ImageSet; training, evaluation and figures ask it, never its name.
A path that is not a registered name is the user's own images (data/user.py).
"""

from __future__ import annotations

import os

from ..errors import DataError


class Dataset:
    """One dataset: `name`, `splits`, `image_shape` ((H, W) or (C, H, W) of one image), `classes` (the names of
    labels 0, 1, ..., for figures; empty when the images carry no labels) and `load(split, data_dir, device,
    download)` -> ImageSet. Subclasses may compute `image_shape` and `classes` lazily (as properties)."""

    name: str = ""
    splits: tuple[str, ...] = ("train", "test")
    image_shape: tuple[int, ...] = ()
    classes: tuple[str, ...] = ()

    def load(self, split: str = "train", data_dir=None, device="cpu", download: bool = True):
        raise NotImplementedError


REGISTRY: dict[str, Dataset] = {}


def register_dataset(dataset: Dataset) -> Dataset:
    """Make `dataset` known by its name to `load`, the CLI's --dataset and data.dataset."""
    REGISTRY[dataset.name] = dataset
    return dataset


def is_path(name: str) -> bool:
    """Whether a data.dataset value names files rather than a registered dataset: it is not registered and looks
    like a path (a separator, a suffix, or something that exists), so a mistyped name is still refused as a name."""
    name = str(name)
    return name not in REGISTRY and (os.sep in name or "/" in name or os.path.splitext(name)[1] != "" or os.path.exists(name))


def lookup(name_or_path, test_path=None, test_fraction=None, image_size=None, cache_dir=None) -> Dataset:
    """The registered dataset of that name, or the user's images at that path (the other arguments apply to those)."""
    name = os.fspath(name_or_path)
    if name in REGISTRY:
        return REGISTRY[name]
    if not is_path(name):
        raise DataError(f"unknown dataset {name!r} (choose from {', '.join(REGISTRY)}, or give a path to your images)")
    from .user import UserImages  # the user's family is chosen by path, not by name

    return UserImages(name, test_path=test_path, test_fraction=test_fraction, image_size=image_size, cache_dir=cache_dir)


def dataset_for(settings) -> Dataset:
    """The dataset a run's data settings describe (training.config.DataConfig, or anything with its fields)."""
    path = getattr(settings, "path", None)
    return lookup(path or settings.dataset, getattr(settings, "test_path", None), getattr(settings, "test_fraction", None),
                  getattr(settings, "image_size", None))


def load_for(settings, split: str = "train", device="cpu", data_dir=None):
    """One split, as an ImageSet on `device`, of the dataset a run's data settings describe; `data_dir` overrides theirs."""
    return dataset_for(settings).load(split, data_dir or settings.data_dir, device, settings.download)
