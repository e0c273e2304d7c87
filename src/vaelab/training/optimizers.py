"""The optimiser, its learning-rate schedule and the averaged weights, built from the run's train settings.

Schedules are torch.optim.lr_scheduler's, stepped once per optimiser step (ReduceLROnPlateau once per
validation); their state goes into every checkpoint as JSON, so a resumed run continues the schedule exactly.
The averaged weights (Polyak averaging, train.ema_decay) are a copy of the model whose parameters follow
w_avg <- d w_avg + (1 - d) w after each step, one foreach lerp on the device: torch's AveragedModel asks
the host whether it has averaged yet at every step, a synchronisation per step on CUDA.
"""

from __future__ import annotations

import copy
import json
import math

import torch
from torch.optim import lr_scheduler

from .config import TrainConfig

_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}


def make_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """train.optimizer with train.lr, train.weight_decay and train.eps. Adam and AdamW use the fused kernel where torch has one
    (CPU, CUDA): one pass over each parameter instead of a dozen foreach ops; on the reference VAE it is most of the
    difference between vaelab and a plain loop (docs/performance.md). Adamax has no fused kernel. With
    train.cuda_graphs the fused step is capturable, so that it can run inside a CUDA graph (training/captured.py)."""
    cls = _OPTIMIZERS[train.optimizer]
    options = {"lr": train.lr, "weight_decay": train.weight_decay, "eps": train.eps}
    if train.optimizer in ("adam", "adamw"):
        options["fused"] = device.type in ("cpu", "cuda")
        options["capturable"] = train.cuda_graphs and device.type == "cuda"
    return cls(model.parameters(), **options)


def make_schedule(optimizer: torch.optim.Optimizer, train: TrainConfig) -> lr_scheduler.LRScheduler | None:
    """The per-step schedule of train.lr_schedule behind train.lr_warmup_steps of linear warm-up; None when the
    learning rate is constant throughout. ReduceLROnPlateau is built by make_plateau: it steps on validations."""
    warmup, kind = train.lr_warmup_steps, train.lr_schedule
    after = train.steps - warmup  # the steps the schedule proper spans
    if kind == "step":
        main = lr_scheduler.StepLR(optimizer, step_size=train.lr_step, gamma=train.lr_decay)
    elif kind == "exponential":
        main = lr_scheduler.ExponentialLR(optimizer, gamma=train.lr_decay ** (1 / train.lr_step))
    elif kind == "multistep":
        main = lr_scheduler.MultiStepLR(optimizer, milestones=[m - warmup for m in train.lr_milestones], gamma=train.lr_decay)
    elif kind == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(after, 1), eta_min=train.lr_min)
    else:  # constant, or plateau (stepped by validations)
        main = None
    if not warmup:
        return main
    ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup)
    if main is None:
        return ramp
    return lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])


def make_plateau(optimizer: torch.optim.Optimizer, train: TrainConfig) -> lr_scheduler.ReduceLROnPlateau | None:
    if train.lr_schedule != "plateau":
        return None
    return lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=train.lr_decay, patience=train.lr_plateau_patience - 1)


def schedule_state(schedule) -> str:
    """A scheduler's state as JSON (numbers and lists only: nothing to unpickle)."""
    return json.dumps(schedule.state_dict())


def load_schedule_state(schedule, text: str, step: int | None) -> None:
    """Load schedule_state's JSON; ValueError when it is not a state this scheduler accepts (or, for a per-step
    schedule, `step` is not the number of steps it has taken)."""
    try:
        state = json.loads(text)
    except (json.JSONDecodeError, RecursionError, TypeError):
        raise ValueError("is not JSON") from None
    if not isinstance(state, dict) or set(state) != set(schedule.state_dict()):
        raise ValueError("is not the state of this run's schedule")
    if step is not None and state.get("last_epoch") != step:
        raise ValueError(f"has taken {state.get('last_epoch')!r} steps, not {step}")
    try:
        schedule.load_state_dict(state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ValueError(f"does not load ({exc})") from None
    lrs = [group["lr"] for group in schedule.optimizer.param_groups]
    if not all(isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0 for lr in lrs):
        raise ValueError("gives a learning rate that is not a finite number >= 0")


class WeightAverage:
    """Polyak averaging: `model` is a copy of the trained model whose parameters are the exponential moving average
    of the trained ones (started at them), and whose buffers (batch-norm statistics, themselves running averages)
    are copied from the trained model before each use (`sync_buffers`)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).requires_grad_(False)
        self._averaged = list(self.model.parameters())
        self._trained = list(model.parameters())
        self._source = model

    @torch.no_grad()
    def update(self) -> None:
        """w_avg <- decay * w_avg + (1 - decay) * w, for every parameter at once."""
        torch._foreach_lerp_(self._averaged, self._trained, 1 - self.decay)

    @torch.no_grad()
    def sync_buffers(self) -> None:
        for mine, theirs in zip(self.model.buffers(), self._source.buffers()):
            mine.copy_(theirs)
