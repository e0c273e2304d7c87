"""Diagnostics of a trained model's latent space, from the contract alone: active units per latent
group, KL per latent dimension, ELBO surgery (mutual information and marginal KL), and the classifier's
test accuracy for models that have one."""

from __future__ import annotations

import math

import torch

from .bounds import model_batch


def continuous_codes(codes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The floating-point codes of encode (latent groups), without integer label codes."""
    return {name: code for name, code in codes.items() if code.is_floating_point()}


@torch.inference_mode()
def posterior_means(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 1000) -> dict[str, torch.Tensor]:
    """encode() over x in chunks: each continuous latent group's posterior mean, (n, d)."""
    chunks = [continuous_codes(model.encode(model_batch(model, x, y, i, batch)))
              for i in range(0, x.shape[0], batch)]
    return {name: torch.cat([c[name] for c in chunks]) for name in chunks[0]}


def active_units(model, x: torch.Tensor, y: torch.Tensor | None = None, threshold: float = 0.01) -> dict[str, torch.Tensor]:
    """Burda et al.'s activity per latent group: dimension j is active if Var_x(E_q[z_j | x]) > threshold.
    Returns each group's per-dimension variances; count with (v > threshold).sum()."""
    return {name: means.var(0) for name, means in posterior_means(model, x, y).items()}


@torch.inference_mode()
def kl_per_dimension(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 1000) -> dict[str, torch.Tensor]:
    """Mean analytic KL(q(z_j|x) || p(z_j)) per dimension of each latent group that has it, (d,).
    Empty for a model whose posterior and prior do not factorise."""
    totals: dict[str, torch.Tensor] = {}
    for i in range(0, x.shape[0], batch):
        terms = model(model_batch(model, x, y, i, batch), 1)
        for name, group in terms.latents.items():
            if group.kl_dims is not None:
                part = group.kl_dims.sum(0)
                totals[name] = part if name not in totals else totals[name] + part
    return {name: total / x.shape[0] for name, total in totals.items()}


@torch.inference_mode()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Fraction of inputs whose most probable label under the model's classifier q(y|x) is the true one."""
    correct = sum(int((model.classify({"x": x[i : i + batch]}).argmax(-1) == y[i : i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


@torch.inference_mode()
def elbo_surgery(model, x: torch.Tensor, y: torch.Tensor | None = None, chunk: int = 25) -> dict[str, dict[str, float]]:
    """Hoffman & Johnson's (2016) split of the average KL, per latent group, over the N inputs of x:

        E_n KL(q(z | x_n) || p(z)) = I_q(n; z) + KL(q(z) || p(z)),   q(z) = (1/N) sum_m q(z | x_m),

    the index-code mutual information (at most log N) plus the marginal KL between the aggregate posterior
    and the prior. One draw z_n ~ q(z | x_n) per input; log q(z_n) = logsumexp_m log q(z_n | x_m) - log N
    over all N inputs (an N x N table, computed `chunk` draws at a time: a flow posterior inverts its flow
    for every pair). By construction kl = mutual_information + marginal_kl for the same draws."""
    if not model.spec.aggregate_posterior:
        return {}
    n = x.shape[0]
    posteriors = model.posteriors(model_batch(model, x, y))
    priors = model.priors()
    result = {}
    for name, q in posteriors.items():
        z = q.sample()  # (N, d)
        log_q_own = q.log_prob(z)
        log_p = priors[name].log_prob(z)
        cross = torch.cat([q.log_prob(z[i : i + chunk].clone().unsqueeze(-2)) for i in range(0, n, chunk)])  # (N, N)
        # A flow posterior evaluated at another input's draw may have to invert its flow to a point beyond
        # float range: the density there underflows (log q = -inf, or nan from inf - inf). Such a pair adds
        # nothing to the mixture; how many there were is reported. A draw's own density is always finite.
        overflow = ~torch.isfinite(cross)
        cross = cross.masked_fill(overflow, -math.inf)
        log_aggregate = torch.logsumexp(cross, dim=-1) - math.log(n)
        result[name] = {"mutual_information": float((log_q_own - log_aggregate).mean()),
                        "marginal_kl": float((log_aggregate - log_p).mean()),
                        "kl": float((log_q_own - log_p).mean()), "images": n, "log_images": math.log(n),
                        "underflowed_pairs": int(overflow.sum())}
    return result
