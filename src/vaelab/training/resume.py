"""What `--resume` does before the loop continues: the run's lock, the settings it may change, the run's
history, and the loop's state restored from the newest intact checkpoint.

A resumed run reads its settings from config.json, which may have been edited since the run started.
Each checkpoint records the resolved config it was written under (metadata "config"); on resume
config.json is compared with it. Settings that say how long to train and how the run is watched and
kept (RESUMABLE) may change and are applied; any other change is refused, naming each setting, before
anything in the run directory is changed. RUN_DIR/history.jsonl gets one record per start and resume:
the step, the time, the settings changed (old -> new), and the whole config at the start.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path

import torch

from ..errors import ConfigError, VaelabError, warn
from . import checkpoints, files, runs
from .batches import Batches
from .config import RunConfig
from .legacy import migrate_legacy

HISTORY_FILE = "history.jsonl"

# Settings a resumed run may change: none of them changes what a step computes, so the run stays the one
# its checkpoints continue. The learning rate is not among them: the optimiser's state restores the one it had.
# train.steps (or train.epochs) may grow or shrink, except under the cosine schedule, whose every rate depends
# on it; train.patience may change (a run that stopped early continues with a larger one).
RESUMABLE = frozenset({
    "train.steps", "train.epochs", "train.patience", "train.log_every", "train.checkpoint_every", "train.checkpoint_seconds", "train.keep_checkpoints",
    "train.threads", "train.device", "train.sample_grids", "train.cuda_graphs", "train.max_nonfinite_steps", "train.max_loss_per_element", "train.label",
    "data.data_dir", "data.download",
})


def flatten(config: dict, prefix: str = "") -> dict:
    """{"train.steps": 500, ...} from a nested config dict; tuples become lists, as in JSON."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = list(value) if isinstance(value, tuple) else value
    return flat


def _resolved(config: dict, source: str) -> dict | None:
    """A saved config as this code reads it (old layouts migrated, settings added since at their defaults),
    flattened; None when it no longer reads (a model that is no longer registered)."""
    try:
        return flatten(RunConfig.from_dict(migrate_legacy(config), source).to_dict())
    except VaelabError:
        return None


def read_history(run_dir: Path) -> list[dict]:
    return files.read_jsonl(Path(run_dir) / HISTORY_FILE)


def _from_history(run_dir: Path) -> dict | None:
    """The config of the last start or resume: the last one recorded whole, with the changes since applied."""
    config = None
    for entry in read_history(run_dir):
        if isinstance(entry.get("config"), dict):
            config = _resolved(entry["config"], str(Path(run_dir) / HISTORY_FILE))
        elif config is not None and isinstance(entry.get("changes"), dict):
            config.update({key: change[1] for key, change in entry["changes"].items()
                           if isinstance(change, list) and len(change) == 2})
    return config


def saved_config(run_dir: Path) -> tuple[str, dict] | None:
    """(where it was read, the flattened config) that the run's newest checkpoint was written under; from the
    history when no checkpoint records one (none written yet, or all from before checkpoints recorded it)."""
    for path in checkpoints.checkpoint_paths(run_dir):
        config = checkpoints.config_of(path)  # a header that does not read: the next older checkpoint
        if config is not None:
            resolved = _resolved(config, str(path))
            if resolved is not None:
                return f"the checkpoint at step {checkpoints.step_of(path)}", resolved
    config = _from_history(run_dir)
    return ("the run's last start (" + HISTORY_FILE + ")", config) if config is not None else None


_ABSENT = object()  # a setting one of the two configs does not have (another model's)


def _show(value) -> str:
    return "(none)" if value is _ABSENT else json.dumps(value)


