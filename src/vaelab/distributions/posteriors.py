"""Posterior families q(z|x): each turns an encoder's output vector into a torch distribution.
A posterior family is a setting of a model (model.posterior), not a model of its own."""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal, register_kl

from .common import VARIANCE_FLOOR, diagonal_gaussian, full_precision
from .flows import IAFPosterior


class DiagonalGaussian(nn.Module):
    """q(z|x) = N(mu(x), diag sigma^2(x)), with sigma^2 = softplus(pre) + 1e-8 as in the reference."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim

    @property
    def n_params(self) -> int:
        return 2 * self.z_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        return diagonal_gaussian(*full_precision(h).split(self.z_dim, dim=-1))


class FullCovarianceGaussian(nn.Module):
    """q(z|x) = N(mu(x), L L^T) with L = L_mask * L'(x) + diag(sigma(x)) (lecture notes, seed 002).

    L_mask keeps the strictly lower triangle, so L is lower-triangular with positive diagonal
    sigma = sqrt(softplus(pre) + 1e-8); z = mu + L eps and log|det dz/deps| = sum_i log L_ii."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        rows, cols = torch.tril_indices(z_dim, z_dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def n_params(self) -> int:
        return 2 * self.z_dim + self.z_dim * (self.z_dim - 1) // 2

    def forward(self, h: torch.Tensor) -> Distribution:
        mean, pre, off_diagonal = full_precision(h).split([self.z_dim, self.z_dim, self.n_params - 2 * self.z_dim], dim=-1)
        sigma = (nn.functional.softplus(pre) + VARIANCE_FLOOR).sqrt()
        scale_tril = torch.diag_embed(sigma)
        scale_tril[..., self.rows, self.cols] = off_diagonal
        return MultivariateNormal(mean, scale_tril=scale_tril, validate_args=False)


POSTERIORS = ("diagonal", "full", "iaf")


def build_posterior(name: str, z_dim: int, flow_steps: int = 2, flow_hidden: tuple[int, ...] = (300, 300)) -> nn.Module:
    """The posterior family named by a model's `posterior` setting: diagonal, full, or iaf (a diagonal
    Gaussian followed by `flow_steps` inverse autoregressive steps with MADEs of `flow_hidden` widths)."""
    if name == "diagonal":
        return DiagonalGaussian(z_dim)
    if name == "full":
        return FullCovarianceGaussian(z_dim)
    if name == "iaf":
        return IAFPosterior(z_dim, flow_steps, tuple(flow_hidden))
    raise ValueError(f"unknown posterior {name!r}")


@register_kl(MultivariateNormal, Independent)
def _kl_mvn_diagonal_normal(q: MultivariateNormal, p: Independent) -> torch.Tensor:
    """KL(N(mu, L L^T) || N(m, diag s^2)) in closed form; torch registers only MVN-MVN pairs.
    = 1/2 [sum_i Sigma_ii / s_i^2 + sum_i (m_i - mu_i)^2 / s_i^2 - d + sum_i log s_i^2 - log det Sigma]."""
    if not isinstance(p.base_dist, Normal) or p.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    var_p = p.base_dist.scale**2
    diag_sigma = (q.scale_tril**2).sum(-1)
    log_det_q = 2 * q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * ((diag_sigma + (p.base_dist.loc - q.loc) ** 2) / var_p - 1 + var_p.log()).sum(-1) - 0.5 * log_det_q
