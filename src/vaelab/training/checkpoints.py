"""Checkpoints: everything a run needs to continue exactly, in one safetensors file per step.

checkpoints/step-NNNNNNN.safetensors holds the model ("model."), Adam's state ("optim.") and the
training loop's own state ("state.": RNG, the epoch's batch order, partial log sums; the rest as
metadata). Each is written atomically and recorded in the run's manifest (files.py). Resuming takes
the newest checkpoint that is intact: one whose checksum does not match, whose contents do not parse
or whose loop state is out of range is moved aside as *.damaged with a one-line warning, and the next
older one is used.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import RunDirError, warn
from . import files

CHECKPOINT_DIR = "checkpoints"


def _contiguous_cpu(tensors: dict) -> dict:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Flatten an optimizer's state into tensors plus JSON metadata (param_groups)."""
    state = optimizer.state_dict()
    tensors = {}
    for index, per_param in state["state"].items():
        for name, value in per_param.items():
            tensors[f"optim.{index}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return tensors, {"param_groups": json.dumps(state["param_groups"])}


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict, metadata: dict) -> None:
    state: dict = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors file written atomically and recorded in the run's manifest."""
    files.atomic_write_bytes(path, lambda tmp: save_file(_contiguous_cpu(tensors), tmp, metadata=metadata), checksum=True)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, keep: int,
                    state: dict | None = None, state_metadata: dict | None = None) -> Path:
    """Write checkpoints/step-NNNNNNN.safetensors and prune all but the newest `keep`."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    try:
        folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"cannot create {folder}: {exc.strerror}") from None
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim, metadata = optimizer_tensors(optimizer)
    tensors.update(optim)
    tensors.update({f"state.{k}": v for k, v in (state or {}).items()})
    metadata.update({k: str(v) for k, v in (state_metadata or {}).items()})
    metadata["step"] = str(step)
    path = folder / f"step-{step:07d}.safetensors"
    write_safetensors(path, tensors, metadata)
    for old in checkpoint_paths(run_dir)[keep:]:
        old.unlink()
    return path


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first."""
    return sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step-*.safetensors"), reverse=True)


def newest(run_dir: Path) -> Path | None:
    """The run's newest checkpoint, unchecked (for messages that name it)."""
    return next(iter(checkpoint_paths(run_dir)), None)


def read_safetensors(path: Path, device="cpu") -> dict:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path}: not a readable safetensors file ({exc})") from None


def read_checkpoint(path: Path, device="cpu") -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint, read with safetensors only (nothing is unpickled)."""
    tensors = read_safetensors(path, device)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    return tensors, metadata


def newest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose checksum matches the manifest; a warning for each newer one skipped.
    Read-only (for eval, sample, plot): nothing is moved."""
    for path in checkpoint_paths(run_dir):
        problem = files.verify(path)
        if problem is None:
            return path
        warn(f"{path}: damaged ({problem}); using an older checkpoint")
    return None


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


def _loop_state(path: Path, tensors: dict, metadata: dict, n_train: int) -> LoopState:
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
        names = json.loads(metadata.get("log_names", "null"))
    except (json.JSONDecodeError, RecursionError):
        raise DamagedCheckpoint("metadata log_names is not JSON") from None
    sums = tensors.get("state.log_sums")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise DamagedCheckpoint("metadata log_names is not a list of names")
    if (names is None) != (sums is None) or (sums is not None and (sums.shape != (len(names),) or not sums.isfinite().all())):
        raise DamagedCheckpoint("state.log_sums does not match metadata log_names")
    try:
        elapsed = float(metadata.get("elapsed_seconds", "0"))
    except ValueError:
        raise DamagedCheckpoint("metadata elapsed_seconds is not a number") from None
    if not (math.isfinite(elapsed) and elapsed >= 0):
        raise DamagedCheckpoint(f"metadata elapsed_seconds = {elapsed} is not a duration")
    return LoopState(step=step, batch_order=order, batch_position=integer("batch_position", high=n_train), rng_cpu=rng,
                     rng_cuda=tensors.get("state.rng_cuda"), log_names=names, log_sums=sums,
                     since_log=integer("since_log", 0), elapsed_seconds=elapsed, skipped_steps=integer("skipped_steps", 0))


def _read_for_resume(path: Path, n_train: int) -> tuple[dict, dict, LoopState]:
    problem = files.verify(path)
    if problem is not None:
        raise DamagedCheckpoint(problem)
    try:
        tensors, metadata = read_checkpoint(path)
    except RunDirError as exc:
        raise DamagedCheckpoint(str(exc).split(": ", 1)[-1]) from None
    if "param_groups" not in metadata:
        raise DamagedCheckpoint("metadata param_groups is missing")
    return tensors, metadata, _loop_state(path, tensors, metadata, n_train)


def _check_values(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """What load_state_dict does not check: Adam's moments have their parameter's shape, and nothing is
    inf or NaN (the loop never takes a non-finite step, so a checkpoint holding one is damaged)."""
    for name, value in model.state_dict().items():
        if value.is_floating_point() and not value.isfinite().all():
            raise DamagedCheckpoint(f"model weight {name} holds inf or NaN")
    for group in optimizer.param_groups:
        for param in group["params"]:
            for key, value in optimizer.state.get(param, {}).items():
                if not torch.is_tensor(value) or not value.is_floating_point():
                    raise DamagedCheckpoint(f"Adam's {key} is not a floating-point tensor")
                if key != "step" and value.shape != param.shape:
                    raise DamagedCheckpoint(f"Adam's {key} has shape {tuple(value.shape)} for a parameter of shape {tuple(param.shape)}")
                if not value.isfinite().all():
                    raise DamagedCheckpoint(f"Adam's {key} holds inf or NaN")


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_train: int) -> LoopState | None:
    """Load the newest intact checkpoint into model and optimizer and return its loop state (the caller
    restores batch order and RNG). A damaged checkpoint is renamed to *.damaged with a warning and the
    next older one tried. None when the run has no checkpoint at all; a RunDirError when it has some
    but none is intact, or when the model's weights do not fit config.json."""
    damaged = 0
    for path in checkpoint_paths(run_dir):
        try:
            tensors, metadata, state = _read_for_resume(path, n_train)
            weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            try:
                model.load_state_dict(weights)
            except RuntimeError as exc:
                raise RunDirError(f"--resume: {path} does not match {Path(run_dir) / 'config.json'} "
                                  f"({str(exc).strip().splitlines()[0]})") from None
            try:
                load_optimizer_tensors(optimizer, tensors, metadata)
            except (RuntimeError, KeyError, ValueError, TypeError, json.JSONDecodeError) as exc:
                raise DamagedCheckpoint(f"Adam's state does not load ({str(exc).strip().splitlines()[0][:120]})") from None
            _check_values(model, optimizer)
            return state
        except DamagedCheckpoint as exc:
            damaged += 1
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            warn(f"{path}: damaged ({exc}); moved to {aside.name}, resuming from the next older checkpoint")
    if damaged:
        raise RunDirError(f"--resume: {run_dir} has no intact checkpoint ({damaged} damaged, kept as checkpoints/*.damaged); "
                          f"start a new run with --out")
    return None
