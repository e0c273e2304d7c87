"""KL(q || p) between a posterior and a prior: analytic where torch (or vaelab) registers the pair,
per latent dimension where both factorise, None where only a Monte Carlo estimate exists."""

from __future__ import annotations

import torch
from torch.distributions import Distribution, Independent, Normal, kl_divergence


def factorised_normal(d: Distribution) -> bool:
    """Whether d is a product of univariate normals over its last dimension."""
    return isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1


def kl_terms(q: Distribution, p: Distribution) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(KL(q || p), KL per latent dimension): analytic where the pair is registered (the full-covariance
    posterior against a diagonal prior is registered in posteriors.py), per dimension where both
    factorise; (None, None) where only a Monte Carlo estimate exists (mixture priors)."""
    if factorised_normal(q) and factorised_normal(p):
        kl_dims = kl_divergence(q.base_dist, p.base_dist)
        return kl_dims.sum(-1), kl_dims
    try:
        return kl_divergence(q, p), None
    except NotImplementedError:
        return None, None
