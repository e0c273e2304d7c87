"""The memory one training step needs, estimated from the settings before anything is allocated, and the limit above
which `vaelab train` refuses them: one line naming the settings to reduce, before the run directory is made.

The estimate runs the model's forward pass and objective on torch's meta device (shapes only, nothing allocated) at
the run's k and batch size, and adds up the tensors autograd keeps for the backward pass. The backward's gradients and
the kernels' temporaries come on top, hence OVERHEAD; then the parameters, their gradients and Adam's two moments.
Against the growth of peak RSS measured on the CPU from k = 2 to k = 400 (batch 100) the estimate came within 10 % for
the MLP and conv VAE, HVAE, IAF posterior and M2, and was 0.55 times the measured growth for the conditional VAE, 0.83
for the VampPrior and 1.8 times for a PixelCNN likelihood: an estimate good to a factor of two, for refusing steps
that cannot fit, not for sizing ones that can.
The limit is MAX_STEP_MEMORY_SHARE of the memory of the device the step runs on (the machine's RAM, or the cgroup's
limit where lower, for the CPU; the GPU's own memory for CUDA).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import objectives
from ..devices import resolve_device
from ..errors import ConfigError
from ..models import build_model
from .config import RunConfig

OVERHEAD = 1.3
"""A step's peak over the tensors autograd keeps for its backward pass (gradients, temporaries)."""
MAX_STEP_MEMORY_SHARE = 0.8
"""The largest share of the device's memory one training step may be estimated to need."""
OPTIMIZER_COPIES = 4
"""Per parameter: the weight, its gradient and Adam's two moments."""
CLEARLY_SMALL = 100
"""A step whose k x batch x the largest per-draw tensor, in float32, times this still fits is not estimated further: the
tensors kept were at most 21 floats per element of that tensor in every model measured (a PixelCNN likelihood), and the
meta device's first use costs over a second of imports."""


@dataclass
class StepMemory:
    total: int
    """Estimated peak bytes of one step: OVERHEAD x the tensors kept for backward, plus parameters and Adam."""
    kept: int
    """Bytes autograd keeps for the backward pass."""
    fixed: int
    """Bytes that do not grow with k or the batch: parameters, gradients, Adam's moments."""


def _meta_batch(cfg: RunConfig, model, images: int) -> dict:
    x_dim = cfg.model.x_dim
    batch = {"x": torch.empty(images, x_dim, device="meta")}
    if model.spec.labels == "all":
        batch["y"] = torch.zeros(images, dtype=torch.long, device="meta")
    if model.spec.labels == "subset":  # the labelled subset goes into every step beside the batch
        per_class = 10 if cfg.data.labelled == "cs236" else cfg.data.labels_per_class
        labelled = per_class * getattr(cfg.model, "classes", 10)
        batch["x_labelled"] = torch.empty(labelled, x_dim, device="meta")
        batch["y_labelled"] = torch.zeros(labelled, dtype=torch.long, device="meta")
    return batch


def step_memory(cfg: RunConfig, k: int | None = None, images: int | None = None) -> StepMemory:
    """The estimate for `images` images a step (default: train.batch_size) and k draws each (default: objective.k)."""
    k = cfg.objective.k if k is None else k
    images = cfg.train.batch_size if images is None else images
    kept = 0

    def count(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal kept
        kept += tensor.numel() * tensor.element_size()
        return tensor

    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(cfg.model)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    try:
        with torch.random.fork_rng(devices=[]), torch.autograd.graph.saved_tensors_hooks(count, lambda tensor: tensor):
            terms = model(_meta_batch(cfg, model, images), k)
            objectives.loss(terms, cfg.objective.kind, cfg.objective.beta, cfg.objective.free_bits, cfg.objective.free_bits_group)
    except (NotImplementedError, RuntimeError, TypeError, ValueError):
        # An operation without a meta kernel: four floats per element of the largest per-draw tensor instead.
        kept = 4 * 4 * model.elements_per_sample * k * images
    fixed = OPTIMIZER_COPIES * parameters
    return StepMemory(int(OVERHEAD * kept) + fixed, kept, fixed)


def device_memory(device: torch.device) -> tuple[int, str]:
    """Bytes of memory a step on `device` can use at most, and what they are, in words."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        return total, f"the {_gb(total)} of {torch.cuda.get_device_name(device)}"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    what = f"this machine's {_gb(total)} of RAM"
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = int(Path(limit_file).read_text().split()[0])
        except (OSError, ValueError, IndexError):  # absent, or "max": no limit
            continue
        if limit < total:
            total, what = limit, f"the {_gb(limit)} this process's cgroup may use"
        break
    return total, what


def _gb(size: float) -> str:
    return f"{size / 1e9:.1f} GB"


def check_step_memory(cfg: RunConfig, device: torch.device | None = None) -> StepMemory | None:
    """Refuse, in one line, settings whose training step is estimated to need more than MAX_STEP_MEMORY_SHARE of the
    device's memory; the line gives the estimate, the limit and the largest k and batch size that fit. Under torchrun
    on CUDA each process holds its shard of the batch on a GPU of its own; on the CPU all processes share the RAM.
    Returns the estimate, or None for a step CLEARLY_SMALL shows to fit without one."""
    device = resolve_device(cfg.train.device) if device is None else device
    world = max(1, int(os.environ.get("WORLD_SIZE", "1")))
    images = max(1, cfg.train.batch_size // world) if device.type == "cuda" else cfg.train.batch_size
    total, what = device_memory(device)
    limit = int(MAX_STEP_MEMORY_SHARE * total)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = build_model(cfg.model)
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    if CLEARLY_SMALL * 4 * model.elements_per_sample * cfg.objective.k * images + OPTIMIZER_COPIES * parameters <= limit:
        return None
    estimate = step_memory(cfg, images=images)
    if estimate.total <= limit:
        return estimate
    k, batch = cfg.objective.k, cfg.train.batch_size
    per_image = (estimate.total - estimate.fixed) / images
    room = max(0, limit - estimate.fixed)
    fits_batch = int(room // per_image) * (world if device.type == "cuda" else 1)
    advice = f"reduce train.batch_size (at most {fits_batch:,} at k = {k:,})" if fits_batch >= 1 else "reduce the model's size"
    if k > 1:
        at_one = step_memory(cfg, k=1, images=images)
        per_draw = max(1.0, (estimate.total - at_one.total) / (k - 1))
        fits_k = int((limit - at_one.total) // per_draw) + 1
        if fits_k >= 1:
            advice = f"reduce objective.k (at most {fits_k:,} at this batch size) or " + advice.removeprefix("reduce ")
    raise ConfigError(
        f"objective.k, train.batch_size: one training step of k = {k:,} draws x {batch:,} images needs about "
        f"{_gb(estimate.total)}, over the limit of {_gb(limit)} ({MAX_STEP_MEMORY_SHARE:.0%} of {what}); {advice}")


__all__ = ["CLEARLY_SMALL", "MAX_STEP_MEMORY_SHARE", "OVERHEAD", "StepMemory", "check_step_memory", "device_memory", "step_memory"]
