"""Run directories: resolved config, checkpoints (safetensors, written atomically), metrics.

Layout of RUN_DIR:
    config.json                    the resolved RunConfig; with model.safetensors it rebuilds the model
    model.safetensors              final weights
    checkpoints/step-NNNNNNN.safetensors   weights + Adam state (prefixes "model." / "optim.")
    metrics.jsonl                  one JSON object per logged training step
    tensorboard/                   the same scalars and sample grids as TensorBoard event files
    summary.json                   wall time, steps, final training metrics
    eval-<protocol>.json           results of `vaelab eval`
Weights are only ever read with safetensors, which never unpickles.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import config as config_mod
from ..errors import ConfigError, RunDirError
from ..models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


LOCK_FILE = ".lock"


class RunLock:
    """An exclusive lock on a run directory, held by the process that trains into it: flock on
    RUN_DIR/.lock, which the operating system releases when the process ends however it ends (kill -9
    included), so a stale lock never blocks a resume. A second process asking for it gets a RunDirError."""

    def __init__(self, run_dir: Path, option: str = "--out"):
        import fcntl

        path = Path(run_dir) / LOCK_FILE
        self._file = open(path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunDirError(f"{option}: {run_dir} is in use by another vaelab process (pid {holder}); wait for it to "
                              f"finish or choose another run directory") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor drops the flock


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(tmp_path) then rename over `path`, so a crash never leaves a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


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


def save_checkpoint(run_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, keep: int,
                    state: dict | None = None, state_metadata: dict | None = None) -> Path:
    """Write checkpoints/step-NNNNNNN.safetensors atomically and prune all but the newest `keep`.

    The file holds the model ("model."), Adam's state ("optim.") and the training loop's own state
    ("state.": RNG, batch order, partial log sums), so a run can resume exactly where it was."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim, metadata = optimizer_tensors(optimizer)
    tensors.update(optim)
    tensors.update({f"state.{k}": v for k, v in (state or {}).items()})
    metadata.update({k: str(v) for k, v in (state_metadata or {}).items()})
    metadata["step"] = str(step)
    path = folder / f"step-{step:07d}.safetensors"
    atomic_write_bytes(path, lambda tmp: save_file(_contiguous_cpu(tensors), tmp, metadata=metadata))
    for old in sorted(folder.glob("step-*.safetensors"))[:-keep]:
        old.unlink()
    return path


def read_checkpoint(path: Path, device="cpu") -> tuple[dict, dict]:
    """(tensors, metadata) of a checkpoint, read with safetensors only."""
    from safetensors import safe_open

    tensors = read_safetensors(path, device)
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata() or {}
    return tensors, metadata


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    path = Path(run_dir) / WEIGHTS_FILE
    atomic_write_bytes(path, lambda tmp: save_file(_contiguous_cpu(model.state_dict()), tmp))


def read_safetensors(path: Path, device="cpu") -> dict:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise RunDirError(f"{path}: not a readable safetensors file ({exc})") from None


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / CHECKPOINT_DIR).glob("step-*.safetensors"))
    return found[-1] if found else None


def load_run(run_dir: str | os.PathLike, device="cpu") -> tuple[torch.nn.Module, config_mod.RunConfig]:
    """Rebuild a run's model from its directory alone: config.json plus the final weights
    (or, for a run still in progress, its newest checkpoint). The model is in eval mode."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_FILE}; not a vaelab run directory")
    cfg = config_mod.load_json(run_dir / CONFIG_FILE)
    try:
        config_mod.validate(cfg)
    except ConfigError as exc:
        raise RunDirError(f"{run_dir / CONFIG_FILE}: {exc}") from None
    model = build_model(cfg.model)
    weights = run_dir / WEIGHTS_FILE
    if weights.is_file():
        state = read_safetensors(weights, device)
    else:
        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise RunDirError(f"{run_dir}: no {WEIGHTS_FILE} and no checkpoints; has training started?")
        state = {k[len("model."):]: v for k, v in read_safetensors(ckpt, device).items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise RunDirError(f"{run_dir}: weights do not match config.json ({first})") from None
    return model.to(device).eval(), cfg


def truncate_jsonl(path: Path, last_step: int) -> list[dict]:
    """Drop metrics logged after `last_step` (they are re-logged when a resumed run redoes those steps);
    returns the records kept."""
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file. A last line cut short (a crash or a full disk mid-append, so
    no newline ends it) is dropped; any other line that is not a JSON object is a RunDirError."""
    path = Path(path)
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise RunDirError(f"{path}: not a text file of JSON lines") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated last line: an append that did not finish
                break
            raise RunDirError(f"{path}: line {number} is not JSON") from None
        if not isinstance(record, dict):
            raise RunDirError(f"{path}: line {number} is not a JSON object")
        records.append(record)
    return records


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left behind (.NAME.XXXX.tmp)."""
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)


@functools.cache
def _source_commit() -> str | None:
    """The git commit of vaelab's source tree when this process first asked, with "+dirty" when
    tracked files differed from it; None outside a checkout. Cached: the process runs the code it
    imported, whatever is committed later."""
    source = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance() -> dict:
    """Where a result came from: vaelab version, git commit (see _source_commit), torch, CPU and thread count."""
    from .. import __version__

    return {"vaelab": __version__, "commit": _source_commit(), "torch": torch.__version__, "cpu": _cpu_name(),
            "threads": torch.get_num_threads()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
