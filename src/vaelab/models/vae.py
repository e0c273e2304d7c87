"""VAE (Kingma & Welling 2014). Its variants are settings, not classes: the prior (N(0, I) or a
learnable mixture: GMVAE), the posterior family (diagonal or full covariance), the likelihood
(Bernoulli, or Gaussian for continuous pixels), and, in the objective, beta, KL annealing, free
bits and IWAE.

Generative story: z ~ p(z),  x | z ~ p(x | f_theta(z))  (Bernoulli on logits, or Gaussian).
Inference:        q(z | x) = N(mu_phi(x), Sigma_phi(x)), Sigma diagonal or L L^T.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from ..likelihoods import build_likelihood
from ..nets import mlp
from ..objectives import Terms, kl_terms
from ..posteriors import POSTERIORS
from ..priors import build_prior


class VAE(nn.Module):
    """p(z) = N(0, I) or (1/K) sum_k N(m_k, diag v_k); p(x|z) = Bernoulli(logits = decoder(z)) or
    N(decoder(z), v); q(z|x) = N(mu(x), diag sigma^2(x)) or N(mu(x), L(x) L(x)^T)."""

    conditional = False

    def __init__(self, x_dim: int = 784, z_dim: int = 10, hidden: tuple[int, ...] = (300, 300), activation: str = "elu",
                 prior: str = "normal", prior_components: int = 500, posterior: str = "diagonal",
                 likelihood: str = "bernoulli", decoder_variance: float = 0.1):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.posterior_family = POSTERIORS[posterior](z_dim)
        self.encoder = mlp(x_dim, hidden, self.posterior_family.n_params, activation)
        self.decoder = mlp(z_dim, hidden, x_dim, activation)
        self.prior = build_prior(prior, z_dim, prior_components)
        self.observation = build_likelihood(likelihood, x_dim, decoder_variance)

    @classmethod
    def from_config(cls, cfg) -> "VAE":
        return cls(x_dim=cfg.x_dim, z_dim=cfg.z_dim, hidden=tuple(cfg.hidden), activation=cfg.activation,
                   prior=cfg.prior, prior_components=cfg.prior_components, posterior=cfg.posterior,
                   likelihood=cfg.likelihood, decoder_variance=cfg.decoder_variance)

    @property
    def elements_per_sample(self) -> int:
        """Largest per-sample intermediate (decoder output or mixture prior), used to size eval chunks."""
        return max(self.x_dim, self.prior.elements_per_sample())

    def posterior(self, x: torch.Tensor) -> Distribution:
        """q(z | x) for a batch x of shape (B, x_dim)."""
        return self.posterior_family(self.encoder(x))

    def likelihood(self, z: torch.Tensor) -> Distribution:
        """p(x | z) with batch shape z.shape[:-1] and event shape (x_dim,)."""
        return self.observation(self.decoder(z))

    def forward(self, x: torch.Tensor, k: int = 1, y: torch.Tensor | None = None) -> Terms:
        """Per-sample terms for k reparameterised samples z_i ~ q(z|x); each (k, B). `y` is ignored."""
        q = self.posterior(x)
        prior = self.prior()
        z = q.rsample((k,))
        kl, kl_dims = kl_terms(q, prior)
        return Terms(log_px_z=self.likelihood(z).log_prob(x), log_pz=lambda: prior.log_prob(z), log_qz=lambda: q.log_prob(z),
                     kl=kl, kl_dims=kl_dims)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """Mean images E[x | z] for n draws z ~ p(z); (n, x_dim)."""
        z = self.prior().sample((n,))
        return self.likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Decoder means at the posterior mean, E[x | z = mu(x)]; (B, x_dim)."""
        return self.likelihood(self.posterior(x).mean).mean
