"""Run directories: resolved config, checkpoints (safetensors, written atomically), metrics.

Layout of RUN_DIR:
    config.json                    the resolved RunConfig; with model.safetensors it rebuilds the model
    model.safetensors              final weights (the averaged ones, with train.ema_decay)
    best.safetensors               the weights with the best validation bound so far (with data.validation), metadata
                                   step, bound and which bound; `vaelab eval` reads them when present
    checkpoints/step-NNNNNNN.safetensors   weights + Adam state + loop state (checkpoints.py)
    manifest.json                  size and sha256 of the weights and each checkpoint (files.py)
    metrics.jsonl                  one JSON object per logged training step, and one per validation (validation_*)
    history.jsonl                  one record per start and resume: step, time, settings changed (resume.py)
    tensorboard/                   the same scalars and sample grids as TensorBoard event files
    summary.json                   wall time, steps, final training metrics
    eval-<protocol>.json           results of `vaelab eval`, with the weights (file, step, sha256) they were computed on
    owner.json                     what made the run directory, where that was not `vaelab train` (`vaelab reproduce`)
Weights are only ever read with safetensors, which never unpickles.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import subprocess
from pathlib import Path

import torch

from . import checkpoints, files
from . import config as config_mod
from ..errors import ConfigError, RunDirError
from ..models import build_model, model_class

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
BEST_FILE = "best.safetensors"
WEIGHT_CHOICES = ("auto", "best", "final")
CHECKPOINT_DIR = checkpoints.CHECKPOINT_DIR
MANIFEST_FILE = files.MANIFEST_FILE
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
TENSORBOARD_DIR = "tensorboard"


LOCK_FILE = ".lock"
OWNER_FILE = "owner.json"


class RunLock:
    """An exclusive lock on a run directory, held by the process that trains into it: flock on
    RUN_DIR/.lock, which the operating system releases when the process ends however it ends (kill -9
    included), so a stale lock never blocks a resume. A second process asking for it gets a RunDirError."""

    def __init__(self, run_dir: Path, option: str = "--out"):
        import fcntl

        path = Path(run_dir) / LOCK_FILE
        try:
            # O_NOFOLLOW (files.open_member): a .lock that is a link never has its target truncated.
            self._file = os.fdopen(files.open_member(run_dir, path, os.O_RDWR | os.O_CREAT), "r+")
        except RunDirError as exc:
            raise RunDirError(f"{option}: {exc}") from None
        except OSError as exc:
            raise RunDirError(f"{option}: cannot open {path}: {exc.strerror}") from None
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise RunDirError(f"{option}: {run_dir} is in use by another vaelab process (pid {holder}); wait for it to "
                              f"finish or choose another run directory") from None
        try:
            check_run_dir(run_dir)  # before the holder changes anything in it
        except RunDirError as exc:
            self._file.close()
            raise RunDirError(f"{option}: {exc}") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            self._file.close()  # closing the descriptor drops the flock


def check_run_dir(run_dir: Path) -> None:
    """One RunDirError naming the first member of RUN_DIR that is a symbolic link, among the names vaelab
    reads or writes there (.lock, checkpoints/ and its checkpoints, tensorboard/, *.json, *.jsonl,
    *.safetensors), so a link never leads a training or a reader into another folder. The run directory's
    own path may be a link."""
    run_dir = Path(run_dir)
    try:
        entries = list(os.scandir(run_dir))
    except OSError as exc:
        raise RunDirError(f"cannot list {run_dir}: {exc.strerror or exc}") from None
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name in (LOCK_FILE, CHECKPOINT_DIR, TENSORBOARD_DIR) or entry.name.endswith((".json", ".jsonl", ".safetensors")):
            files.check_member(run_dir, run_dir / entry.name)
    checkpoints.checkpoint_paths(run_dir)  # refuses a link among the checkpoints


def save_weights(run_dir: Path, model: torch.nn.Module) -> None:
    checkpoints.write_safetensors(Path(run_dir) / WEIGHTS_FILE, model.state_dict())


def save_best_weights(run_dir: Path, model: torch.nn.Module, step: int, bound: float, key: str) -> None:
    """best.safetensors: the weights of the best validation so far, with its step and bound as metadata."""
    checkpoints.write_safetensors(Path(run_dir) / BEST_FILE, model.state_dict(),
                                  {"step": str(step), "bound": repr(float(bound)), "validation": key})


def final_weights_problem(run_dir: Path) -> str | None:
    """Why RUN_DIR/model.safetensors cannot be used (missing, or not matching the manifest), or None."""
    path = Path(run_dir) / WEIGHTS_FILE
    return "missing" if not path.is_file() else files.verify(path)


def load_run(run_dir: str | os.PathLike, device="cpu", weights: str = "auto") -> tuple[torch.nn.Module, config_mod.RunConfig]:
    """Rebuild a run's model from its directory alone: config.json plus its weights (load_run_weights says
    which). The model is in eval mode."""
    model, cfg, _ = load_run_weights(run_dir, device, weights)
    return model, cfg


def load_run_weights(run_dir: str | os.PathLike, device="cpu", weights: str = "auto") -> tuple[torch.nn.Module, config_mod.RunConfig, dict]:
    """load_run, plus which weights were read: {"weights": the file, relative to RUN_DIR, "step": the
    training step they are from, "sha256": their checksum}. An evaluation records it, so that a result
    can be told apart from the weights the run has after it trained on.

    `weights`: "best" the weights with the best validation bound (best.safetensors); "final" the final weights,
    or for a run still in progress its newest checkpoint; "auto" (the default) the best when the run has them,
    else the final."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} {'is a file, not a folder' if run_dir.exists() else 'does not exist'}")
    check_run_dir(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_FILE}; not a vaelab run directory")
    cfg = config_mod.load_json(run_dir / CONFIG_FILE)
    try:
        config_mod.validate(cfg)
    except ConfigError as exc:
        raise RunDirError(f"{run_dir / CONFIG_FILE}: {exc}") from None
    if weights not in WEIGHT_CHOICES:
        raise ConfigError(f"weights: expected one of {', '.join(WEIGHT_CHOICES)}, got {weights!r}")
    best = run_dir / BEST_FILE
    if weights == "best" and not best.is_file():
        raise RunDirError(f"{run_dir}: no {BEST_FILE} (it is written when a run validates: data.validation and train.eval_every)")
    model = build_model(cfg.model)
    # A trainer may replace the weights or prune checkpoints while they are read: a read that lost such a
    # race (None) is tried again.
    for _ in range(checkpoints.READ_ATTEMPTS):
        found = _read_best(run_dir, device) if weights != "final" and best.is_file() else _read_weights(run_dir, cfg, device)
        if found is not None:
            break
    else:
        raise RunDirError(f"{run_dir / WEIGHTS_FILE}: replaced under each of {checkpoints.READ_ATTEMPTS} reads; try again")
    source, step, state, digest = found
    mismatch = checkpoints.weights_mismatch(model, state)
    if mismatch is not None:
        raise RunDirError(f"{source}: weights do not match {CONFIG_FILE}: {mismatch}")
    model.load_state_dict(state)
    # The checksum of the bytes loaded, not of whatever the path names by now.
    identity = {"weights": source.relative_to(run_dir).as_posix(), "step": step, "sha256": digest}
    return model.to(device).eval(), cfg, identity


