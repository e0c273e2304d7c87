"""Checkpoints: everything a run needs to continue exactly, in one safetensors file per step.

checkpoints/step-NNNNNNN.safetensors holds the model ("model."), Adam's state ("optim.") and the
training loop's own state ("state.": RNG, the epoch's batch order, partial log sums; the rest as
metadata). Each is written atomically and recorded in the run's manifest (files.py). Resuming takes
the newest checkpoint that is intact: one whose checksum does not match, whose contents do not parse
or whose loop state is out of range is moved aside as *.damaged with a one-line warning, and the next
older one is used. Nothing a checkpoint holds is trusted: Adam's hyper-parameters must be those the run's
config builds, its counters and moments in range, its RNG states ones torch accepts (checkpoint_contents.py).

Readers (eval, sample, plot) may run beside a trainer that writes, records and prunes checkpoints at any
moment: read_newest_intact pins each file it reads (files.Pinned) and starts again from a fresh listing
when one vanished or was replaced, instead of calling it damaged.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..errors import RunDirError, warn
from . import files
from .checkpoint_contents import (DamagedCheckpoint, LoopState, adam_state, check_rng_cuda, check_weights,
                                  loop_state, param_groups)

CHECKPOINT_DIR = files.CHECKPOINT_DIR
_NAME = re.compile(r"step-([0-9]+)\.safetensors")
READ_ATTEMPTS = 10  # fresh listings a reader tries when checkpoints vanish under it


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
    match_parameter_layouts(optimizer)


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded moment its parameter's memory layout. Checkpoints store tensors contiguous, and the fused
    Adam kernel pairs a parameter's elements with its moments' in memory order: a contiguous moment of a
    channels-last weight (the conv nets') would update each weight with another element's moments."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    optimizer.state[param][name] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def write_safetensors(path: Path, tensors: dict, metadata: dict | None = None) -> None:
    """A safetensors file written atomically and recorded in the run's manifest."""
    files.atomic_write_bytes(path, lambda tmp: save_file(_contiguous_cpu(tensors), tmp, metadata=metadata), checksum=True)


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, keep: int,
                    state: dict | None = None, state_metadata: dict | None = None) -> Path:
    """Write checkpoints/step-NNNNNNN.safetensors and prune all but the newest `keep`."""
    folder = files.check_member(run_dir, Path(run_dir) / CHECKPOINT_DIR)
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
        old.unlink(missing_ok=True)
    return path


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoints, newest first by the step in their names as numbers (step 10,000,000 after
    9,999,999); other names are ignored, a symbolic link is refused (files.check_member)."""
    folder = files.check_member(run_dir, Path(run_dir) / CHECKPOINT_DIR)
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RunDirError(f"cannot list {folder}: {exc.strerror or exc}") from None
    found = []
    for entry in entries:
        match = _NAME.fullmatch(entry.name)
        if match:
            if entry.is_symlink():
                files.check_member(run_dir, folder / entry.name)  # the one line naming the link
            found.append((int(match.group(1)), entry.name))
    return [folder / name for _, name in sorted(found, reverse=True)]


def step_of(path: Path) -> int:
    """The step in a checkpoint's name (checkpoints/step-NNNNNNN.safetensors); ValueError for any other name."""
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{Path(path).name} is not a checkpoint name")
    return int(match.group(1))


def newest(run_dir: Path) -> Path | None:
    """The run's newest checkpoint, unchecked (for messages that name it)."""
    return next(iter(checkpoint_paths(run_dir)), None)


def read_pinned(pinned: files.Pinned, device="cpu", metadata: bool = False):
    """The tensors (with metadata=True: tensors and metadata) of a pinned safetensors file, read with
    safetensors only: nothing is unpickled."""
    try:
        tensors = load_file(pinned.name, device=str(device))
        if not metadata:
            return tensors
        with safe_open(pinned.name, "pt") as f:
            return tensors, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{pinned.path}: not a readable safetensors file ({str(exc).replace(pinned.name, 'it')})") from None


def pin(path: Path, run_dir: Path | None = None) -> files.Pinned:
    """files.Pinned, with a file that cannot be opened as one line (FileNotFoundError is left to readers that race a trainer)."""
    try:
        return files.Pinned(path, run_dir)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read it ({exc.strerror or exc})") from None


def read_safetensors(path: Path, device="cpu") -> dict:
    try:
        with pin(path) as pinned:
            return read_pinned(pinned, device)
    except FileNotFoundError:
        raise RunDirError(f"{path}: not a readable safetensors file (it does not exist)") from None


def read_checkpoint(path: Path, device="cpu") -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint, read with safetensors only (nothing is unpickled)."""
    try:
        with pin(path) as pinned:
            return read_pinned(pinned, device, metadata=True)
    except FileNotFoundError:
        raise RunDirError(f"{path}: not a readable safetensors file (it does not exist)") from None


def header_metadata(path: Path) -> dict | None:
    """A safetensors file's metadata (its header only); None when it is missing or its header does not read."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorError, OSError, ValueError):
        return None


