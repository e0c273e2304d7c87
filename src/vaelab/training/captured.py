"""The training step as one CUDA graph (train.cuda_graphs).

At batch 100 a step of the reference VAE is a few hundred small kernels, and on a GPU launching them one
by one from Python takes longer than running them. A CUDA graph records the whole step once (forward,
backward, the gradient check, the non-finite guard and fused Adam) and launches it as one unit at every
later step. A graph reads and writes fixed addresses, so:

- each step's batch (drawn by `Batches.next()` as always) is copied into static buffers, and the KL
  weight into a 0-d tensor, before the graph runs;
- the step's outputs (loss, logged terms, the guard's flag) are tensors the graph rewrites in place,
  which the loop reads after each replay, as it reads an eager step's;
- Adam is fused with `capturable=True` (training.optimizers.make_optimizer): its step counts stay on the
  device, and the guard's `found_inf` skips a bad step inside the graph (training/guard.py);
- the weights, Adam's moments and step counts and the guard's counters are the tensors of an eager run,
  updated in place, so checkpoints, resume, averaged weights and validation read them unchanged.

The first WARMUP_STEPS steps of each process run eagerly on a side stream, as CUDA graphs need: cuBLAS
sets up its workspaces and Adam creates its state there rather than under capture. They are real training
steps. The next step captures the graph and replays it, and so does every step after it.

What a graph cannot hold is refused before the run starts: a learning rate that changes (a schedule or
warm-up; the rate is a constant of the captured Adam kernel), Adamax (no fused kernel, so its guard reads
a flag back every step), train.compile (torch.compile's own graphs) in training.config.validate; a
device that is not CUDA and torchrun in check_device.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch

from ..errors import ConfigError

WARMUP_STEPS = 3


def check_device(device: torch.device, processes: int) -> None:
    """train.cuda_graphs needs one CUDA device: anything else is one line, before anything is read or written."""
    if device.type != "cuda":
        raise ConfigError(f"train.cuda_graphs: captures the training step as a CUDA graph, which needs a CUDA device "
                          f"(this run's device is {device}); drop it or use --device cuda")
    if processes > 1:
        raise ConfigError(f"train.cuda_graphs: not supported with torchrun ({processes} processes); "
                          f"train in one process or without it")


class CapturedStep:
    """`step(batch, beta) -> outputs` (forward, backward and the guarded optimiser step) run eagerly for the first
    `warmup` calls, then captured once and replayed. Every call returns the outputs of that call's step."""

    def __init__(self, step: Callable[[dict, torch.Tensor], tuple], device: torch.device, warmup: int = WARMUP_STEPS):
        self.step, self.device, self.warmup = step, device, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.outputs = None  # the captured step's outputs, rewritten by each replay
        self.batch: dict | None = None  # the static batch the graph reads
        self.beta = torch.zeros((), device=device)  # the KL weight, a tensor so that KL annealing reaches the replays
        self._beta_value: float | None = None
        self._side = torch.cuda.Stream(device)

    def __call__(self, batch: dict, beta: float):
        self._load(batch, beta)
        if self.graph is None:
            if self.warmup > 0:
                self.warmup -= 1
                return self._eager()
            self._capture()
        self.graph.replay()
        return self.outputs

    def _load(self, batch: dict, beta: float) -> None:
        if self.batch is None:  # copies: a batch tensor may share storage with the data
            self.batch = {key: value.clone() for key, value in batch.items()}
        else:
            for key, value in batch.items():
                self.batch[key].copy_(value)
        if beta != self._beta_value:  # a fill kernel only when the weight changes (KL annealing)
            self.beta.fill_(beta)
            self._beta_value = beta

    def _eager(self):
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side), warnings.catch_warnings():
            # Adam warns once that capturable=True is slower uncaptured: true, and only for these steps.
            warnings.filterwarnings("ignore", message=".*capturable=True.*")
            outputs = self.step(self.batch, self.beta)
        current.wait_stream(self._side)
        return outputs

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: a thread of the process that is not training (TensorBoard's writer) cannot break the capture.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self.outputs = self.step(self.batch, self.beta)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"train.cuda_graphs: the training step could not be captured as a CUDA graph ({first}); "
                              f"set it to false in config.json and resume, or train without it") from exc
        self.graph = graph
