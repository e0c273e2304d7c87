"""Conditional VAE (Sohn et al. 2015; the cs236 FSVAE), trained fully supervised.

Generative story: z ~ p(z) (or p(z | y) with conditional_prior),  x | y, z ~ p(x | f_theta([z, onehot(y)]))
                  (Gaussian or Bernoulli).
Inference:        q(z | x, y) = N(mu_phi(x, y), Sigma_phi(x, y)).
z carries style, y content: a grid with z fixed along rows and y along columns separates them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution

from ..distributions import build_likelihood, build_posterior, build_prior, kl_terms
from ..distributions.priors import LabelConditionalPrior
from ..nets import build_decoder, build_encoder
from .base import LatentGroup, Model, ModelSpec, Terms
from .vae import VAEConfig, prior_posterior_checks


@dataclass
class CVAEConfig(VAEConfig):
    classes: int = 10
    """Number of labels y."""
    conditional_prior: bool = False
    """p(z | y) = N(m_y, diag v_y), learned per label (seed 002's CVAE objective), instead of p(z) (needs prior = normal)."""


def one_hot(y: torch.Tensor, classes: int, like: torch.Tensor) -> torch.Tensor:
    return nn.functional.one_hot(y, classes).to(like.dtype)


def cycling_labels(n: int, classes: int, device) -> torch.Tensor:
    """0, 1, ..., C-1, 0, 1, ...: the labels of prior samples when none are given."""
    return torch.arange(n, device=device) % classes


class ConditionalVAE(Model):
    """p(z) = N(0, I) (or a mixture, or p(z|y) = N(m_y, diag v_y)), p(x|y,z) from decoder([z, onehot(y)]);
    q(z|x,y) from encoder(x, onehot(y))."""

    Config = CVAEConfig
    spec = ModelSpec(labels="all", label_code="y")

    def __init__(self, cfg: CVAEConfig):
        super().__init__(cfg)
        self.posterior_family = build_posterior(cfg.posterior, cfg.z_dim, cfg.flow_steps, cfg.flow_hidden)
        self.encoder = build_encoder(cfg.net, cfg.image_shape, self.posterior_family.n_params, context_features=cfg.classes,
                                     **cfg.net_options())
        self.decoder = build_decoder(cfg.net, cfg.z_dim + cfg.classes, cfg.decoder_shape, **cfg.net_options())
        if cfg.conditional_prior:
            self.label_prior = LabelConditionalPrior(cfg.z_dim, cfg.classes)
        else:
            self.prior = build_prior(cfg.prior, cfg.z_dim, cfg.prior_components, cfg.x_dim, cfg.flow_steps, cfg.flow_hidden)
        self.observation = build_likelihood(cfg.likelihood, cfg.x_dim, **cfg.likelihood_options())

    @classmethod
    def settings_checks(cls, cfg: CVAEConfig, objective) -> list[tuple[bool, str, str]]:
        return [*prior_posterior_checks(cfg, objective), (cfg.classes >= 2, "model.classes", "must be >= 2"),
                (not cfg.conditional_prior or cfg.prior == "normal", "model.conditional_prior",
                 f"replaces p(z): it needs model.prior = normal (got {cfg.prior!r})")]

    @property
    def elements_per_sample(self) -> int:
        prior_elements = self.config.z_dim if self.config.conditional_prior else self.prior.elements_per_sample()
        return max(self.decoder.activation_elements, prior_elements, self.observation.elements_per_sample())

    def prior_given(self, y: torch.Tensor) -> Distribution:
        """p(z | y) with batch shape (B,) under conditional_prior, else p(z) (batch shape ())."""
        return self.label_prior(y) if self.config.conditional_prior else self.prior()

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> Distribution:
        """q(z | x, y) for x (B, x_dim) and integer labels y (B,)."""
        return self.posterior_family(self.encoder(x, one_hot(y, self.classes, x)))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> Distribution:
        """p(x | y, z); y (B,) is broadcast against z's leading sample dimensions."""
        y_code = one_hot(y, self.classes, z).expand(*z.shape[:-1], self.classes)
        return self.observation(self.decoder(torch.cat([z, y_code], -1)))

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """Terms of the conditional bound log p(x | y) >= E_q[log p(x|y,z) + log p(z) - log q(z|x,y)]."""
        x, y = batch["x"], batch["y"]
        q = self.posterior(x, y)
        prior = self.prior_given(y)
        z = q.rsample((k,))
        kl, kl_dims = kl_terms(q, prior)
        return Terms(self.likelihood(z, y).log_prob(x),
                     {"z": LatentGroup(lambda: prior.log_prob(z), lambda: q.log_prob(z), kl, kl_dims)})

    @torch.no_grad()
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"z": self.posterior(batch["x"], batch["y"]).mean, "y": batch["y"]}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.likelihood(codes["z"], codes["y"]).mean

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        y = cycling_labels(n, self.classes, self.decoder_device)
        return {"z": self.prior_given(y).sample(() if self.config.conditional_prior else (n,)), "y": y}

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None or not self.config.conditional_prior:
            return super().sample(n, labels)
        n, labels = self.checked_sample_request(n, labels)
        if n == 0:
            return super().sample(0)
        return self.decode({"z": self.label_prior(labels).sample(), "y": labels})  # z drawn given the labels asked for

    @property
    def decoder_device(self) -> torch.device:
        return next(self.decoder.parameters()).device