def config_of(path: Path) -> dict | None:
    """The resolved config a checkpoint was written under (its metadata "config", written by the training
    loop); None for a checkpoint from before checkpoints recorded it, or one whose header does not read."""
    text = (header_metadata(path) or {}).get("config")
    try:
        config = json.loads(text) if text is not None else None
    except (ValueError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def read_newest_intact(run_dir: Path, device="cpu") -> tuple[Path, dict, str] | None:
    """(path, tensors, sha256) of the newest checkpoint whose bytes match the manifest, with a warning for
    each newer one that does not; None when there is none. Read-only (for eval, sample, plot): nothing is
    moved. A trainer may prune or replace checkpoints meanwhile: one that vanished, or that the manifest
    does not record yet, is not damaged; the reader starts again from a fresh listing, READ_ATTEMPTS times."""
    return _newest_intact(run_dir, lambda pinned: read_pinned(pinned, device))


def newest_intact_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose checksum matches the manifest (read_newest_intact, reading no tensors)."""
    found = _newest_intact(run_dir, lambda pinned: None)
    return found[0] if found else None


def _newest_intact(run_dir: Path, read) -> tuple[Path, object, str] | None:
    run_dir, warned = Path(run_dir), set()
    for _ in range(READ_ATTEMPTS):
        for path in checkpoint_paths(run_dir):
            try:
                pinned = pin(path, run_dir)
            except FileNotFoundError:
                break  # pruned since the listing: list again
            with pinned:
                problem = pinned.settled_problem()
                if problem is None:
                    try:
                        return path, read(pinned), pinned.digest
                    except RunDirError:
                        if pinned.still_in_place():
                            raise
                        problem = files.RACED
            if problem == files.RACED:
                break
            if path not in warned:
                warned.add(path)
                warn(f"{path}: damaged ({problem}); using an older checkpoint")
        else:
            return None  # every checkpoint listed was looked at
    raise RunDirError(f"{run_dir}: its checkpoints were pruned or replaced under each of {READ_ATTEMPTS} reads "
                      f"(is a training with a very short train.checkpoint_every writing it?); try again")


def weights_mismatch(model: torch.nn.Module, state: dict, config: str = "config.json") -> str | None:
    """How the tensors in `state` differ from the ones `model` (built from `config`) has: the first few
    missing and unexpected names, or the first tensor whose shape or dtype differs, with both."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]

    def few(names):
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    problems = ([f"lacks {few(missing)}, which {config} builds"] if missing else []) + \
               ([f"holds {few(unexpected)}, which {config} does not build"] if unexpected else [])
    if problems:
        return "; ".join(problems)
    for key, value in expected.items():
        if state[key].shape != value.shape:
            return f"{key} has shape {tuple(state[key].shape)}, {config} builds {tuple(value.shape)}"
        if state[key].dtype != value.dtype:
            return f"{key} is {state[key].dtype}, {config} builds {value.dtype}"
    return None


def _read_for_resume(run_dir: Path, pinned: files.Pinned, n_train: int) -> tuple[dict, dict, LoopState]:
    problem = pinned.problem(files.read_manifest(run_dir))
    if problem is not None:
        raise DamagedCheckpoint(problem)
    try:
        tensors, metadata = read_pinned(pinned, metadata=True)
    except RunDirError as exc:
        raise DamagedCheckpoint(str(exc).split(": ", 1)[-1]) from None
    if "param_groups" not in metadata:
        raise DamagedCheckpoint("metadata param_groups is missing")
    return tensors, metadata, loop_state(pinned.path, tensors, metadata, n_train)


def restore(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, n_train: int,
            scheduled: bool = False, extra=None) -> LoopState | None:
    """Load the newest intact checkpoint into model and optimizer and return its loop state (the caller
    restores batch order and RNG). `optimizer` must be as the run's config builds it, nothing loaded yet:
    its hyper-parameters are what every checkpoint must hold. A damaged checkpoint is renamed to *.damaged
    with a warning and the next older one tried. None when the run has no checkpoint at all; a RunDirError
    when it has some but none is intact, or when the model's weights do not fit config.json (naming the
    tensor and both shapes). With a learning-rate schedule (`scheduled`) the rate is the checkpoint's; `extra`,
    if given, is called with (tensors, metadata, step) to restore the rest of the run's state (the schedule,
    averaged weights, validation: training.protocol), and may raise DamagedCheckpoint like the checks here."""
    run_dir = Path(run_dir)
    built = json.loads(json.dumps(optimizer.state_dict()["param_groups"]))  # before anything is loaded into it
    device = next(iter(model.parameters()), torch.empty(0)).device
    damaged = 0
    for path in checkpoint_paths(run_dir):
        try:
            try:
                pinned = pin(path, run_dir)
            except FileNotFoundError:
                continue
            with pinned:
                tensors, metadata, state = _read_for_resume(run_dir, pinned, n_train)
            weights = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
            mismatch = weights_mismatch(model, weights)
            if mismatch is not None:
                raise RunDirError(f"--resume: {path} does not match {run_dir / 'config.json'}: {mismatch}")
            model.load_state_dict(weights)
            groups = param_groups(metadata, built, scheduled)
            adam = adam_state(tensors, optimizer, groups, state.step)
            try:
                optimizer.load_state_dict({"state": adam, "param_groups": groups})
                match_parameter_layouts(optimizer)
            except (RuntimeError, KeyError, ValueError, TypeError) as exc:
                raise DamagedCheckpoint(f"the optimiser's state does not load ({str(exc).strip().splitlines()[0][:120]})") from None
            check_weights(model)
            check_rng_cuda(state, device)
            if extra is not None:
                extra(tensors, metadata, state.step)
            return state
        except DamagedCheckpoint as exc:
            damaged += 1
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)  # checkpoint_paths refused links: this renames the file itself, inside the run
            warn(f"{path}: damaged ({exc}); moved to {aside.name}, resuming from the next older checkpoint")
    if damaged:
        raise RunDirError(f"--resume: {run_dir} has no intact checkpoint ({damaged} damaged, kept as checkpoints/*.damaged); "
                          f"start a new run with --out")
    return None
