"""Validation during training: the bound on held-out training images, the best weights by it, early stopping.

data.validation = N holds out the last N images of the training split (the VampPrior paper's 50,000 / 10,000
split of MNIST's training set): they are never drawn into a batch, so no gradient ever sees them. Every
train.eval_every steps (or epochs) the model is bounded on them as `vaelab eval` bounds the test set: binarized
once with a fixed seed (the same images at every validation), the NELBO from one draw per image and, with
train.validation_iw = k, the IWAE-k bound, with the z draws seeded so that a validation neither depends on nor
changes the training run's random stream. The test set is never read during training.

The bound the run is judged by (IWAE-k when set, else the NELBO) decides the best weights (best.safetensors)
and, with train.patience, when to stop: after `patience` validations in a row without a lower bound.
"""

from __future__ import annotations

import json
import math

import torch

from .. import data as data_mod
from ..errors import ConfigError
from ..evaluation import elbo_terms, evaluation_set, iwae_per_image
from .checkpoint_contents import DamagedCheckpoint
from .config import RunConfig

VALIDATION_SEED = 0  # the z draws of every validation: the same at every step, on every resume


def split_validation(train_set: data_mod.ImageSet, cfg: RunConfig) -> tuple[data_mod.ImageSet, data_mod.ImageSet | None]:
    """(the images trained on, the held-out validation images or None): the last data.validation images."""
    held = cfg.data.validation
    if not held:
        return train_set, None
    left = len(train_set) - held
    if left < cfg.train.batch_size:
        raise ConfigError(f"data.validation: holding out {held} of the {len(train_set)} training images leaves {max(left, 0)}, "
                          f"fewer than one batch of train.batch_size {cfg.train.batch_size}")
    return train_set.rows(0, left), train_set.rows(left)


def steps_per_epoch(n_train: int, cfg: RunConfig) -> int:
    """Optimiser steps in one pass over the images trained on (the last partial batch is dropped)."""
    return n_train // cfg.train.batch_size


class Validation:
    """The validation images, the bound of each validation, and the best one so far (its value, its step, and how
    many validations have passed without a better one): the state every checkpoint carries as JSON."""

    def __init__(self, held_out: data_mod.ImageSet, cfg: RunConfig, interval: int):
        self.x, self.y = evaluation_set("full", held_out, cfg.model.binary_pixels)
        self.iw, self.interval, self.patience = cfg.train.validation_iw, interval, cfg.train.patience
        self.patience_from = cfg.train.patience_from
        self.key = f"niwae_{self.iw}" if self.iw else "nelbo"
        self.best, self.best_step, self.since_best, self.count = math.inf, 0, 0, 0

    def due(self, step: int) -> bool:
        return step % self.interval == 0

    @torch.inference_mode()
    def bound(self, model: torch.nn.Module) -> dict:
        """{"nelbo", "kl", "rec", kl of each group, and niwae_k}: nats per held-out image."""
        was_training = model.training
        model.eval()
        device = self.x.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(VALIDATION_SEED)
            result = elbo_terms(model, self.x, 1, y=self.y)
            if self.iw:
                result[self.key] = float(-iwae_per_image(model, self.x, self.iw, y=self.y).mean())
        model.train(was_training)
        return result

    def judge(self, step: int, bound: float) -> bool:
        """Record one validation's bound; True when it is the best so far (lower, and finite)."""
        self.count += 1
        if math.isfinite(bound) and bound < self.best:
            self.best, self.best_step, self.since_best = bound, step, 0
            return True
        # Before train.patience_from no validation counts towards early stopping.
        self.since_best = self.since_best + 1 if step >= self.patience_from else 0
        return False

    @property
    def exhausted(self) -> bool:
        """Early stopping: `patience` validations in a row without a better bound."""
        return bool(self.patience) and self.since_best >= self.patience

    def state(self) -> str:
        return json.dumps({"best": self.best if math.isfinite(self.best) else None, "best_step": self.best_step,
                           "since_best": self.since_best, "count": self.count})

    def load_state(self, text: str | None, step: int) -> None:
        """Restore state()'s JSON from a checkpoint at `step`, checked (DamagedCheckpoint if it is not a state
        this run could have reached)."""
        if text is None:
            raise DamagedCheckpoint("metadata validation is missing (the run validates)")
        try:
            state = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            raise DamagedCheckpoint("metadata validation is not JSON") from None
        if not isinstance(state, dict) or set(state) != {"best", "best_step", "since_best", "count"}:
            raise DamagedCheckpoint("metadata validation is not a validation state")
        best, best_step, since, count = state["best"], state["best_step"], state["since_best"], state["count"]
        counters = (best_step, since, count)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters):
            raise DamagedCheckpoint("metadata validation holds counters that are not whole numbers >= 0")
        if count != step // self.interval or since > count or best_step > step or (best is None and since and since != count):
            raise DamagedCheckpoint(f"metadata validation ({text[:80]}) is not the state of a run at step {step}")
        if best is not None and not (isinstance(best, (int, float)) and math.isfinite(best)):
            raise DamagedCheckpoint("metadata validation's best bound is not a finite number")
        self.best = math.inf if best is None else float(best)
        self.best_step, self.since_best, self.count = best_step, since, count
