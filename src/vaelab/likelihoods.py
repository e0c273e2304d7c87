"""Observation models p(x | decoder output): Bernoulli for binary pixels, Gaussian for continuous ones.
A likelihood is a setting of a model (model.likelihood); each maps the decoder's output to a
torch distribution with event shape (x_dim,)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from .nets import full_precision

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned")


class BernoulliLikelihood(nn.Module):
    """x_j ~ Bernoulli(sigmoid(h_j)), h the decoder's logits. For binary (binarized) data."""

    continuous = False

    def forward(self, h: torch.Tensor) -> Distribution:
        return Independent(Bernoulli(logits=full_precision(h), validate_args=False), 1, validate_args=False)


class GaussianLikelihood(nn.Module):
    """x_j ~ N(h_j, v): fixed variance v (the reference FSVAE uses 0.1), or with learned=True a
    learned per-pixel variance v_j = softplus(s_j) + floor, shared across inputs (a network-predicted
    variance lets pixels that are always 0 drive it to zero and the likelihood to infinity)."""

    continuous = True

    def __init__(self, x_dim: int, variance: float = 0.1, learned: bool = False, floor: float = 1e-3):
        super().__init__()
        self.floor = floor
        if learned:
            start = math.log(math.expm1(max(variance - floor, 1e-6)))  # softplus^-1, so v starts at `variance`
            self.raw_variance = nn.Parameter(torch.full((x_dim,), start))
        else:
            self.register_buffer("fixed_variance", torch.tensor(variance), persistent=False)
            self.raw_variance = None

    def variance(self) -> torch.Tensor:
        if self.raw_variance is None:
            return self.fixed_variance
        return nn.functional.softplus(self.raw_variance) + self.floor

    def forward(self, h: torch.Tensor) -> Distribution:
        h = full_precision(h)
        scale = self.variance().sqrt().expand_as(h)
        return Independent(Normal(h, scale, validate_args=False), 1, validate_args=False)


def build_likelihood(name: str, x_dim: int, variance: float = 0.1) -> nn.Module:
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(x_dim, variance, learned=False)
    if name == "gaussian-learned":
        return GaussianLikelihood(x_dim, variance, learned=True)
    raise ValueError(f"unknown likelihood {name!r}")
