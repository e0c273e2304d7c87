"""A run's training protocol beyond the weights and the optimiser: the learning-rate schedule, the averaged
weights, the validation bound with the best weights and early stopping; what each puts into a checkpoint and
how each is restored from one, checked.

Each part is None when its setting is off, and then writes and reads nothing: a run without them has the same
checkpoints as before they existed.
"""

from __future__ import annotations

import math

import torch

from .. import data as data_mod
from .checkpoint_contents import DamagedCheckpoint, check_like
from .config import RunConfig
from .optimizers import WeightAverage, load_schedule_state, make_plateau, make_schedule, schedule_state
from .validation import Validation, steps_per_epoch

EMA_PREFIX = "state.ema."


class Protocol:
    """The schedule (stepped once per optimiser step), the plateau schedule (stepped on each validation), the
    averaged weights (updated after each step) and the validation, built from the run's settings."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: RunConfig, n_train: int,
                 held_out: data_mod.ImageSet | None):
        train = cfg.train
        self.model, self.optimizer = model, optimizer
        self.schedule = make_schedule(optimizer, train)
        self.plateau = make_plateau(optimizer, train)
        self.average = WeightAverage(model, train.ema_decay) if train.ema_decay else None
        per_epoch = steps_per_epoch(n_train, cfg)
        interval = train.eval_every * (per_epoch if train.eval_unit == "epochs" else 1)
        self.validation = Validation(held_out, cfg, interval) if held_out is not None and train.eval_every else None
        self.scheduled = self.schedule is not None or self.plateau is not None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def after_step(self) -> None:
        if self.schedule is not None:
            self.schedule.step()
        if self.average is not None:
            self.average.update()

    @property
    def kept_model(self) -> torch.nn.Module:
        """The weights that are validated and kept (best.safetensors, model.safetensors): the averaged ones
        when averaging, else the trained ones."""
        if self.average is None:
            return self.model
        self.average.sync_buffers()
        return self.average.model

    def validate(self, step: int) -> tuple[dict, bool]:
        """Bound the validation images with the kept weights; (the bounds, whether they are the best so far).
        The plateau schedule takes the bound."""
        result = self.validation.bound(self.kept_model)
        improved = self.validation.judge(step, result[self.validation.key])
        if self.plateau is not None:
            self.plateau.step(result[self.validation.key])
        return result, improved

    # ---------------------------------------------------------------- checkpoints
    def checkpoint_state(self) -> tuple[dict, dict]:
        """(tensors, metadata) for a checkpoint: the averaged weights as state.ema.*; the schedules' and the
        validation's state as JSON."""
        tensors, metadata = {}, {}
        if self.average is not None:
            # save_checkpoint files these under "state.", so they read back as state.ema.*
            tensors = {EMA_PREFIX[len("state."):] + name: value.detach() for name, value in self.average.model.named_parameters()}
        if self.schedule is not None:
            metadata["lr_schedule"] = schedule_state(self.schedule)
        if self.plateau is not None:
            metadata["lr_plateau"] = schedule_state(self.plateau)
        if self.validation is not None:
            metadata["validation"] = self.validation.state()
        return tensors, metadata

    def restore(self, tensors: dict, metadata: dict, step: int) -> None:
        """Load checkpoint_state's parts from a checkpoint at `step` (model and optimiser already loaded);
        DamagedCheckpoint when one is missing or not a state this run could have reached."""
        for key, schedule, steps in (("lr_schedule", self.schedule, step), ("lr_plateau", self.plateau, None)):
            if schedule is None:
                continue
            text = metadata.get(key)
            if text is None:
                raise DamagedCheckpoint(f"metadata {key} is missing (config.json schedules the learning rate)")
            try:
                load_schedule_state(schedule, text, steps)
            except ValueError as exc:
                raise DamagedCheckpoint(f"metadata {key} {exc}") from None
            # With one schedule its last rate is the optimiser's; warm-up and plateau together each act on it.
            alone = (self.schedule is None) != (self.plateau is None)
            if alone and [float(lr) for lr in schedule.get_last_lr()] != [group["lr"] for group in self.optimizer.param_groups]:
                raise DamagedCheckpoint(f"metadata {key} gives another learning rate than the optimiser's state")
        if self.average is not None:
            self._restore_average(tensors)
        elif any(key.startswith(EMA_PREFIX) for key in tensors):
            raise DamagedCheckpoint("it holds averaged weights, which config.json does not keep (train.ema_decay is 0)")
        if self.validation is not None:
            self.validation.load_state(metadata.get("validation"), step)

    def _restore_average(self, tensors: dict) -> None:
        averaged = dict(self.average.model.named_parameters())
        found = {key[len(EMA_PREFIX):]: value for key, value in tensors.items() if key.startswith(EMA_PREFIX)}
        if set(found) != set(averaged):
            raise DamagedCheckpoint("its averaged weights (state.ema.*) are not the model's parameters")
        for name, value in found.items():
            check_like(value, averaged[name], f"averaged weight {name}", "the model's")
        with torch.no_grad():
            for name, value in found.items():
                averaged[name].copy_(value)


def validation_record(step: int, per_epoch: int, result: dict, protocol: Protocol, seconds: float) -> dict:
    """The metrics.jsonl line of one validation: the bounds as validation_<name>, the best so far, the lr."""
    validation = protocol.validation
    record = {"step": step, "epoch": round(step / per_epoch, 3)}
    record.update({f"validation_{key}": value for key, value in result.items()})
    record["validation_best"] = validation.best if math.isfinite(validation.best) else None
    record["validation_best_step"] = validation.best_step
    record["lr"] = protocol.lr
    record["seconds"] = round(seconds, 3)
    return record
