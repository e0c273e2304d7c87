"""Bounds on log p(x) in bounded memory: the ELBO terms (NELBO, KL per latent group, Rec) and the
IWAE-m bound per image, for any model, from its terms.

Work is chunked over images and draws so that no tensor exceeds `budget` elements. All reported
quantities are the true bounds (beta = 1) whatever objective the model was trained with.
"""

from __future__ import annotations

import math

import torch

from .. import objectives
from ..distributions.priors import frozen_priors

# Elements in the largest (draws x images x per-draw elements) tensor. 2^22 floats (16 MB) stay in
# cache between the decoder's output layer and the likelihood's passes over it: 1.7x the samples/s of
# 2^24 on 2 CPU cores (bench/ablations.py, docs/performance.md).
DEFAULT_BUDGET = 1 << 22


def plan_chunks(n_images: int, n_samples: int, per_sample: int, budget: int) -> tuple[int, int]:
    """Images per chunk and draws per chunk so that draws * images * per_sample <= budget."""
    images = max(1, min(n_images, budget // (per_sample * n_samples)))
    samples = max(1, min(n_samples, budget // (per_sample * images)))
    return images, samples


def model_batch(model, x: torch.Tensor, y: torch.Tensor | None, start: int = 0, size: int | None = None) -> dict:
    """The batch a model's terms take at evaluation, images start .. start + size (default: all): the
    images, and the labels for models that condition on a label for every image (their bounds are on
    log p(x | y)); other models ignore `y`."""
    stop = None if size is None else start + size
    if model.spec.labels == "all":
        if y is None:
            raise ValueError(f"model {model.config.name!r} needs a label for every image")
        return {"x": x[start:stop], "y": y[start:stop]}
    return {"x": x[start:stop]}


@torch.inference_mode()
def elbo_terms(model, x: torch.Tensor, repeats: int, budget: int = DEFAULT_BUDGET, y: torch.Tensor | None = None) -> dict:
    """Mean NELBO, KL, Rec and KL of each latent group (kl_<name>) over the images of x and `repeats`
    single-draw estimates each; each of a chunk's k draws is one repeat (analytic KL where the model has it)."""
    n = x.shape[0]
    images, samples = plan_chunks(n, repeats, model.elements_per_sample, budget)
    sums: dict[str, float] = {}
    with frozen_priors(model):  # the weights are fixed: a VampPrior's mixture is built once, not once per chunk
        for i in range(0, n, images):
            batch = model_batch(model, x, y, i, images)
            for done in range(0, repeats, samples):
                terms = model(batch, min(samples, repeats - done))
                parts = {"rec": objectives.reconstruction_term(terms)}
                parts.update({f"kl_{name}": objectives.group_kl(terms, group) for name, group in terms.latents.items()})
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + float(value.sum()) * terms.draws
    count = n * repeats
    result = {key: value / count for key, value in sums.items()}
    result["kl"] = sum(value for key, value in result.items() if key.startswith("kl_"))
    result["nelbo"] = result["kl"] + result["rec"]
    return {"nelbo": result.pop("nelbo"), "kl": result.pop("kl"), "rec": result.pop("rec"), **result}


@torch.inference_mode()
def iwae_per_image(model, x: torch.Tensor, m: int, repeats: int = 1, budget: int = DEFAULT_BUDGET,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """The IWAE-m bound log (1/m) sum_i w_i for each image, averaged over `repeats` independent
    estimates; shape (n,). Draws are taken in chunks of at most `budget` elements and folded into a
    running logsumexp per (repeat, image), so memory stays bounded whatever m is.
    With labels `y` (models conditioned on a label) it bounds log p(x | y)."""
    n = x.shape[0]
    total = m * repeats
    images, samples = plan_chunks(n, total, model.elements_per_sample, budget)
    bounds = []
    with frozen_priors(model):  # as in elbo_terms
        for i in range(0, n, images):
            batch = model_batch(model, x, y, i, images)
            running = None  # (repeats, B), the running logsumexp of each repeat's log-weights
            for done in range(0, total, samples):
                draws = min(samples, total - done)
                # Points are draw-major: (draws * values, B) -> one log-sum per draw, (draws, B).
                log_w = objectives.log_weights(model(batch, draws))
                per_draw = torch.logsumexp(log_w.view(draws, -1, log_w.shape[-1]), dim=1)
                if running is None:
                    running = per_draw.new_full((repeats, per_draw.shape[-1]), -math.inf)
                # The chunk's draws are consecutive, so they cover consecutive repeats.
                start = done
                while start < done + draws:
                    r = start // m
                    stop = min(done + draws, (r + 1) * m)
                    part = torch.logsumexp(per_draw[start - done : stop - done], dim=0)
                    running[r] = torch.logaddexp(running[r], part)
                    start = stop
            bounds.append((running - math.log(m)).mean(0))
    return torch.cat(bounds)
