"""Conditional VAE (Sohn et al. 2015; the cs236 FSVAE), trained fully supervised.

Generative story: z ~ N(0, I),  x | y, z ~ p(x | f_theta([z, onehot(y)]))  (Gaussian or Bernoulli).
Inference:        q(z | x, y) = N(mu_phi([x, onehot(y)]), diag sigma^2_phi([x, onehot(y)])).
z carries style, y content: a grid with z fixed along rows and y along columns separates them.
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


def one_hot(y: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(y, classes).to(like.dtype)


@torch.no_grad()
def sample_with_labels(model: nn.Module, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """Mean images of a label-conditioned decoder for z ~ p(z) and labels y (default 0, 1, ..., C-1, 0, ...)."""
    prior = model.prior()
    y = torch.arange(n, device=prior.mean.device) % model.classes if y is None else y
    return model.likelihood(prior.sample((n,)), y).mean


class ConditionalVAE(nn.Module):
    """p(z) = N(0, I), p(x|y,z) from decoder([z, onehot(y)]); q(z|x,y) = N(mu([x, y]), diag sigma^2([x, y]))."""

    conditional = True

    def __init__(self, x_dim: int = 784, z_dim: int = 10, hidden: tuple[int, ...] = (300, 300), activation: str = "elu",
                 classes: int = 10, likelihood: str = "gaussian", decoder_variance: float = 0.1, posterior: str = "diagonal",
                 prior: str = "normal", prior_components: int = 500):
        super().__init__()
        self.x_dim, self.z_dim, self.classes = x_dim, z_dim, classes
        self.posterior_family = POSTERIORS[posterior](z_dim)
        self.encoder = mlp(x_dim + classes, hidden, self.posterior_family.n_params, activation)
        self.decoder = mlp(z_dim + classes, hidden, x_dim, activation)
        self.prior = build_prior(prior, z_dim, prior_components)
        self.observation = build_likelihood(likelihood, x_dim, decoder_variance)

    @classmethod
    def from_config(cls, cfg) -> "ConditionalVAE":
        return cls(x_dim=cfg.x_dim, z_dim=cfg.z_dim, hidden=tuple(cfg.hidden), activation=cfg.activation, classes=cfg.classes,
                   likelihood=cfg.likelihood, decoder_variance=cfg.decoder_variance, posterior=cfg.posterior,
                   prior=cfg.prior, prior_components=cfg.prior_components)

    @property
    def elements_per_sample(self) -> int:
        return max(self.x_dim, self.prior.elements_per_sample())

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> Distribution:
        """q(z | x, y) for x (B, x_dim) and integer labels y (B,)."""
        return self.posterior_family(self.encoder(torch.cat([x, one_hot(y, self.classes, x)], -1)))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> Distribution:
        """p(x | y, z); y (B,) is broadcast against z's leading sample dimensions."""
        y_code = one_hot(y, self.classes, z).expand(*z.shape[:-1], self.classes)
        return self.observation(self.decoder(torch.cat([z, y_code], -1)))

    def forward(self, x: torch.Tensor, k: int = 1, y: torch.Tensor | None = None) -> Terms:
        """Per-sample terms of the conditional bound log p(x | y) >= E_q[log p(x|y,z) + log p(z) - log q(z|x,y)]."""
        if y is None:
            raise ValueError("the conditional VAE needs labels y")
        q = self.posterior(x, y)
        prior = self.prior()
        z = q.rsample((k,))
        kl, kl_dims = kl_terms(q, prior)
        return Terms(log_px_z=self.likelihood(z, y).log_prob(x), log_pz=lambda: prior.log_prob(z), log_qz=lambda: q.log_prob(z),
                     kl=kl, kl_dims=kl_dims)

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images for z ~ p(z) and labels y (default 0, 1, ..., 9, 0, 1, ...); (n, x_dim)."""
        return sample_with_labels(self, n, y)

    @torch.no_grad()
    def style_content(self, rows: int) -> torch.Tensor:
        """Row r uses one z draw for every label; column c is label c. (rows * classes, x_dim)."""
        device = self.prior().mean.device
        z = self.prior().sample((rows,)).repeat_interleave(self.classes, 0)
        y = torch.arange(self.classes, device=device).repeat(rows)
        return self.likelihood(z, y).mean

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.likelihood(self.posterior(x, y).mean, y).mean
