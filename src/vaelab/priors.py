"""Priors p(z). Each is an nn.Module whose forward() returns a torch.distributions object with
event shape (z_dim,), so KL(q || p) is analytic wherever torch registers the pair."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, z_dim: int):
        super().__init__()
        # Buffers follow the module to its device; nothing here assumes CUDA.
        self.register_buffer("loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("scale", torch.ones(z_dim), persistent=False)

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)
