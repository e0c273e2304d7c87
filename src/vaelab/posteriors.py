"""Posterior families q(z|x): each turns an encoder's output vector into a torch distribution."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

# The reference's variance floor: var = softplus(pre) + 1e-8.
VARIANCE_FLOOR = 1e-8


class DiagonalGaussian(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)), with sigma^2 = softplus(pre) + 1e-8 as in the reference."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    @property
    def n_params(self) -> int:
        return 2 * self.z_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        mean, pre = h.split(self.z_dim, dim=-1)
        var = nn.functional.softplus(pre) + VARIANCE_FLOOR
        return Independent(Normal(mean, var.sqrt(), validate_args=False), 1, validate_args=False)
