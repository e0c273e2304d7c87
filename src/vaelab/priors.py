"""Priors p(z). Each is an nn.Module whose forward() returns a torch.distributions object with
event shape (z_dim,), so KL(q || p) is analytic wherever torch registers the pair and Monte Carlo
otherwise. A prior is a setting of a model (model.prior), not a model of its own."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from .posteriors import VARIANCE_FLOOR


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, z_dim: int):
        super().__init__()
        # Buffers follow the module to its device; nothing here assumes CUDA.
        self.register_buffer("loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("scale", torch.ones(z_dim), persistent=False)

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    def elements_per_sample(self) -> int:
        return self.loc.shape[0]


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = (1/K) sum_k N(z; m_k, diag v_k) with learnable m_k, v_k (the cs236 GMVAE prior).

    Parameter layout as the reference: one tensor z_pre of shape (1, 2K, z_dim) initialised as
    N(0, I) / sqrt(K * z_dim); rows 0..K-1 are the means, rows K..2K-1 give v = softplus(.) + 1e-8.
    Mixture weights are uniform and fixed."""

    def __init__(self, z_dim: int, components: int = 500):
        super().__init__()
        self.components = components
        self.z_pre = nn.Parameter(torch.randn(1, 2 * components, z_dim) / math.sqrt(components * z_dim))
        self.register_buffer("logits", torch.zeros(components), persistent=False)

    def forward(self) -> Distribution:
        means, pre = self.z_pre[0].split(self.components, dim=0)
        variances = nn.functional.softplus(pre) + VARIANCE_FLOOR
        components = Independent(Normal(means, variances.sqrt(), validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), components, validate_args=False)

    def elements_per_sample(self) -> int:
        # log p(z) materialises a (K, z_dim) tensor per sample: the evaluator sizes its chunks by this.
        return self.z_pre.shape[1] // 2 * self.z_pre.shape[2]


PRIORS = ("normal", "mog")


def build_prior(name: str, z_dim: int, components: int) -> nn.Module:
    """The prior named by model.prior: normal (N(0, I)) or mog (mixture of `components` Gaussians)."""
    if name == "mog":
        return MixtureOfGaussiansPrior(z_dim, components)
    if name == "normal":
        return StandardNormalPrior(z_dim)
    raise ValueError(f"unknown prior {name!r}")
