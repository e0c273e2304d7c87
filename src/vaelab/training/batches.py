"""Training batches drawn by index from tensors on the device: no per-item Python, no DataLoader.

What a batch holds follows the model's declared needs (ModelSpec.labels): the images; their labels
for models of p(x | y); or, for models trained on a labelled subset, the whole labelled subset beside
an unlabelled batch from the whole training set, as the cs236 reference does.
"""

from __future__ import annotations

import torch

from .. import data as data_mod
from ..errors import ConfigError
from .config import RunConfig


class IndexSampler:
    """Shuffled mini-batches of indices, a fresh permutation each epoch (the last partial batch of an
    epoch is dropped, as with DataLoader(drop_last=True)). Indices live on the data's device."""

    def __init__(self, n: int, batch_size: int, device: torch.device):
        if batch_size > n:
            raise ConfigError(f"train.batch_size: {batch_size} is larger than the dataset ({n} images)")
        self.n, self.batch_size, self.device = n, batch_size, device
        self.order = torch.randperm(n, device=device)
        self.pos = 0

    def next(self) -> torch.Tensor:
        if self.pos + self.batch_size > self.n:
            self.order = torch.randperm(self.n, device=self.device)
            self.pos = 0
        batch = self.order[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return batch


class Batches:
    """Draws each step's batch by index from tensors on the device.

    x is a fresh Bernoulli binarization of the pixels for a binary likelihood, the pixels themselves
    otherwise. `labels` is the model's spec.labels: none, all (y for every image) or subset (the
    labelled subset x_labelled, y_labelled, binarized afresh every step)."""

    def __init__(self, train_set: data_mod.ImageSet, cfg: RunConfig, labels: str, binary: bool, device: torch.device):
        self.train_set, self.labels, self.binary = train_set, labels, binary
        self.sampler = IndexSampler(len(train_set), cfg.train.batch_size, device)
        self.labelled = labelled_indices(train_set, cfg).to(device) if labels == "subset" else None

    def x(self, index: torch.Tensor) -> torch.Tensor:
        if self.binary:  # uint8() unpacks only this batch of a set held packed (dsprites)
            return data_mod.binarize_batch(self.train_set.uint8(index))
        return self.train_set.pixels(index)

    def next(self) -> dict:
        index = self.sampler.next()
        batch = {"x": self.x(index)}
        if self.labels == "all":
            batch["y"] = self.train_set.labels[index]
        if self.labelled is not None:
            batch["x_labelled"] = self.x(self.labelled)
            batch["y_labelled"] = self.train_set.labels[self.labelled]
        return batch

    def sample(self) -> dict:
        """A batch like next()'s that leaves the sampler and the RNG as they were (to measure a step)."""
        position = self.sampler.pos
        with torch.random.fork_rng(devices=[self.sampler.device] if self.sampler.device.type == "cuda" else []):
            batch = self.next()
        self.sampler.pos = position
        return batch


def labelled_indices(train_set: data_mod.ImageSet, cfg: RunConfig) -> torch.Tensor:
    """The labelled subset: the cs236 positions, or labels_per_class random images of each class
    (drawn with a generator of their own seeded by train.seed, so the choice depends on nothing else)."""
    if cfg.data.labelled == "cs236":
        return data_mod.subset_indices(train_set.labels, data_mod.CS236_TRAIN_LABELLED_POSITIONS)
    labels = train_set.labels.cpu()
    generator = torch.Generator().manual_seed(cfg.train.seed)
    picked = []
    for c in range(int(labels.max()) + 1):
        of_class = torch.nonzero(labels == c).flatten()
        if len(of_class) < cfg.data.labels_per_class:
            raise ConfigError(f"data.labels_per_class: class {c} has only {len(of_class)} training images")
        picked.append(of_class[torch.randperm(len(of_class), generator=generator)[: cfg.data.labels_per_class]])
    return torch.cat(picked)
