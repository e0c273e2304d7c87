"""VAE (Kingma & Welling 2014) with a Bernoulli decoder; beta-VAE and IWAE are objective settings.

Generative story: z ~ p(z) = N(0, I),  x | z ~ Bernoulli(sigmoid(f_theta(z))).
Inference:        q(z | x) = N(mu_phi(x), diag sigma^2_phi(x)).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Bernoulli, Distribution, Independent, kl_divergence

from ..nets import mlp
from ..objectives import Terms
from ..posteriors import DiagonalGaussian
from ..priors import StandardNormalPrior


class VAE(nn.Module):
    """p(z) = N(0, I), p(x|z) = Bernoulli(logits = decoder(z)); q(z|x) = N(mu(x), diag sigma^2(x))."""

    def __init__(self, x_dim: int = 784, z_dim: int = 10, hidden: tuple[int, ...] = (300, 300), activation: str = "elu"):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.posterior_family = DiagonalGaussian(z_dim)
        self.encoder = mlp(x_dim, hidden, self.posterior_family.n_params, activation)
        self.decoder = mlp(z_dim, hidden, x_dim, activation)
        self.prior = StandardNormalPrior(z_dim)

    @classmethod
    def from_config(cls, cfg) -> "VAE":
        return cls(x_dim=cfg.x_dim, z_dim=cfg.z_dim, hidden=tuple(cfg.hidden), activation=cfg.activation)

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
        return Terms(
            log_px_z=self.likelihood(z).log_prob(x),
            log_pz=prior.log_prob(z),
            log_qz=q.log_prob(z),
            kl=_analytic_kl(q, prior),
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


def _analytic_kl(q: Distribution, p: Distribution) -> torch.Tensor | None:
    try:
        return kl_divergence(q, p)
    except NotImplementedError:
        return None
