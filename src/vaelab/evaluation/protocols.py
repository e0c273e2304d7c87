"""Evaluation protocols: NELBO / KL per latent group / Rec and negative IWAE-m bounds.

cs236 (docs/reference.md section 1): the fixed 100-image test subset, binarized once with
    torch.manual_seed(0); NELBO, KL, Rec averaged over 100 repeats; negative IWAE-m for each m
    averaged over max(100 // m, 1) repeats.
full (the literature's): all 10,000 test images binarized once with a fixed seed; NELBO, KL, Rec
    averaged over 10 repeats; negative IWAE-m with one estimate per image, reported with its
    standard error over images; active units per latent group.
full with `images` = N: a fixed subset of N test images (a permutation drawn with SUBSET_SEED, its first N in
    test-set order), binarized as in full, for protocols too slow for the whole split (IWAE-1000 of a PixelCNN
    decoder on the CPU); the same N gives the same images for every run and model.
A model with a likelihood over 8-bit pixels (dlogistic, dgaussian) sees the pixels / 255, not binarized, and its
bounds are also given in bits per dimension (bpd_nelbo, bpd_niwae_<m>: nats / (D ln 2), D = C x H x W).
What the model needs (labels for every image, a classifier to score) is read from its spec.
"""

from __future__ import annotations

import math
import operator
import time

import torch

from .. import data as data_mod
from ..devices import check_compile_toolchain, matmul_precision
from ..errors import ArgumentError, DataError, require_count
from ..nets.quantize import perplexity
from .bounds import DEFAULT_BUDGET, elbo_terms, iwae_per_image, model_batch
from .diagnostics import accuracy, active_units, elbo_surgery, kl_per_dimension

PROTOCOLS = ("cs236", "full")
DEFAULT_IW = {"cs236": (1, 10, 100, 1000), "full": (1, 10, 100, 1000, 5000)}
NELBO_REPEATS = {"cs236": 100, "full": 10}
ACTIVITY_THRESHOLD = 0.01
SURGERY_IMAGES = 1000
SUBSET_SEED = 0
"""Inputs of the ELBO-surgery estimate (the first of the protocol's images): its N x N table of log q(z_n | x_m)
bounds the mutual information by log N = 6.9 nats."""


def subset_index(total: int, images: int) -> torch.Tensor:
    """Indices of the fixed `images`-image subset of a test split of `total` images: the first `images` of a
    permutation drawn with SUBSET_SEED on a CPU generator (the same on any device), in test-set order."""
    images = require_count(images, "images (subset size)")
    if images > total:
        raise ArgumentError(f"images: a subset of {images} asked, the test split has {total} images")
    return torch.randperm(total, generator=torch.Generator().manual_seed(SUBSET_SEED))[:images].sort().values


