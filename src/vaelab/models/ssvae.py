"""Semi-supervised VAE, M2 of Kingma et al. (2014), as in the cs236 SSVAE.

Generative story: y ~ Cat(1/C),  z ~ N(0, I),  x | y, z ~ Bernoulli(sigmoid(f_theta([z, onehot(y)]))).
Inference:        q(y | x) = Cat(softmax(g_phi(x))),  q(z | x, y) = N(mu_phi([x, y]), diag sigma^2_phi([x, y])).
Unlabelled inputs marginalise y by enumerating all C labels in one batched pass; labelled inputs
train the classifier q(y|x) by cross-entropy.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Categorical, Distribution

from ..likelihoods import build_likelihood
from ..nets import full_precision, mlp
from ..objectives import EnumeratedTerms, Terms, kl_terms
from ..posteriors import DiagonalGaussian
from ..priors import StandardNormalPrior
from .cvae import one_hot, sample_with_labels


class SSVAE(nn.Module):
    """p(y) = 1/C, p(z) = N(0, I), p(x|y,z) = Bernoulli(decoder([z, y])); q(y|x) = classifier(x),
    q(z|x,y) = N(mu([x, y]), diag sigma^2([x, y]))."""

    conditional = False
    semi_supervised = True

    def __init__(self, x_dim: int = 784, z_dim: int = 64, hidden: tuple[int, ...] = (300, 300), activation: str = "elu",
                 classes: int = 10, likelihood: str = "bernoulli", decoder_variance: float = 0.1):
        super().__init__()
        self.x_dim, self.z_dim, self.classes = x_dim, z_dim, classes
        self.posterior_family = DiagonalGaussian(z_dim)
        self.encoder = mlp(x_dim + classes, hidden, self.posterior_family.n_params, activation)
        self.decoder = mlp(z_dim + classes, hidden, x_dim, activation)
        self.classifier = mlp(x_dim, hidden, classes, "relu")  # the reference classifier uses ReLU
        self.prior = StandardNormalPrior(z_dim)
        self.observation = build_likelihood(likelihood, x_dim, decoder_variance)

    @classmethod
    def from_config(cls, cfg) -> "SSVAE":
        return cls(x_dim=cfg.x_dim, z_dim=cfg.z_dim, hidden=tuple(cfg.hidden), activation=cfg.activation, classes=cfg.classes,
                   likelihood=cfg.likelihood, decoder_variance=cfg.decoder_variance)

    @property
    def elements_per_sample(self) -> int:
        return self.x_dim

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of q(y | x), (B, C)."""
        return full_precision(self.classifier(x))

    def posterior(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Distribution:
        """q(z | x, y); without y, q(z | x, y = argmax q(y|x)) (used for latent statistics)."""
        if y is None:
            y = self.classify(x).argmax(-1)
        code = one_hot(y, self.classes, x).expand(*x.shape[:-1], self.classes)
        return self.posterior_family(self.encoder(torch.cat([x, code], -1)))

    def likelihood(self, z: torch.Tensor, y: torch.Tensor) -> Distribution:
        code = one_hot(y, self.classes, z).expand(*z.shape[:-1], self.classes)
        return self.observation(self.decoder(torch.cat([z, code], -1)))

    def log_py(self, device) -> torch.Tensor:
        return torch.full((self.classes,), -math.log(self.classes), device=device)

    def enumerate_labels(self, x: torch.Tensor, k: int = 1) -> EnumeratedTerms:
        """Terms for every label y at once: x is expanded to (C, B, x_dim), no Python loop over labels."""
        c, b = self.classes, x.shape[0]
        y = torch.arange(c, device=x.device).unsqueeze(1).expand(c, b)  # (C, B)
        xs = x.unsqueeze(0).expand(c, b, self.x_dim)
        q = self.posterior(xs, y)
        prior = self.prior()
        z = q.rsample((k,))  # (k, C, B, z)
        kl_z, _ = kl_terms(q, prior)
        return EnumeratedTerms(
            log_px_yz=self.likelihood(z, y).log_prob(xs),
            log_pz=prior.log_prob(z),
            log_qz=q.log_prob(z),
            kl_z=kl_z,
            log_qy=torch.log_softmax(self.classify(x), -1),
            log_py=self.log_py(x.device),
        )

    def forward(self, x: torch.Tensor, k: int = 1, y: torch.Tensor | None = None) -> Terms:
        """Per-sample terms of a bound on log p(x) (or log p(x, y) when y is given), each (k, B).

        Without y, (y_i, z_i) ~ q(y|x) q(z|x,y) are sampled jointly, so log w_i = log p(x, y_i, z_i)
        - log q(y_i, z_i | x) and the IWAE bound is valid for the marginal p(x)."""
        prior = self.prior()
        log_py = -math.log(self.classes)
        if y is None:
            qy = Categorical(logits=self.classify(x), validate_args=False)
            y_k = qy.sample((k,))  # (k, B)
            q = self.posterior(x.unsqueeze(0).expand(k, *x.shape), y_k)
            z = q.rsample()
            return Terms(log_px_z=self.likelihood(z, y_k).log_prob(x), log_pz=prior.log_prob(z) + log_py,
                         log_qz=q.log_prob(z) + qy.log_prob(y_k))
        q = self.posterior(x, y)
        z = q.rsample((k,))
        kl, kl_dims = kl_terms(q, prior)
        return Terms(log_px_z=self.likelihood(z, y).log_prob(x), log_pz=prior.log_prob(z) + log_py, log_qz=q.log_prob(z),
                     kl=None if kl is None else kl - log_py, kl_dims=None)

    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images for z ~ p(z) and labels y (default 0, 1, ..., 9, 0, 1, ...); (n, x_dim)."""
        return sample_with_labels(self, n, y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        y = self.classify(x).argmax(-1)
        return self.likelihood(self.posterior(x, y).mean, y).mean
