"""Objectives: turn a model's per-sample terms into ELBO / IWAE bounds and training losses.

Models never compute their own loss. They return `Terms`, the log-densities of each of k
samples z_1..z_k ~ q(z|x) for each of B inputs, and everything here is a function of those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch.nn import functional as nn_functional
from torch.distributions import Distribution, Independent, Normal, kl_divergence


class Terms:
    """Per-sample terms of a latent-variable model, each of shape (k, B).

    log_px_z: log p(x | z_i);  log_pz: log p(z_i);  log_qz: log q(z_i | x).
    kl: analytic KL(q(z|x) || p(z)) of shape (B,), or None where it has no closed form.
    kl_dims: the analytic KL per latent dimension, (B, z_dim), where q and p both factorise.

    A model may pass log_pz and log_qz as zero-argument functions: they are then computed when first
    read (and kept), so a loss that needs only log_px_z and the analytic KL, the ELBO, never pays
    for them. Read them in the grad mode the loss needs, as any other term.
    """

    def __init__(self, log_px_z: torch.Tensor, log_pz, log_qz, kl: torch.Tensor | None = None,
                 kl_dims: torch.Tensor | None = None):
        self.log_px_z, self.kl, self.kl_dims = log_px_z, kl, kl_dims
        self._log_pz, self._log_qz = log_pz, log_qz

    @property
    def log_pz(self) -> torch.Tensor:
        if callable(self._log_pz):
            self._log_pz = self._log_pz()
        return self._log_pz

    @property
    def log_qz(self) -> torch.Tensor:
        if callable(self._log_qz):
            self._log_qz = self._log_qz()
        return self._log_qz

    @property
    def k(self) -> int:
        return self.log_px_z.shape[0]

    def log_weights(self, beta: float = 1.0) -> torch.Tensor:
        """log w_i = log p(x|z_i) + beta * (log p(z_i) - log q(z_i|x)), shape (k, B)."""
        return self.log_px_z + beta * (self.log_pz - self.log_qz)


def _factorised_normal(d: Distribution) -> bool:
    return isinstance(d, Independent) and isinstance(d.base_dist, Normal) and d.reinterpreted_batch_ndims == 1


def kl_terms(q: Distribution, p: Distribution) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(KL(q || p), KL per latent dimension): analytic where torch (or vaelab) registers the pair,
    per dimension where both factorise; None where only a Monte Carlo estimate exists."""
    if _factorised_normal(q) and _factorised_normal(p):
        kl_dims = kl_divergence(q.base_dist, p.base_dist)
        return kl_dims.sum(-1), kl_dims
    try:
        return kl_divergence(q, p), None
    except NotImplementedError:
        return None, None


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


