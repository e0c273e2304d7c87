"""Objectives: turn a model's per-sample terms into ELBO / IWAE bounds and training losses.

Models never compute their own loss. They return `Terms` (vaelab.models.base): log p(x | latents)
and, per latent group, log p and log q at each of P points (k draws, or k draws times the values of
an enumerated discrete latent, weighted by `log_mass`), plus auxiliary losses. Everything here is a
function of those, so it works for every model; logsumexp throughout, never exp-then-log.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .models.base import LatentGroup, Terms, total


def expectation(terms: Terms, values: torch.Tensor) -> torch.Tensor:
    """E_q[values] per input, (B,), from per-point values (P, B): the mean over the k draws, each
    draw's points weighted by their mass."""
    if terms.log_mass is None:
        return values.mean(0)
    return (terms.log_mass.exp() * values).sum(0) / terms.draws


def group_kl(terms: Terms, group: LatentGroup) -> torch.Tensor:
    """KL(q || p) of one latent group per input, (B,): analytic where available, else the Monte Carlo
    estimate E_q[log q - log p] over the points."""
    if group.kl is not None:
        return group.kl
    return expectation(terms, group.log_q - group.log_p)


def kl_term(terms: Terms) -> torch.Tensor:
    """The KL of all latent groups per input, (B,)."""
    return total(group_kl(terms, group) for group in terms.latents.values())


def reconstruction_term(terms: Terms) -> torch.Tensor:
    """-E_q[log p(x | latents)] per input, (B,)."""
    return -expectation(terms, terms.log_px_z)


def elbo(terms: Terms) -> torch.Tensor:
    """ELBO per input, (B,): E_q[log p(x|z)] - KL(q || p)."""
    return -reconstruction_term(terms) - kl_term(terms)


def log_weights(terms: Terms, beta: float = 1.0) -> torch.Tensor:
    """log w_i = log mass_i + log p(x|z_i) + beta * sum_groups (log p(z_i) - log q(z_i|x)), shape (P, B)."""
    log_w = terms.log_px_z + beta * (terms.log_pz - terms.log_qz)
    return log_w if terms.log_mass is None else log_w + terms.log_mass


def iwae_bound(terms: Terms, beta: float = 1.0) -> torch.Tensor:
    """IWAE bound per input, (B,): log (1/k) sum_i w_i over all points, computed with logsumexp."""
    return torch.logsumexp(log_weights(terms, beta), dim=0) - math.log(terms.draws)


def annealed_beta(step: int, beta: float = 1.0, warmup_steps: int = 0) -> float:
    """KL annealing: beta rises linearly from 0 at step 0 to `beta` at `warmup_steps`, then stays."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, step / warmup_steps)


def free_bits_kl(terms: Terms, free_bits: float, group_size: int = 1) -> torch.Tensor:
    """The free-bits KL of Kingma et al. (2016): sum over free-bits groups j of max(lambda, E_batch[KL_j]).

    Applied per latent group: with group_size = 0 each latent group is one free-bits group; with
    group_size G >= 1 a group's dimensions are split into consecutive blocks of G (the last may be
    smaller), which needs its per-dimension KL. A latent group without one (a discrete label, or a
    posterior and prior that do not factorise) is one block; models refuse settings where that would
    not be what the user asked for. A block whose batch-mean KL is below `free_bits` nats costs the
    constant lambda, so the objective stops pushing it towards the prior."""
    cost = 0.0
    for group in terms.latents.values():
        if group_size == 0 or group.kl_dims is None:
            cost = cost + torch.clamp(group_kl(terms, group).mean(), min=free_bits)
            continue
        blocks = group.kl_dims.mean(0).split(group_size)
        cost = cost + torch.stack([torch.clamp(block.sum(), min=free_bits) for block in blocks]).sum()
    return cost


@dataclass
class LossOutput:
    """A training loss (scalar) and the batch means of the true (beta = 1) quantities for logging:
    nelbo, kl, rec, and in extras the KL of each latent group (for models with several), the
    value of each auxiliary loss and the model's batch statistics."""

    loss: torch.Tensor
    nelbo: torch.Tensor
    kl: torch.Tensor
    rec: torch.Tensor
    extras: dict = field(default_factory=dict)


def loss(terms: Terms, kind: str = "elbo", beta: float = 1.0, free_bits: float = 0.0, free_bits_group: int = 1) -> LossOutput:
    """The loss to minimise, averaged over the batch:
    bound_weight * (bound loss) + sum of weight * auxiliary loss.

    kind="elbo": rec + beta * KL (beta-VAE; beta = 1 is the VAE); with free_bits > 0 the KL is
        replaced by free_bits_kl (per block of free_bits_group dimensions of each latent group).
    kind="iwae": -log (1/k) sum_i p(x|z_i) (p(z_i)/q(z_i|x))^beta (Burda et al.; beta = 1 is the IWAE).
    The logged nelbo / kl / rec are always the true ELBO terms (beta = 1, no free bits)."""
    kls = {name: group_kl(terms, group).mean() for name, group in terms.latents.items()}
    kl = total(kls.values())
    rec = reconstruction_term(terms).mean()
    if kind == "elbo":
        kl_cost = free_bits_kl(terms, free_bits, free_bits_group) if free_bits > 0 else kl
        bound_loss = rec + beta * kl_cost
    elif kind == "iwae":
        bound_loss = -iwae_bound(terms, beta).mean()
    else:
        raise ValueError(f"unknown objective {kind!r}")
    value = bound_loss * terms.bound_weight if terms.bound_weight != 1 else bound_loss
    if terms.bound_weight == 0:  # only the auxiliary losses train (and 0 * a non-finite bound is nan)
        value = rec.new_zeros(())
    for aux in terms.aux_losses.values():
        value = value + aux.weight * aux.value
    extras = {f"kl_{name}": v.detach() for name, v in kls.items()} if len(kls) > 1 else {}
    extras.update({name: aux.value.detach() for name, aux in terms.aux_losses.items()})
    extras.update({name: value.detach() for name, value in terms.statistics.items()})
    kl, rec = kl.detach(), rec.detach()
    return LossOutput(loss=value, nelbo=rec + kl, kl=kl, rec=rec, extras=extras)
