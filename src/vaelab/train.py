"""Training loop: Adam for a fixed number of steps on dynamically binarized batches.

The training images stay on the device as one uint8 tensor; each step takes a shuffled slice of
indices and draws a fresh Bernoulli binarization there. No per-item Python runs per step.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import data as data_mod
from . import objectives, runs
from .config import RunConfig, save_json, validate
from .errors import ConfigError, RunDirError
from .models import build_model


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu. An unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {name} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device: unsupported device {name!r} (use cpu, cuda, cuda:N or auto)")
    return device


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


def prepare_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunDirError(f"--out: {run_dir} already exists and is not empty; choose a new run directory")
    run_dir.mkdir(parents=True, exist_ok=True)


def train(cfg: RunConfig, run_dir: str | Path, progress: bool = True) -> dict:
    """Train the model described by `cfg`, writing everything into `run_dir`. Returns the summary."""
    run_dir = Path(run_dir)
    validate(cfg)
    device = resolve_device(cfg.train.device)
    # Everything that can fail on user input happens before the run directory is created.
    train_set = data_mod.load(cfg.data.dataset, "train", cfg.data.data_dir, device, cfg.data.download)
    cfg.model.x_dim = train_set.x_dim
    torch.manual_seed(cfg.train.seed)
    sampler = IndexSampler(len(train_set), cfg.train.batch_size, device)
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    prepare_run_dir(run_dir)
    save_json(cfg, run_dir / runs.CONFIG_FILE)

    metrics_path = run_dir / runs.METRICS_FILE
    sums = torch.zeros(4, device=device)  # loss, nelbo, kl, rec summed since the last log line
    since_log, start = 0, time.perf_counter()
    bar = tqdm(total=cfg.train.steps, disable=not progress, dynamic_ncols=True, mininterval=0.5, desc=f"train {cfg.model.name}")
    record: dict = {}
    model.train()
    for step in range(1, cfg.train.steps + 1):
        x = data_mod.binarize(train_set.pixels(sampler.next()))
        beta = objectives.annealed_beta(step - 1, cfg.objective.beta, cfg.objective.kl_warmup_steps)
        out = objectives.loss(model(x, cfg.objective.k), cfg.objective.kind, beta,
                              cfg.objective.free_bits, cfg.objective.free_bits_group)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        sums += torch.stack([out.loss.detach(), out.nelbo, out.kl, out.rec])
        since_log += 1
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            means = (sums / since_log).tolist()
            elapsed = time.perf_counter() - start
            record = {"step": step, "loss": means[0], "nelbo": means[1], "kl": means[2], "rec": means[3], "beta": beta,
                      "seconds": round(elapsed, 3), "images_per_second": round(step * cfg.train.batch_size / elapsed, 1)}
            runs.append_jsonl(metrics_path, record)
            bar.set_postfix(loss=f"{means[0]:.2f}", kl=f"{means[2]:.2f}", rec=f"{means[3]:.2f}")
            sums.zero_()
            since_log = 0
        if step % cfg.train.checkpoint_every == 0 and step < cfg.train.steps:
            runs.save_checkpoint(run_dir, model, optimizer, step, cfg.train.keep_checkpoints)
    bar.close()
    train_seconds = time.perf_counter() - start
    runs.save_checkpoint(run_dir, model, optimizer, cfg.train.steps, cfg.train.keep_checkpoints)
    runs.save_weights(run_dir, model)
    summary = {
        "model": cfg.model.name,
        "steps": cfg.train.steps,
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(cfg.train.steps * cfg.train.batch_size / train_seconds, 1),
        "device": str(device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "final": {k: record[k] for k in ("loss", "nelbo", "kl", "rec")},
    }
    runs.atomic_write_text(run_dir / runs.SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary

