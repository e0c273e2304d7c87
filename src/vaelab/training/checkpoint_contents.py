"""What a checkpoint may hold: every value read from one is checked before it is used, manifest or not.

The loop state (step, batch order and position, RNG states, partial log sums, counters) must be in range
and consistent; the optimiser's hyper-parameters must be those the run's config builds, its per-parameter state the
names Adam keeps, with moments of their parameter's shape, finite, and step counts within the checkpoint's
step; the weights finite. A checkpoint that fails any check raises DamagedCheckpoint, and checkpoints.restore
moves it aside and tries the next older one.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

# How a torch kernel runs, not what it computes: taken from this process's optimizer, whatever the
# checkpoint says (a run checkpointed on one device may resume on another).
_IMPLEMENTATION_KEYS = {"foreach", "fused", "capturable", "differentiable"}


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message says why."""


@dataclass
class LoopState:
    """The training loop's state at a checkpoint, checked for range and consistency."""

    step: int
    batch_order: torch.Tensor
    batch_position: int
    rng_cpu: torch.Tensor
    rng_cuda: torch.Tensor | None
    log_names: list | None
    log_sums: torch.Tensor | None
    since_log: int
    elapsed_seconds: float
    skipped_steps: int


def loop_state(path: Path, tensors: dict, metadata: dict, n_train: int) -> LoopState:
    def integer(key, default=None, low=0, high=None):
        text = metadata.get(key, None if default is None else str(default))
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise DamagedCheckpoint(f"metadata {key} is {text!r}, not an integer") from None
        if value < low or (high is not None and value > high):
            raise DamagedCheckpoint(f"metadata {key} = {value} is outside {low}..{high if high is not None else 'inf'}")
        return value

    step = integer("step")
    if path.name != f"step-{step:07d}.safetensors":
        raise DamagedCheckpoint(f"metadata step {step} disagrees with the file name")
    order = tensors.get("state.batch_order")
    if order is None or order.dtype != torch.int64 or order.shape != (n_train,):
        raise DamagedCheckpoint(f"state.batch_order is not {n_train} indices (the training set's size)")
    if not torch.equal(order.sort().values, torch.arange(n_train)):
        raise DamagedCheckpoint("state.batch_order is not a permutation of the training set")
    rng = tensors.get("state.rng_cpu")
    reference = torch.get_rng_state()
    if rng is None or rng.dtype != reference.dtype or rng.shape != reference.shape:
        raise DamagedCheckpoint("state.rng_cpu is missing or not a CPU generator state")
    try:
        torch.Generator().set_state(rng)  # a throwaway generator: torch's own check of the state's contents
    except RuntimeError:
        raise DamagedCheckpoint("state.rng_cpu is not a generator state torch accepts") from None
    rng_cuda = tensors.get("state.rng_cuda")
    if rng_cuda is not None and (rng_cuda.dtype != torch.uint8 or rng_cuda.ndim != 1):
        raise DamagedCheckpoint("state.rng_cuda is not a CUDA generator state")
    try:
        names = json.loads(metadata.get("log_names", "null"))
    except (json.JSONDecodeError, RecursionError):
        raise DamagedCheckpoint("metadata log_names is not JSON") from None
    sums = tensors.get("state.log_sums")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DamagedCheckpoint("metadata log_names is not a list of names")
    if (names is None) != (sums is None) or (sums is not None and (sums.shape != (len(names),) or not sums.is_floating_point()
                                                                 or not sums.isfinite().all())):
        raise DamagedCheckpoint("state.log_sums does not match metadata log_names")
    try:
        elapsed = float(metadata.get("elapsed_seconds", "0"))
    except ValueError:
        raise DamagedCheckpoint("metadata elapsed_seconds is not a number") from None
    if not (math.isfinite(elapsed) and elapsed >= 0):
        raise DamagedCheckpoint(f"metadata elapsed_seconds = {elapsed} is not a duration")
    return LoopState(step=step, batch_order=order, batch_position=integer("batch_position", high=n_train), rng_cpu=rng,
                     rng_cuda=rng_cuda, log_names=names, log_sums=sums, since_log=integer("since_log", 0, high=step),
                     elapsed_seconds=elapsed, skipped_steps=integer("skipped_steps", 0, high=step))


def _same(a, b) -> bool:
    # As JSON: no True == 1 or 0 == False, and a list is compared element by element.
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def param_groups(metadata: dict, built: list, scheduled: bool = False) -> list:
    """The checkpoint's param_groups, which must hold the hyper-parameters of `built` (the optimizer as the
    run's config builds it): the learning rate, betas, eps, weight decay, amsgrad, maximize. Returns `built`:
    how the kernel runs (fused, foreach, ...) is this process's, and a key an older torch did not write
    takes today's value. With a learning-rate schedule (`scheduled`) the rate is the checkpoint's, a number in
    0..the schedule's peak (its initial_lr, or the built rate for a plateau schedule)."""
    try:
        groups = json.loads(metadata["param_groups"])
    except (json.JSONDecodeError, RecursionError):
        raise DamagedCheckpoint("metadata param_groups is not JSON") from None
    if not isinstance(groups, list) or len(groups) != len(built) or not all(isinstance(g, dict) for g in groups):
        raise DamagedCheckpoint(f"metadata param_groups is not the {len(built)} parameter group(s) of the run's optimizer")
    for group, expected in zip(groups, built):
        if not _same(group.get("params"), expected["params"]):
            raise DamagedCheckpoint("metadata param_groups lists other parameters than the model has")
        for key, value in group.items():
            if key not in expected:
                raise DamagedCheckpoint(f"metadata param_groups holds {key!r}, which the optimiser config.json builds has not")
            if key == "lr" and scheduled:
                peak = expected.get("initial_lr", expected["lr"])
                if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= peak):
                    raise DamagedCheckpoint(f"the optimiser's lr is {json.dumps(value)[:40]}, not a rate in 0..{peak:g} (the schedule's peak)")
            elif key not in _IMPLEMENTATION_KEYS and not _same(value, expected[key]):
                raise DamagedCheckpoint(f"the optimiser's {key} is {json.dumps(value)[:40]} where config.json gives {json.dumps(expected[key])}")
    if scheduled:
        return [{**expected, "lr": group["lr"]} for group, expected in zip(groups, built)]
    return built


def state_names(optimizer: torch.optim.Optimizer, group: dict) -> set:
    """The per-parameter state an optimiser keeps: Adam and AdamW their moments (and max_exp_avg_sq with
    amsgrad), Adamax its first moment and infinity norm."""
    if isinstance(optimizer, torch.optim.Adamax):
        return {"step", "exp_avg", "exp_inf"}
    return {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())


def adam_state(tensors: dict, optimizer: torch.optim.Optimizer, groups: list, step: int) -> dict:
    """The optimiser's per-parameter state from the checkpoint's "optim.INDEX.NAME" tensors, each checked: the
    names it keeps (state_names), moments of their parameter's shape and dtype,
    finite, second moments not negative, and a step count that is a whole number in 0..`step` (a skipped
    step does not count)."""
    params = [(index, param, group) for group, built in zip(optimizer.param_groups, groups)
              for index, param in zip(built["params"], group["params"])]
    by_index = {index: (param, group) for index, param, group in params}
    kind = type(optimizer).__name__
    state: dict = {}
    for key, value in tensors.items():
        if not key.startswith("optim."):
            continue
        parts = key.split(".", 2)
        if len(parts) != 3 or not re.fullmatch("[0-9]+", parts[1]) or int(parts[1]) not in by_index:
            raise DamagedCheckpoint(f"{key} is not the state of one of the model's parameters")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for index, entries in state.items():
        param, group = by_index[index]
        wanted = state_names(optimizer, group)
        if set(entries) != wanted:
            raise DamagedCheckpoint(f"{kind}'s state of parameter {index} holds {sorted(entries)}, not {sorted(wanted)}")
        count = entries["step"]
        if count.shape != () or not count.is_floating_point():
            raise DamagedCheckpoint(f"{kind}'s step of parameter {index} has shape {tuple(count.shape)} and dtype {count.dtype}, "
                                    f"not one floating-point number")
        value = count.item()
        if not (math.isfinite(value) and 0 <= value <= step and value == int(value)):
            raise DamagedCheckpoint(f"{kind}'s step of parameter {index} is {value:g}, not a whole number of steps in 0..{step}")
        for name in sorted(wanted - {"step"}):
            moment = entries[name]
            check_like(moment, param, f"{kind}'s {name} of parameter {index}", "its parameter")
            if name != "exp_avg" and (moment < 0).any():
                raise DamagedCheckpoint(f"{kind}'s {name} of parameter {index} holds a negative value")
    return state


def check_like(value: torch.Tensor, like: torch.Tensor, what: str, whose: str) -> None:
    """A tensor read from a checkpoint must have the shape and dtype of the one it stands beside, and be finite."""
    if value.shape != like.shape or value.dtype != like.dtype:
        raise DamagedCheckpoint(f"{what} is {tuple(value.shape)} {value.dtype}, {whose} {tuple(like.shape)} {like.dtype}")
    if not value.isfinite().all():
        raise DamagedCheckpoint(f"{what} holds inf or NaN")


def check_weights(model: torch.nn.Module) -> None:
    """The loop never takes a non-finite step, so a checkpoint holding inf or NaN weights is damaged."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not value.isfinite().all():
            raise DamagedCheckpoint(f"model weight {name} holds inf or NaN")


def check_rng_cuda(state: LoopState, device: torch.device) -> None:
    if device.type == "cuda" and state.rng_cuda is not None:
        try:
            torch.Generator(device=device).set_state(state.rng_cuda)  # a throwaway generator
        except RuntimeError:
            raise DamagedCheckpoint("state.rng_cuda is not a CUDA generator state torch accepts") from None
