"""VAE (Kingma & Welling 2014). Its variants are settings, not classes: the prior (N(0, I), a
learnable mixture: GMVAE, or the VampPrior), the posterior family (diagonal or full covariance), the likelihood
(Bernoulli, or Gaussian for continuous pixels), the networks (MLP or convolutional), and, in the
objective, beta, KL annealing, free bits and IWAE.

Generative story: z ~ p(z),  x | z ~ p(x | f_theta(z))  (Bernoulli on logits, or Gaussian).
Inference:        q(z | x) = N(mu_phi(x), Sigma_phi(x)), Sigma diagonal or L L^T.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributions import Distribution

from ..distributions import POSTERIORS, PRIORS, build_likelihood, build_posterior, build_prior, kl_terms
from ..nets import build_decoder, build_encoder
from .base import LatentGroup, Model, ModelConfig, ModelSpec, Terms


@dataclass
class VAEConfig(ModelConfig):
    prior: str = "normal"
    """p(z): normal (N(0, I)), mog (learnable mixture of Gaussians, uniform weights: GMVAE) or vamp
    (VampPrior: the posterior's mixture over learnable pseudo-inputs; the VAE only) or af (autoregressive
    flow on N(0, I), VLAE's prior)."""
    prior_components: int = 500
    """Mixture components K when prior = mog, pseudo-inputs when prior = vamp (the papers use 500)."""
    posterior: str = "diagonal"
    """q(z|x): diagonal (N(mu, diag sigma^2)), full (N(mu, L L^T), Cholesky factor L) or iaf (diagonal, then
    flow_steps inverse autoregressive steps conditioned on the encoder's context h(x))."""
    flow_steps: int = 2
    """Autoregressive steps T of the iaf posterior and of the af prior."""
    flow_hidden: tuple[int, ...] = (300, 300)
    """Hidden widths of each flow step's MADE."""


def prior_posterior_checks(cfg: VAEConfig, objective, vamp: bool = False) -> list[tuple[bool, str, str]]:
    """Checks of the prior and posterior settings, shared by the models that have them. vamp: whether the
    model's posterior is q(z | x) alone, of which the VampPrior is a mixture."""
    return [
        (cfg.prior in PRIORS, "model.prior", f"must be one of {', '.join(PRIORS)}"),
        (vamp or cfg.prior != "vamp", "model.prior",
         f"vamp needs a posterior q(z | x) of the image alone; {cfg.name!r} conditions its posterior on a label"),
        (cfg.prior_components >= 1, "model.prior_components", "must be >= 1"),
        (cfg.flow_steps >= 1, "model.flow_steps", "must be >= 1"),
        (len(cfg.flow_hidden) >= 1 and all(w >= 1 for w in cfg.flow_hidden), "model.flow_hidden", "must be one or more widths >= 1"),
        (cfg.posterior in POSTERIORS, "model.posterior", f"must be one of {', '.join(POSTERIORS)}"),
        # Free bits per group of dimensions needs the KL per dimension, i.e. q and p that both factorise.
        (objective.free_bits == 0 or objective.free_bits_group == 0 or (cfg.posterior == "diagonal" and cfg.prior == "normal"),
         "objective.free_bits_group", "must be 0 (one group) unless the posterior is diagonal and the prior normal (per-dimension KL)"),
    ]


class VAE(Model):
    """p(z) = N(0, I), (1/K) sum_k N(m_k, diag v_k) or (1/K) sum_k q(z | u_k); p(x|z) = Bernoulli(logits = decoder(z)) or
    N(decoder(z), v); q(z|x) = N(mu(x), diag sigma^2(x)) or N(mu(x), L(x) L(x)^T)."""

    Config = VAEConfig
    spec = ModelSpec(aggregate_posterior=True)

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        self.posterior_family = build_posterior(cfg.posterior, cfg.z_dim, cfg.flow_steps, cfg.flow_hidden)
        self.encoder = build_encoder(cfg.net, cfg.image_shape, self.posterior_family.n_params, **cfg.net_options())
        self.decoder = build_decoder(cfg.net, cfg.z_dim, cfg.decoder_shape, **cfg.net_options())
        self.prior = build_prior(cfg.prior, cfg.z_dim, cfg.prior_components, cfg.x_dim, cfg.flow_steps, cfg.flow_hidden)
        self.observation = build_likelihood(cfg.likelihood, cfg.x_dim, **cfg.likelihood_options())

    @classmethod
    def settings_checks(cls, cfg: VAEConfig, objective) -> list[tuple[bool, str, str]]:
        return prior_posterior_checks(cfg, objective, vamp=True)

    @property
    def elements_per_sample(self) -> int:
        return max(self.decoder.activation_elements, self.prior.elements_per_sample(), self.observation.elements_per_sample())

    def posterior(self, x: torch.Tensor) -> Distribution:
        """q(z | x) for a batch x of shape (B, x_dim)."""
        return self.posterior_family(self.encoder(x))

    def likelihood(self, z: torch.Tensor) -> Distribution:
        """p(x | z) with batch shape z.shape[:-1] and event shape (x_dim,)."""
        return self.observation(self.decoder(z))

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """k reparameterised draws z_i ~ q(z|x); one latent group "z"."""
        x = batch["x"]
        q = self.posterior(x)
        prior = self.prior(self.posterior)
        z = q.rsample((k,))
        kl, kl_dims = kl_terms(q, prior)
        return Terms(self.likelihood(z).log_prob(x), {"z": LatentGroup(lambda: prior.log_prob(z), lambda: q.log_prob(z), kl, kl_dims)})

    def posteriors(self, batch: dict) -> dict[str, Distribution]:
        return {"z": self.posterior(batch["x"])}

    def priors(self) -> dict[str, Distribution]:
        return {"z": self.prior(self.posterior)}

    @torch.no_grad()
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return {"z": self.posterior(batch["x"]).mean}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.likelihood(codes["z"]).mean

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        return {"z": self.prior(self.posterior).sample((n,))}