def _read_weights(run_dir: Path, cfg: config_mod.RunConfig, device) -> tuple[Path, int, dict, str] | None:
    """(file, step, model tensors, sha256) of the final weights, or of the newest intact checkpoint when
    there are none yet; None when the weights were replaced while being read."""
    weights = run_dir / WEIGHTS_FILE
    try:
        pinned = checkpoints.pin(weights, run_dir)
    except FileNotFoundError:
        found = checkpoints.read_newest_intact(run_dir, device)
        if found is None:
            raise RunDirError(f"{run_dir}: no {WEIGHTS_FILE} and no intact checkpoint; has training started?") from None
        path, tensors, digest = found
        state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        return path, checkpoints.step_of(path), state, digest
    with pinned:
        problem = pinned.settled_problem()
        if problem == files.RACED:
            return None
        if problem is not None:
            raise RunDirError(f"{weights}: damaged ({problem}); vaelab train --resume {run_dir} writes it again "
                              f"from the final checkpoint")
        return weights, final_step(run_dir, cfg), checkpoints.read_pinned(pinned, device), pinned.digest


def _read_best(run_dir: Path, device) -> tuple[Path, int, dict, str] | None:
    """(file, step, tensors, sha256) of best.safetensors, the step from its metadata; None when it was replaced
    while being read."""
    path = run_dir / BEST_FILE
    try:
        pinned = checkpoints.pin(path, run_dir)
    except FileNotFoundError:
        return None
    with pinned:
        problem = pinned.settled_problem()
        if problem == files.RACED:
            return None
        if problem is not None:
            raise RunDirError(f"{path}: damaged ({problem}); evaluate the final weights with --weights final")
        tensors, metadata = checkpoints.read_pinned(pinned, device, metadata=True)
        step = metadata.get("step", "")
        if not step.isdigit():
            raise RunDirError(f"{path}: its metadata does not give the step it is from")
        return path, int(step), tensors, pinned.digest


