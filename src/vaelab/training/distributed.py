"""Multi-process data parallelism: `torchrun --nproc-per-node N -m vaelab train ...`.

Every process draws the same global batch (same seed, same batch order, same binarization) and
trains on its own contiguous shard of it; torch's DistributedDataParallel averages the gradients,
so a step equals a single-process step on the global batch up to the z samples. The RNG streams
stay identical across processes, which is why one checkpoint (written by rank 0 only) resumes all
of them. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, RunDirError


@dataclass
class Context:
    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's contiguous slice of a global batch (dimension 0)."""
        if not self.active:
            return tensor
        size = tensor.shape[0] // self.world_size
        return tensor[self.rank * size : (self.rank + 1) * size]

    def mean(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over processes (for logging)."""
        if not self.active:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor / self.world_size

    def wait_for_all(self) -> None:
        """Return once every process has got here."""
        if self.active:
            dist.barrier()

    def all_true(self, flag: bool) -> bool:
        """Whether `flag` holds in every process (so all take the same branch)."""
        if not self.active:
            return flag
        value = torch.tensor(1.0 if flag else 0.0, device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item() > 0)

    def rank_0_first(self, work, peer_message: str):
        """work() in rank 0 only, and its result. Whatever it raises stops every process, not only rank 0:
        rank 0 with its error, the others with a RunDirError(peer_message)."""
        result, error = None, None
        if self.is_main:
            try:
                result = work()
            except Exception as exc:
                error = exc
        if not self.all_true(error is None):
            if error is not None:
                raise error
            raise RunDirError(peer_message)
        return result

    def max_int(self, value: int) -> int:
        """The largest of `value` over processes."""
        if not self.active:
            return value
        tensor = torch.tensor(value, dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())

    def all_ok(self, flag: torch.Tensor) -> torch.Tensor:
        """`flag` (a boolean tensor) and-ed over every process, left on the device: no host read."""
        if not self.active:
            return flag
        value = flag.to(torch.float32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return value > 0


def setup(device: torch.device) -> Context:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Context(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Context(rank=rank, world_size=world_size, device=device)


def teardown(ctx: Context) -> None:
    """Leave the process group, first freeing its last references (the DistributedDataParallel reducer
    sits in reference cycles) while the interpreter is whole. With this and the wait at the end of a
    finished run (training.loop), no two-process gloo run in 100 aborted at exit on 2 CPU cores; without
    them about one in twenty did ("terminate called without an active exception")."""
    if not (ctx.active and dist.is_initialized()):
        return
    gc.collect()
    dist.destroy_process_group()


def check_divisible(ctx: Context, batch_size: int, what: str = "train.batch_size") -> None:
    if ctx.active and batch_size % ctx.world_size:
        raise ConfigError(f"{what}: {batch_size} does not split evenly over {ctx.world_size} processes")


class Objective(nn.Module):
    """The model and its training objective as one module, so DistributedDataParallel sees the whole
    computation in forward() whichever model methods the objective calls."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict, beta: float):
        return self.loss_fn(self.model, batch, beta)


def wrap(model: nn.Module, loss_fn, ctx: Context, find_unused: bool) -> nn.Module:
    """The training objective as a module, DistributedDataParallel under torchrun."""
    objective = Objective(model, loss_fn)
    if not ctx.active:
        return objective
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(objective, device_ids=device_ids, find_unused_parameters=find_unused)


def compile_objective(objective: nn.Module) -> None:
    """torch.compile the objective in place: model, densities and loss as one graph, its backward
    included, fusing the elementwise work. In place (inside DistributedDataParallel too), so the
    model's parameter names and checkpoints stay unchanged. Call it after one eager step: that step
    fills torch.distributions' KL dispatch cache, a lookup torch.compile cannot trace, which would
    otherwise split the objective into three graphs (and recompile once the cache is filled)."""
    getattr(objective, "module", objective).compile()
