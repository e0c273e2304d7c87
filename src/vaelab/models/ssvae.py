"""Semi-supervised VAE, M2 of Kingma et al. (2014), as in the cs236 SSVAE.

Generative story: y ~ Cat(1/C),  z ~ p(z),  x | y, z ~ p(x | f_theta([z, onehot(y)])).
Inference:        q(y | x) = Cat(softmax(g_phi(x))),  q(z | x, y) = N(mu_phi(x, y), Sigma_phi(x, y)).
y is enumerated, not sampled: each of the k draws of z is taken under every label y, and the C points
of a draw carry mass q(y | x). The ELBO is then M2's exact-in-y bound
    sum_y q(y|x) [log p(x|y,z) - KL(q(z|x,y) || p(z))] - KL(q(y|x) || p(y)),
whose gradient reaches the classifier q(y|x), and the IWAE bound the stratified estimator
log (1/k) sum_i sum_y q(y|x) p(x, y, z_iy) / (q(y|x) q(z_iy|x,y)). The labelled images of a batch
train the classifier by cross-entropy (an auxiliary loss with weight class_weight).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

from ..distributions import build_likelihood, build_posterior, build_prior, full_precision, kl_terms
from ..nets import build_decoder, build_encoder
from .base import Auxiliary, LatentGroup, Model, ModelSpec, Terms
from .cvae import CVAEConfig, cycling_labels, one_hot
from .vae import prior_posterior_checks


@dataclass
class SSVAEConfig(CVAEConfig):
    gen_weight: float = 1.0
    """Weight of the unlabelled bound in the loss (0 trains the classifier alone)."""
    class_weight: float = 100.0
    """Weight of the labelled cross-entropy of q(y|x)."""


class SSVAE(Model):
    """p(y) = 1/C, p(z) = N(0, I) (or a mixture), p(x|y,z) from decoder([z, onehot(y)]);
    q(y|x) = classifier(x), q(z|x,y) from encoder(x, onehot(y))."""

    Config = SSVAEConfig
    spec = ModelSpec(labels="subset", label_code="y", classifier=True)

    def __init__(self, cfg: SSVAEConfig):
        super().__init__(cfg)
        self.posterior_family = build_posterior(cfg.posterior, cfg.z_dim, cfg.flow_steps, cfg.flow_hidden)
        self.encoder = build_encoder(cfg.net, cfg.image_shape, self.posterior_family.n_params, context_features=cfg.classes,
                                     **cfg.net_options())
        self.decoder = build_decoder(cfg.net, cfg.z_dim + cfg.classes, cfg.decoder_shape, **cfg.net_options())
        # The reference classifier uses ReLU whatever the other networks use.
        self.classifier = build_encoder(cfg.net, cfg.image_shape, cfg.classes, **{**cfg.net_options(), "activation": "relu"})
        self.prior = build_prior(cfg.prior, cfg.z_dim, cfg.prior_components, cfg.x_dim, cfg.flow_steps, cfg.flow_hidden)
        self.observation = build_likelihood(cfg.likelihood, cfg.x_dim, **cfg.likelihood_options())

    @classmethod
    def settings_checks(cls, cfg: SSVAEConfig, objective) -> list[tuple[bool, str, str]]:
        return [*prior_posterior_checks(cfg, objective), (cfg.classes >= 2, "model.classes", "must be >= 2"),
                (cfg.gen_weight >= 0, "model.gen_weight", "must be >= 0"),
                (not cfg.conditional_prior, "model.conditional_prior", "applies to cvae; M2's y is inferred, its prior is p(z)"), (cfg.class_weight >= 0, "model.class_weight", "must be >= 0")]

    @property
    def elements_per_sample(self) -> int:
        # One draw is C points, one per label.
        return self.classes * max(self.decoder.activation_elements, self.prior.elements_per_sample(), self.observation.elements_per_sample())

    @property
    def trains_every_parameter(self) -> bool:
        return self.config.gen_weight > 0  # with gen_weight 0 only the classifier learns

    def classify(self, batch: dict) -> torch.Tensor:
        """Logits of q(y | x), (B, C)."""
        return full_precision(self.classifier(batch["x"]))

    def posterior(self, x: torch.Tensor, y: torch.Tensor) -> Distribution:
        """q(z | x, y); x (B, D) broadcasts against labels y of shape (..., B)."""
        return self.posterior_family(self.encoder(x, one_hot(y, self.classes, x)))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> Distribution:
        code = one_hot(y, self.classes, z).expand(*z.shape[:-1], self.classes)
        return self.observation(self.decoder(torch.cat([z, code], -1)))

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """Points (draw i, label y) in draw-major order, P = k * C; groups "z" and "y"."""
        # With gen_weight 0 the bound is only logged: no graph is built for it.
        with torch.set_grad_enabled(self.config.gen_weight > 0 and torch.is_grad_enabled()):
            x = batch["x"]
            c, b = self.classes, x.shape[0]
            log_qy = torch.log_softmax(self.classify(batch), -1).T  # (C, B)
            qy = log_qy.exp()
            y = torch.arange(c, device=x.device).unsqueeze(1).expand(c, b)
            q = self.posterior(x, y)  # batch shape (C, B)
            prior = self.prior()
            z = q.rsample((k,))  # (k, C, B, z_dim)
            log_px = self.likelihood(z, y).log_prob(x).reshape(k * c, b)
            kl_z, kl_z_dims = kl_terms(q, prior)
            log_py = -math.log(c)
            log_mass = log_qy.expand(k, c, b).reshape(k * c, b)
            groups = {
                "z": LatentGroup(lambda: prior.log_prob(z).reshape(k * c, b), lambda: q.log_prob(z).reshape(k * c, b),
                                 None if kl_z is None else (qy * kl_z).sum(0),
                                 None if kl_z_dims is None else (qy.unsqueeze(-1) * kl_z_dims).sum(0)),
                "y": LatentGroup(torch.full_like(log_mass, log_py), log_mass, (qy * (log_qy - log_py)).sum(0)),
            }
        aux = {}
        if "x_labelled" in batch:
            logits = self.classify({"x": batch["x_labelled"]})
            aux["ce"] = Auxiliary(torch.nn.functional.cross_entropy(logits, batch["y_labelled"]), self.config.class_weight)
        return Terms(log_px, groups, draws=k, aux_losses=aux, log_mass=log_mass, bound_weight=self.config.gen_weight)

    @torch.no_grad()
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """z's posterior mean under the most probable label, and that label."""
        y = self.classify(batch).argmax(-1)
        return {"z": self.posterior(batch["x"], y).mean, "y": y}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.likelihood(codes["z"], codes["y"]).mean

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        z = self.prior().sample((n,))
        return {"z": z, "y": cycling_labels(n, self.classes, z.device)}
