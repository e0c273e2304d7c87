"""What every density here shares: the variance floor and the precision network outputs enter at."""

from __future__ import annotations

import torch
from torch.distributions import Independent, Normal

# The reference's variance floor: var = softplus(pre) + 1e-8.
VARIANCE_FLOOR = 1e-8


def full_precision(h: torch.Tensor) -> torch.Tensor:
    """A network output as it enters a density: at least float32. Under bf16 autocast the networks
    return bfloat16 (8-bit mantissa), too coarse for log-densities summed over 784 pixels."""
    return h.to(torch.promote_types(h.dtype, torch.float32))


def diagonal_gaussian(mean: torch.Tensor, pre: torch.Tensor, floor: float = VARIANCE_FLOOR) -> Independent:
    """N(mean, diag var) with var = softplus(pre) + floor, as the reference parameterises every diagonal Gaussian
    a network (or a learned parameter) outputs (floor = VARIANCE_FLOOR)."""
    var = torch.nn.functional.softplus(pre) + floor
    return Independent(Normal(mean, var.sqrt(), validate_args=False), 1, validate_args=False)
