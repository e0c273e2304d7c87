"""How many CPU threads a training uses when the config leaves it to vaelab (train.threads = 0).

A training step of the reference MLP VAE (batch 100) is ~0.35 GFLOP in a few dozen small kernels: a
second thread speeds it up only if the waiting thread spins, and a spinning thread on a CPU that other
jobs share holds a core its partner needs (two such trainings on 2 cores: 10 steps/s each instead of
~100). One thread runs it nearly as fast alone and does not fight. A step of a few GFLOP (the conv VAE,
or the MLP at batch 1000) gains ~40 % from a second core even with sleeping waiters, so it gets one
thread per core. bench/loaded_cpu.py measures both cases; docs/performance.md has the numbers.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

SMALL_STEP_FLOPS = 1e9
"""A training step (forward and backward) below this many floating-point operations runs on one thread."""


def step_flops(model: torch.nn.Module, batch: dict, loss: Callable[[torch.nn.Module, dict], torch.Tensor]) -> int:
    """Floating-point operations of one training step (the loss's forward and backward) on `batch`.

    Leaves no trace: the RNG state is restored and the gradients it made are dropped, so a run that counts
    is the same run as one that does not."""
    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        loss(model, batch).backward()
    for parameter in model.parameters():
        parameter.grad = None
    return counter.get_total_flops()


def auto_threads(flops: int, cores: int | None = None) -> int:
    """One thread for a step below SMALL_STEP_FLOPS, otherwise torch's default of one per core."""
    if flops < SMALL_STEP_FLOPS:
        return 1
    return cores or torch.get_num_threads()