def annealed_beta(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """KL annealing: beta rises linearly from 0 at step 0 to `beta` at `warmup_steps`, then stays."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def free_bits_kl(terms: Terms, free_bits: float, group_size: int = 1) -> torch.Tensor:
    """The free-bits KL of Kingma et al. (2016): sum over groups j of max(lambda, E_batch[KL_j]).

    Latent dimensions are split into consecutive groups of `group_size` (the last may be smaller);
    a group whose batch-mean KL is below `free_bits` nats costs the constant lambda, so the
    objective stops pushing it towards the prior. group_size = 0 makes one group of all dimensions,
    which needs only the total KL (analytic or Monte Carlo); other sizes need per-dimension KL,
    i.e. a factorised posterior and prior."""
    if group_size == 0:
        return torch.clamp(kl_term(terms).mean(), min=free_bits)
    if terms.kl_dims is None:
        raise ValueError("free bits per group of dimensions needs per-dimension KL (diagonal posterior, factorised prior); use group size 0")
    groups = terms.kl_dims.mean(0).split(group_size)
    return torch.stack([torch.clamp(g.sum(), min=free_bits) for g in groups]).sum()


@dataclass
class LossOutput:
    """A training loss (scalar) and the batch means of the true (beta = 1) quantities for logging."""

    loss: torch.Tensor
    nelbo: torch.Tensor
    kl: torch.Tensor
    rec: torch.Tensor
    extras: dict = field(default_factory=dict)


def loss(terms: Terms, kind: str = "elbo", beta: float = 1.0, free_bits: float = 0.0, free_bits_group: int = 1) -> LossOutput:
    """The loss to minimise, averaged over the batch.

    kind="elbo": rec + beta * KL (beta-VAE; beta = 1 is the VAE), averaged over the k samples; with
        free_bits > 0 the KL is replaced by free_bits_kl (per group of free_bits_group dimensions).
    kind="iwae": -log (1/k) sum_i p(x|z_i) (p(z_i)/q(z_i|x))^beta (Burda et al.; beta = 1 is the IWAE).
    The logged nelbo / kl / rec are always the true single-sample ELBO terms (beta = 1, no free bits).
    """
    kl = kl_term(terms).mean()
    rec = reconstruction_term(terms).mean()
    if kind == "elbo":
        kl_cost = free_bits_kl(terms, free_bits, free_bits_group) if free_bits > 0 else kl
        value = rec + beta * kl_cost
    elif kind == "iwae":
        value = -iwae_bound(terms, beta).mean()
    else:
        raise ValueError(f"unknown objective {kind!r}")
    kl, rec = kl.detach(), rec.detach()
    return LossOutput(loss=value, nelbo=rec + kl, kl=kl, rec=rec)


# --- Semi-supervised (M2): the label is enumerated, not sampled. ---


@dataclass
class EnumeratedTerms:
    """Terms of a model with a discrete latent y enumerated over its C values (Kingma et al. 2014, M2).

    log_px_yz, log_pz, log_qz: (k, C, B) for k samples z ~ q(z | x, y) under each label y;
    kl_z: analytic KL(q(z|x,y) || p(z)), (C, B), or None; log_qy: log q(y | x), (B, C); log_py: (C,).
    """

    log_px_yz: torch.Tensor
    log_pz: torch.Tensor
    log_qz: torch.Tensor
    kl_z: torch.Tensor | None
    log_qy: torch.Tensor
    log_py: torch.Tensor


def enumerated_elbo(terms: EnumeratedTerms) -> dict:
    """The unlabelled NELBO of M2 per input, (B,) each, with y marginalised exactly:
    NELBO = sum_y q(y|x) [Rec(x, y) + KL_z(x, y)] + KL(q(y|x) || p(y)).
    Returns nelbo, rec, kl_z, kl_y."""
    qy = terms.log_qy.exp().transpose(0, 1)  # (C, B)
    rec_y = -terms.log_px_yz.mean(0)  # (C, B)
    kl_z_y = terms.kl_z if terms.kl_z is not None else (terms.log_qz - terms.log_pz).mean(0)
    rec = (qy * rec_y).sum(0)
    kl_z = (qy * kl_z_y).sum(0)
    kl_y = (qy * (terms.log_qy.transpose(0, 1) - terms.log_py.unsqueeze(-1))).sum(0)
    return {"nelbo": rec + kl_z + kl_y, "rec": rec, "kl_z": kl_z, "kl_y": kl_y}


def ssvae_loss(unlabelled: EnumeratedTerms, class_logits: torch.Tensor, labels: torch.Tensor,
               gen_weight: float = 1.0, class_weight: float = 100.0) -> LossOutput:
    """M2's training loss as in the cs236 reference: gen_weight * mean unlabelled NELBO (y enumerated)
    + class_weight * mean cross-entropy of q(y|x) on the labelled batch."""
    parts = enumerated_elbo(unlabelled)
    ce = nn_functional.cross_entropy(class_logits, labels)
    value = gen_weight * parts["nelbo"].mean() + class_weight * ce
    return LossOutput(loss=value, nelbo=parts["nelbo"].mean().detach(), kl=(parts["kl_z"] + parts["kl_y"]).mean().detach(),
                      rec=parts["rec"].mean().detach(), extras={"ce": ce.detach(), "kl_y": parts["kl_y"].mean().detach()})
