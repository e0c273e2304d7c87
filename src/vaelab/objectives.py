"""Objectives: turn a model's per-sample terms into ELBO / IWAE bounds and training losses.

Models never compute their own loss. They return `Terms`, the log-densities of each of k
samples z_1..z_k ~ q(z|x) for each of B inputs, and everything here is a function of those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class Terms:
    """Per-sample terms of a latent-variable model, each of shape (k, B).

    log_px_z: log p(x | z_i);  log_pz: log p(z_i);  log_qz: log q(z_i | x).
    kl: analytic KL(q(z|x) || p(z)) of shape (B,), or None where it has no closed form.
    """

    log_px_z: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    kl: torch.Tensor | None = None

    @property
    def k(self) -> int:
        return self.log_px_z.shape[0]

    def log_weights(self, beta: float = 1.0) -> torch.Tensor:
        """log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)), shape (k, B)."""
        return self.log_px_z + beta * (self.log_pz - self.log_qz)


def kl_term(terms: Terms) -> torch.Tensor:
    """KL(q || p) per input, (B,): analytic where available, else the Monte Carlo mean over the k samples."""
    if terms.kl is not None:
        return terms.kl
    return (terms.log_qz - terms.log_pz).mean(0)


def reconstruction_term(terms: Terms) -> torch.Tensor:
    """-E_q[log p(x|z)] per input, (B,), averaged over the k samples."""
    return -terms.log_px_z.mean(0)


def elbo(terms: Terms) -> torch.Tensor:
    """ELBO per input, (B,): E_q[log p(x|z)] - KL(q || p)."""
    return -reconstruction_term(terms) - kl_term(terms)


def iwae_bound(terms: Terms, beta: float = 1.0) -> torch.Tensor:
    """IWAE bound per input, (B,): log (1/k) sum_i w_i, computed with logsumexp."""
    return torch.logsumexp(terms.log_weights(beta), dim=0) - math.log(terms.k)


@dataclass
class LossOutput:
    """A training loss (scalar) and the batch means of the true (beta = 1) quantities for logging."""

    loss: torch.Tensor
    nelbo: torch.Tensor
    kl: torch.Tensor
    rec: torch.Tensor


def loss(terms: Terms, kind: str = "elbo", beta: float = 1.0) -> LossOutput:
    """The loss to minimise, averaged over the batch.

    kind="elbo": rec + beta * KL (beta-VAE; beta = 1 is the VAE), averaged over the k samples.
    kind="iwae": -log (1/k) sum_i p(x|z_i) (p(z_i)/q(z_i|x))^beta (Burda et al.; beta = 1 is the IWAE).
    """
    kl = kl_term(terms)
    rec = reconstruction_term(terms)
    if kind == "elbo":
        value = (rec + beta * kl).mean()
    elif kind == "iwae":
        value = -iwae_bound(terms, beta).mean()
    else:
        raise ValueError(f"unknown objective {kind!r}")
    with torch.no_grad():
        nelbo = (rec + kl).mean()
    return LossOutput(loss=value, nelbo=nelbo, kl=kl.mean().detach(), rec=rec.mean().detach())