def check_changes(run_dir: Path, cfg: RunConfig) -> dict:
    """The settings cfg (config.json with --steps, --device applied) changes since the run's checkpoints were
    written, as {key: [old, new]}: RESUMABLE ones only; any other change is one ConfigError naming each.
    With nothing to compare with (checkpoints from before they recorded their config, and no history) the
    config is accepted with one warning line."""
    found = saved_config(run_dir)
    if found is None:
        if checkpoints.checkpoint_paths(run_dir):
            warn(f"{run_dir}: its checkpoints do not record the config they were written under (an older vaelab): "
                 f"{run_dir / 'config.json'} is taken to be it, unchecked")
        return {}
    where, old = found
    new = flatten(cfg.to_dict())
    changed = {key: [old.get(key, _ABSENT), new.get(key, _ABSENT)] for key in sorted(old.keys() | new.keys())
               if old.get(key, _ABSENT) != new.get(key, _ABSENT)}
    fixed = [key for key in changed if key not in RESUMABLE or (key in ("train.steps", "train.epochs") and cfg.train.lr_schedule == "cosine")]
    if fixed:
        listed = ", ".join(f"{key} ({_show(changed[key][0])} -> {_show(changed[key][1])})" for key in fixed)
        raise ConfigError(f"--resume: {Path(run_dir) / 'config.json'} changes {listed} since {where}; "
                          f"{'this' if len(fixed) == 1 else 'these'} cannot change mid-run: restore "
                          f"{'it' if len(fixed) == 1 else 'them'} or start a new run with --out")
    return changed


def record(run_dir: Path, step: int, cfg: RunConfig, changes: dict | None) -> None:
    """Append the record of a start (changes None) or a resume to RUN_DIR/history.jsonl. The whole config
    goes into a start's record, and into the first resume of a run whose history began before it."""
    path = Path(run_dir) / HISTORY_FILE
    history = read_history(run_dir)
    if path.is_file() and not path.read_text().endswith("\n") and path.stat().st_size:
        # An append cut short by a crash: drop it, so this record starts a line of its own.
        files.atomic_write_text(path, "".join(json.dumps(entry) + "\n" for entry in history))
    entry = {"event": "start" if changes is None else "resume", "step": step,
             "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if changes is not None:
        entry["changes"] = changes
    if changes:  # applied, and said so: an edit to config.json never takes effect unannounced
        shown = ", ".join(f"{key} {_show(old)} -> {_show(new)}" for key, (old, new) in changes.items())
        print(f"vaelab: resuming at step {step} with {shown} (recorded in {HISTORY_FILE})", file=sys.stderr, flush=True)
    if changes is None or not any(isinstance(e.get("config"), dict) for e in history):
        entry["config"] = cfg.to_dict()
    files.append_jsonl(path, entry)


def lock_and_compare(run_dir: Path, cfg: RunConfig, locks: list) -> dict:
    """Take the run's lock (kept in `locks`), then check_changes."""
    locks.append(runs.RunLock(run_dir, "--resume"))  # before anything in the run directory is read or changed
    return check_changes(run_dir, cfg)


def restore(run_dir: Path, model, optimizer, batches: Batches, device: torch.device, protocol=None) -> checkpoints.LoopState | None:
    """Continue from the newest intact checkpoint of run_dir: model, optimiser, batch order and position, RNG,
    and the training protocol's schedule, averaged weights and validation state (training.protocol.Protocol).
    None when the run was killed before its first checkpoint (it then starts again from step 0, which
    the seed makes the same run)."""
    state = checkpoints.restore(run_dir, model, optimizer, batches.sampler.n, scheduled=protocol is not None and protocol.scheduled,
                                extra=None if protocol is None else protocol.restore)
    if state is None:
        return None
    batches.sampler.order = state.batch_order.to(device)
    batches.sampler.pos = state.batch_position
    torch.set_rng_state(state.rng_cpu)
    if device.type == "cuda" and state.rng_cuda is not None:
        torch.cuda.set_rng_state(state.rng_cuda, device)
    if state.log_sums is not None:
        state.log_sums = state.log_sums.to(device)
    return state