def evaluation_set(protocol: str, test: data_mod.ImageSet, binary: bool = True, binarize_seed: int = 0,
                   images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (x, y) a protocol evaluates on: binarized once with a fixed seed for binary
    models, the pixels in [0, 1] for continuous ones; with `images` (full only) the fixed subset of that many
    (subset_index), each binarized as in the whole split."""
    if images is not None:
        if protocol != "full":
            raise ArgumentError(f"images: a subset is drawn from the full protocol's test split; {protocol} has its own images")
        index = subset_index(len(test), images)
        x, y = evaluation_set("full", test, binary, binarize_seed)
        return x[index.to(x.device)], y[index.to(y.device)]
    if protocol == "cs236":
        if not binary:
            index = data_mod.subset_indices(test.labels).to(test.labels.device)
            return test.pixels(index), test.labels[index]
        return data_mod.cs236_test_subset(test, binarize_seed)
    x = data_mod.binarized_test_set(test, binarize_seed) if binary else test.pixels()
    return x, test.labels


@torch.no_grad()
def evaluate_images(model, images, labels=None, iws=(1, 10, 100, 1000), seed: int = 0, repeats: int = 10,
                    budget: int = DEFAULT_BUDGET) -> dict:
    """Bounds on log p(x) (or log p(x | y)) for images as a dataset gives them: uint8 or [0, 1] floats,
    (N, H, W), (N, C, H, W) or flat (see data.model_input). For a binary model the images are binarized
    once with seed 0; `seed` fixes the z draws. Returns nats: nelbo, kl, rec (means over `repeats` draws)
    and niwae_<m> with niwae_<m>_sem, its standard error over images, for each m in iws; for a likelihood over
    8-bit pixels also bpd_nelbo and bpd_niwae_<m> (bits per dimension)."""
    iws = _sample_counts(iws)
    repeats, budget = require_count(repeats, "repeats"), require_count(budget, "budget")
    device = next(model.parameters()).device
    images = torch.as_tensor(images)
    if images.ndim >= 1 and images.shape[0] == 0:
        raise DataError("images: none given; a bound is an average over at least one image")
    x = data_mod.model_input(images, model.binary_pixels, 0, device)
    if x.shape[1] != model.config.x_dim:
        raise DataError(f"images: {x.shape[1]} pixels each, the model takes {model.config.x_dim}")
    y = None if labels is None else torch.as_tensor(labels, device=device).long()
    if y is not None and y.shape != (x.shape[0],):
        raise DataError(f"labels: expected one label for each of the {x.shape[0]} images, got shape {tuple(y.shape)}")
    was_training = model.training
    model.eval()
    result = {"images": int(x.shape[0]), "binarized": model.binary_pixels, "eval_seed": seed}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        iws, repeats, _ = bound_plan(model, iws, repeats)
        result.update(elbo_terms(model, x, repeats, budget, y))
        result.update(_iwae_metrics(model, x, y, iws, lambda m: 1, budget, standard_errors=True))
        result.update(bits_per_dim(model, result))
    model.train(was_training)
    return result


def bits_per_dim(model, result: dict) -> dict:
    """The bounds of `result` in bits per dimension, nats / (D ln 2), for a likelihood over 8-bit pixels; none for the
    others (nats over binarized or continuous pixels are not on the scale of 8-bit bits/dim)."""
    if not model.config.eight_bit_pixels:
        return {}
    per_bit = model.config.x_dim * math.log(2)
    bounds = {key: value for key, value in result.items() if key == "nelbo" or (key.startswith("niwae_") and not key.endswith("_sem"))}
    return {f"bpd_{key}": value / per_bit for key, value in bounds.items()}


def _sample_counts(iws) -> tuple[int, ...]:
    """iws as a tuple of IWAE sample counts m >= 1 (one count may be given bare)."""
    try:
        return (require_count(operator.index(iws), "iws (IWAE sample counts)"),)
    except TypeError:
        pass
    try:
        counts = list(iws)
    except TypeError:
        raise ArgumentError(f"iws: expected IWAE sample counts such as (1, 10, 100), got {iws!r}") from None
    return tuple(require_count(m, "iws (IWAE sample counts)") for m in counts)


def _iwae_metrics(model, x, y, iws, repeats_of, budget: int, standard_errors: bool, progress=None) -> dict:
    """niwae_<m> for each m in iws (the bound per image averaged over repeats_of(m) estimates, then over
    images) and, with standard_errors, niwae_<m>_sem over images."""
    result = {}
    for m in iws:
        repeats = repeats_of(m)
        if progress:
            progress(f"IWAE-{m} ({repeats} repeat{'' if repeats == 1 else 's'})")
        bound = iwae_per_image(model, x, m, repeats, budget, y)
        result[f"niwae_{m}"] = float(-bound.mean())
        if standard_errors:
            result[f"niwae_{m}_sem"] = float(bound.std() / math.sqrt(len(bound))) if len(bound) > 1 else None
    return result


def bound_plan(model, iws, nelbo_repeats: int, iwae_repeats=lambda m: 1) -> tuple[tuple[int, ...], int, object]:
    """The IWAE sample counts, ELBO repeats and IWAE repeats per m worth computing: for a deterministic posterior every
    draw is the same point, so IWAE-m is the ELBO for every m and one draw per image gives the exact value."""
    if model.spec.deterministic_posterior:
        return (1,), 1, lambda m: 1
    return tuple(iws), nelbo_repeats, iwae_repeats


@torch.inference_mode()
def codebook_usage(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 1000) -> dict:
    """For a model with discrete codes: the perplexity exp(H) of the codes' frequencies over all of x, and the share
    of the codebook chosen at least once."""
    counts = sum(model.code_counts(model_batch(model, x, y, i, batch)) for i in range(0, x.shape[0], batch))
    return {"codebook_perplexity": float(perplexity(counts.float())), "codes_in_use": float((counts > 0).float().mean()),
            "codebook_size": int(counts.shape[0])}


def latent_diagnostics(model, x: torch.Tensor, y: torch.Tensor | None = None, progress=None) -> dict:
    """Active units and KL per dimension of each latent group on all of x, and ELBO surgery (mutual information
    I(x; z) under q and the marginal KL(q(z) || p(z))) on its first SURGERY_IMAGES inputs. Keys carry the
    group's name (`_<group>`) when the model has more than one."""
    result = codebook_usage(model, x, y) if model.spec.codebook else {}
    variances = active_units(model, x, y)
    several = len(variances) > 1
    result["active_units"] = int(sum(int((v > ACTIVITY_THRESHOLD).sum()) for v in variances.values()))
    result["z_dim"] = int(sum(v.shape[0] for v in variances.values()))
    if several:
        result.update({f"active_units_{name}": int((v > ACTIVITY_THRESHOLD).sum()) for name, v in variances.items()})
    for name, kl in kl_per_dimension(model, x, y).items():
        result["per_dimension_kl" + (f"_{name}" if several else "")] = [round(float(v), 4) for v in kl]
    if model.spec.aggregate_posterior:
        if progress:
            progress(f"ELBO surgery ({min(len(x), SURGERY_IMAGES)} images)")
        surgery = elbo_surgery(model, x[:SURGERY_IMAGES], None if y is None else y[:SURGERY_IMAGES])
        for name, parts in surgery.items():
            suffix = f"_{name}" if len(surgery) > 1 else ""
            result[f"mutual_information{suffix}"] = parts["mutual_information"]
            result[f"marginal_kl{suffix}"] = parts["marginal_kl"]
            if parts["underflowed_pairs"]:
                result[f"surgery_underflowed_pairs{suffix}"] = parts["underflowed_pairs"]
        result["surgery_images"] = min(len(x), SURGERY_IMAGES)
    return result


def evaluate(model, test: data_mod.ImageSet, protocol: str = "cs236", iws=None, seed: int = 0,
             budget: int = DEFAULT_BUDGET, progress=None, compile: bool = False, precision: str = "fp32",
             images: int | None = None) -> dict:
    """Run a protocol and return a flat dict of metrics (nats; nelbo, kl, rec, kl_<group>, niwae_<m>, ...).

    `seed` fixes the evaluation's z draws, so the same model gives the same numbers. `progress`, if
    given, is called with a short label before each stage. compile=True evaluates the NELBO and IWAE
    bounds through torch.compile(model): the decoder's activations and the likelihood's passes fuse,
    the numbers stay the same (within float rounding), and the model itself is left as it was.
    `precision` (devices.matmul_precision) sets the networks' matrix products: fp32, tf32 (CUDA) or bf16;
    log-weights and logsumexp stay float32. docs/performance.md gives the error each costs.
    `images` (full only) evaluates the fixed subset of that many test images (subset_index), recorded as
    subset_of (the split's size) and subset_seed; accuracy stays on every test image."""
    if protocol not in PROTOCOLS:
        raise ArgumentError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    iws, budget = None if iws is None else _sample_counts(iws), require_count(budget, "budget")
    # cs236 averages IWAE-m over max(100 // m, 1) repeats; full takes one estimate per image
    iws, nelbo_repeats, repeats_of = bound_plan(model, DEFAULT_IW[protocol] if iws is None else iws, NELBO_REPEATS[protocol],
                                                (lambda m: max(100 // m, 1)) if protocol == "cs236" else (lambda m: 1))
    binary = model.binary_pixels
    x, y = evaluation_set(protocol, test, binary, images=images)
    if compile:
        check_compile_toolchain(x.device)
    # Bounds go through forward(); a compiled wrapper shares the model's parameters (and reads its spec).
    bounded = torch.compile(model) if compile else model
    device = x.device
    result = {"protocol": protocol, "images": int(x.shape[0]), "binarized": binary, "binarization_seed": 0 if binary else None,
              "eval_seed": seed, "bound": "log p(x | y)" if model.spec.labels == "all" else "log p(x)", "compiled": compile,
              "precision": precision, "deterministic_posterior": model.spec.deterministic_posterior}
    if images is not None:
        result.update(subset_of=len(test), subset_seed=SUBSET_SEED)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), matmul_precision(device, precision):
        torch.manual_seed(seed)
        if progress:
            progress(f"NELBO ({nelbo_repeats} repeat{'' if nelbo_repeats == 1 else 's'})")
        result.update(elbo_terms(bounded, x, nelbo_repeats, budget, y))
        if model.spec.classifier:
            if progress:
                progress("accuracy on all test images (not binarized)")
            # As the reference: every test image, pixels in [0, 1], whatever the protocol's bound subset.
            result["accuracy"] = accuracy(model, test.pixels(), test.labels)
            result["accuracy_images"] = len(test)
        result.update(_iwae_metrics(bounded, x, y, iws, repeats_of, budget, standard_errors=protocol == "full", progress=progress))
        result.update(bits_per_dim(model, result))
        result.update(latent_diagnostics(model, x, y, progress))
    model.train(was_training)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result

