"""The non-finite step guard, kept on the device: a step whose loss or gradient is not finite changes
nothing, and the loop learns of it only when it logs.

Reading a flag back to the host every step costs a CUDA synchronisation per step, which at batch 100 is
most of a step's time. Fused Adam takes a `found_inf` tensor (the mechanism torch's GradScaler uses):
where it is 1 the kernel leaves parameters, moments and step count as they were, with no host read.
The counts the loop reports (good steps since the last log, skipped steps, the longest run of
consecutive skipped steps) are device tensors too, read at each log. An optimizer without a fused
kernel falls back to reading the flag every step.
"""

from __future__ import annotations

import torch


class NonFiniteGuard:
    """Per-step bookkeeping of skipped steps, on the device."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, good: int = 0, skipped: int = 0):
        self.optimizer = optimizer
        self.on_device = bool(optimizer.defaults.get("fused"))
        self.good = torch.tensor(good, dtype=torch.long, device=device)  # finite steps since the last log
        self.skipped = torch.tensor(skipped, dtype=torch.long, device=device)  # all skipped steps of the run
        self.streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive skipped steps up to now
        self.longest = torch.zeros((), dtype=torch.long, device=device)  # longest such run since the last log

    def step(self, ok: torch.Tensor) -> torch.Tensor | None:
        """Take the optimizer step unless `ok` (a boolean 0-d tensor) is false. Returns the step's weight for
        the logged sums (`ok` as 0 or 1), or None on the fallback path when the step was skipped."""
        bad = ~ok
        self.skipped += bad
        self.streak.add_(1).mul_(bad)
        torch.maximum(self.longest, self.streak, out=self.longest)
        if not self.on_device:
            if not bool(ok):  # host read: only for optimizers without a fused kernel
                return None
            self.optimizer.step()
            self.good += 1
            return ok
        self.optimizer.found_inf = bad.to(torch.float32)
        self.optimizer.step()
        self.good += ok
        return ok

    def read(self) -> tuple[int, int, int]:
        """(good steps since the last log, skipped steps in all, longest run of skipped steps since the last
        log): one host read, at a log or checkpoint."""
        good, skipped, longest = torch.stack([self.good, self.skipped, self.longest]).tolist()
        return good, skipped, longest

    def new_interval(self) -> None:
        self.good.zero_()
        self.longest.copy_(self.streak)
