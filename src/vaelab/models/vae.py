"""VAE (Kingma & Welling 2014) with a Bernoulli decoder. Its variants are settings, not classes:
the prior (N(0, I) or a learnable mixture: GMVAE), the posterior family (diagonal or full
covariance), and, in the objective, beta, KL annealing, free bits and IWAE.

Generative story: z ~ p(z),  x | z ~ Bernoulli(sigmoid(f_theta(z))).
Inference:        q(z | x) = N(mu_phi(x), Sigma_phi(x)), Sigma diagonal or L L^T.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, kl_divergence

from ..nets import mlp
from ..objectives import Terms
from ..posteriors import POSTERIORS
from ..priors import build_prior


class VAE(nn.Module):
    """p(z) = N(0, I) or (1/K) sum_k N(m_k, diag v_k); p(x|z) = Bernoulli(logits = decoder(z));
    q(z|x) = N(mu(x), diag sigma^2(x)) or N(mu(x), L(x) L(x)^T)."""

    def __init__(self, x_dim: int = 784, z_dim: int = 10, hidden: tuple[int, ...] = (300, 300), activation: str = "elu",
                 prior: str = "normal", prior_components: int = 500, posterior: str = "diagonal"):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.posterior_family = POSTERIORS[posterior](z_dim)
        self.encoder = mlp(x_dim, hidden, self.posterior_family.n_params, activation)
        self.decoder = mlp(z_dim, hidden, x_dim, activation)
        self.prior = build_prior(prior, z_dim, prior_components)

    @classmethod
    def from_config(cls, cfg) -> "VAE":
        return cls(x_dim=cfg.x_dim, z_dim=cfg.z_dim, hidden=tuple(cfg.hidden), activation=cfg.activation,
                   prior=cfg.prior, prior_components=cfg.prior_components, posterior=cfg.posterior)

    @property
    def elements_per_sample(self) -> int:
        """Largest per-sample intermediate (decoder output or mixture prior), used to size eval chunks."""
        return max(self.x_dim, self.prior.elements_per_sample())

    def posterior(self, x: torch.Tensor) -> Distribution:
        """q(z | x) for a batch x of shape (B, x_dim)."""
        return self.posterior_family(self.encoder(x))

    def likelihood(self, z: torch.Tensor) -> Distribution:
        """p(x | z) as independent Bernoullis on logits; batch shape z.shape[:-1]."""
        return Independent(Bernoulli(logits=self.decoder(z), validate_args=False), 1, validate_args=False)

    def forward(self, x: torch.Tensor, k: int = 1) -> Terms:
        """Per-sample terms for k reparameterised samples z_i ~ q(z|x); each (k, B)."""
        q = self.posterior(x)
        prior = self.prior()
        z = q.rsample((k,))
        kl_dims = _kl_per_dimension(q, prior)
        return Terms(
            log_px_z=self.likelihood(z).log_prob(x),
            log_pz=prior.log_prob(z),
            log_qz=q.log_prob(z),
            kl=kl_dims.sum(-1) if kl_dims is not None else _analytic_kl(q, prior),
            kl_dims=kl_dims,
        )

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images E[x | z] = sigmoid(decoder(z)) for n draws z ~ p(z); (n, x_dim)."""
        z = self.prior().sample((n,))
        return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the posterior mean, E[x | z = mu(x)]; (B, x_dim)."""
        return self.likelihood(self.posterior(x).mean).mean


def _factorised_normal(d: Distribution) -> bool:
    return isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1


def _kl_per_dimension(q: Distribution, p: Distribution) -> torch.Tensor | None:
    """KL per latent dimension, (B, z_dim), when q and p both factorise over dimensions."""
    if _factorised_normal(q) and _factorised_normal(p):
        return kl_divergence(q.base_dist, p.base_dist)
    return None


def _analytic_kl(q: Distribution, p: Distribution) -> torch.Tensor | None:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None