def best_step(run_dir: Path) -> int | None:
    """The step of RUN_DIR/best.safetensors (its metadata), None when it is missing or does not say."""
    metadata = checkpoints.header_metadata(Path(run_dir) / BEST_FILE)
    step = (metadata or {}).get("step", "")
    return int(step) if step.isdigit() else None


def final_step(run_dir: Path, cfg: config_mod.RunConfig) -> int:
    """The training step of RUN_DIR/model.safetensors: summary.json's step count, written with the weights;
    config.json's train.steps where the summary is missing (a run killed between the two writes)."""
    try:
        steps = json.loads((Path(run_dir) / SUMMARY_FILE).read_text()).get("steps")
    except (OSError, ValueError, AttributeError):
        steps = None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else cfg.train.steps


def inherit_from_source(cfg: config_mod.RunConfig, source_dir: str | os.PathLike) -> None:
    """`vaelab train MODEL --from RUN`: cfg (of a model whose spec.starts_from names RUN's model) takes RUN's model
    settings that it shares (the networks and codebook it will load), its dataset and data folder, and
    model.source_run = RUN. Later flags and --set may still change the model's own settings."""
    spec = model_class(cfg.model.name).spec
    if spec.starts_from is None:
        raise ConfigError(f"--from: model {cfg.model.name!r} does not start from another run")
    source_dir = Path(source_dir).expanduser().resolve()
    if not (source_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"--from: {source_dir} is not a vaelab run directory (no {CONFIG_FILE})")
    source = config_mod.load_json(source_dir / CONFIG_FILE)
    if source.model.name != spec.starts_from:
        raise ConfigError(f"--from: {source_dir} is a {source.model.name!r} run; {cfg.model.name!r} starts from a {spec.starts_from!r} run")
    shared = {f.name for f in dataclasses.fields(source.model)} & {f.name for f in dataclasses.fields(cfg.model)}
    for name in shared - {"name"}:
        setattr(cfg.model, name, getattr(source.model, name))
    cfg.model.source_run = str(source_dir)
    for key in ("dataset", "data_dir", "path", "test_path", "test_fraction", "image_size"):
        setattr(cfg.data, key, getattr(source.data, key))


def start_from_source(model: torch.nn.Module, cfg: config_mod.RunConfig, device: torch.device) -> None:
    """A new run of a model with spec.starts_from: load its source run (verified) and hand that model to
    model.start_from; the source's settings and dataset must be the ones cfg has."""
    source_dir = Path(cfg.model.source_run)
    source, source_cfg = load_run(source_dir, device)
    if source_cfg.model.name != model.spec.starts_from:
        raise ConfigError(f"model.source_run: {source_dir} is a {source_cfg.model.name!r} run, not {model.spec.starts_from!r}")
    if source_cfg.data.dataset != cfg.data.dataset:
        raise ConfigError(f"data.dataset: {source_dir} was trained on {source_cfg.data.dataset}, this run is on {cfg.data.dataset}")
    try:
        model.start_from(source)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(f"model.source_run: the weights of {source_dir} do not fit these model settings ({first})") from None


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
