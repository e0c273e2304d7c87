"""Evaluation protocols: NELBO / KL / Rec and negative IWAE-m bounds, in bounded memory.

cs236 (REFERENCE.md section 1): the fixed 100-image test subset, binarized once with
    torch.manual_seed(0); NELBO, KL, Rec averaged over 100 repeats; negative IWAE-m for each m
    averaged over max(100 // m, 1) repeats.
full (the literature's): all 10,000 test images binarized once with a fixed seed; NELBO, KL, Rec
    averaged over 10 repeats; negative IWAE-m with one estimate per image, reported with its
    standard error over images.
Work is chunked over images and importance samples so that no tensor exceeds `budget` elements.
All reported quantities are the true bounds (beta = 1) whatever objective the model was trained with.
"""

from __future__ import annotations

import math
import time

import torch

from . import data as data_mod
from .objectives import enumerated_elbo

PROTOCOLS = ("cs236", "full")
DEFAULT_IW = {"cs236": (1, 10, 100, 1000), "full": (1, 10, 100, 1000, 5000)}
NELBO_REPEATS = {"cs236": 100, "full": 10}
# Elements in the largest (samples x images x pixels) tensor. 2^22 floats (16 MB) stay in cache
# between the decoder's output layer and the likelihood's passes over it: 1.7x the samples/s of 2^24
# on 2 CPU cores (bench/ablations.py, docs/performance.md).
DEFAULT_BUDGET = 1 << 22


def _plan(n_images: int, n_samples: int, per_sample: int, budget: int) -> tuple[int, int]:
    """Images per chunk and samples per chunk so that samples * images * per_sample <= budget."""
    images = max(1, min(n_images, budget // (per_sample * n_samples)))
    samples = max(1, min(n_samples, budget // (per_sample * images)))
    return images, samples


def _per_sample(model, x: torch.Tensor) -> int:
    """Elements of the largest per-sample intermediate: the decoder output, or a mixture prior's table."""
    return getattr(model, "elements_per_sample", x.shape[1])


@torch.inference_mode()
def elbo_terms(model, x: torch.Tensor, repeats: int, budget: int = DEFAULT_BUDGET, y: torch.Tensor | None = None) -> dict:
    """Mean NELBO, KL and Rec over the images of x and `repeats` single-sample estimates each.
    `y` (labels) is passed on to conditional models."""
    n = x.shape[0]
    images, samples = _plan(n, repeats, _per_sample(model, x), budget)
    kl_sum = rec_sum = 0.0
    for i in range(0, n, images):
        xc, yc = x[i : i + images], None if y is None else y[i : i + images]
        for done in range(0, repeats, samples):
            terms = model(xc, min(samples, repeats - done), y=yc)
            # Each of the k samples is one repeat of the single-sample estimator (analytic KL where the model has it).
            kl = terms.kl.expand(terms.k, -1) if terms.kl is not None else terms.log_qz - terms.log_pz
            kl_sum += float(kl.sum())
            rec_sum += float(-terms.log_px_z.sum())
    count = n * repeats
    kl, rec = kl_sum / count, rec_sum / count
    return {"nelbo": kl + rec, "kl": kl, "rec": rec}


@torch.inference_mode()
def iwae_per_image(model, x: torch.Tensor, m: int, repeats: int = 1, budget: int = DEFAULT_BUDGET,
                   y: torch.Tensor | None = None) -> torch.Tensor:
    """The IWAE-m bound log (1/m) sum_i w_i for each image, averaged over `repeats` independent
    estimates; shape (n,). Samples are drawn in chunks and their log-weights combined by logsumexp.
    With labels `y` (conditional models) it bounds log p(x | y)."""
    n = x.shape[0]
    total = m * repeats
    images, samples = _plan(n, total, _per_sample(model, x), budget)
    bounds = []
    for i in range(0, n, images):
        xc, yc = x[i : i + images], None if y is None else y[i : i + images]
        log_w = torch.cat([model(xc, min(samples, total - done), y=yc).log_weights() for done in range(0, total, samples)])
        log_w = log_w.view(repeats, m, xc.shape[0])
        bounds.append((torch.logsumexp(log_w, dim=1) - math.log(m)).mean(0))
    return torch.cat(bounds)


@torch.inference_mode()
def active_units(model, x: torch.Tensor, threshold: float = 0.01, batch: int = 1000) -> tuple[int, torch.Tensor]:
    """Burda et al.'s active units: dimension j is active if Var_x(E_q[z_j | x]) > threshold.
    Returns the count and the per-dimension variances."""
    means = torch.cat([model.posterior(x[i : i + batch]).mean for i in range(0, x.shape[0], batch)])
    variances = means.var(0)
    return int((variances > threshold).sum()), variances


@torch.inference_mode()
def enumerated_elbo_terms(model, x: torch.Tensor, repeats: int, budget: int = DEFAULT_BUDGET) -> dict:
    """For models with a discrete label marginalised by enumeration (M2): mean NELBO, Rec, KL_z and
    KL_y, with KL = KL_z + KL_y; `repeats` samples of z per (image, label)."""
    n = x.shape[0]
    classes = model.classes
    images, samples = _plan(n, repeats, _per_sample(model, x) * classes, budget)
    sums = {"nelbo": 0.0, "rec": 0.0, "kl_z": 0.0, "kl_y": 0.0}
    for i in range(0, n, images):
        for done in range(0, repeats, samples):
            k = min(samples, repeats - done)
            parts = enumerated_elbo(model.enumerate_labels(x[i : i + images], k))
            for key in sums:
                sums[key] += float(parts[key].sum()) * k
    result = {key: value / (n * repeats) for key, value in sums.items()}
    result["kl"] = result["kl_z"] + result["kl_y"]
    return result


@torch.inference_mode()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 2000) -> float:
    """Fraction of inputs whose most probable label under q(y|x) is the true one."""
    correct = sum(int((model.classify(x[i : i + batch]).argmax(-1) == y[i : i + batch]).sum()) for i in range(0, len(x), batch))
    return correct / len(x)


def is_binary(model) -> bool:
    """Whether a model's likelihood is over binarized pixels (Bernoulli) rather than continuous ones."""
    return not getattr(getattr(model, "observation", None), "continuous", False)


def evaluation_set(protocol: str, test: data_mod.ImageSet, binary: bool = True, binarize_seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The test images (x, y) a protocol evaluates on: binarized once with a fixed seed for binary
    models, the pixels in [0, 1] for continuous ones."""
    if protocol == "cs236":
        if not binary:
            index = data_mod.subset_indices(test.labels).to(test.labels.device)
            return test.pixels(index), test.labels[index]
        return data_mod.cs236_test_subset(test, binarize_seed)
    x = data_mod.binarized_test_set(test, binarize_seed) if binary else test.pixels()
    return x, test.labels


def evaluate(model, test: data_mod.ImageSet, protocol: str = "cs236", iws=None, seed: int = 0,
             budget: int = DEFAULT_BUDGET, progress=None, compile: bool = False) -> dict:
    """Run a protocol and return a flat dict of metrics (nats; nelbo, kl, rec, niwae_<m>, ...).

    `seed` fixes the evaluation's z draws, so the same model gives the same numbers. `progress`, if
    given, is called with a short label before each stage. compile=True evaluates the NELBO and IWAE
    bounds through torch.compile(model): the decoder's activations and the likelihood's passes fuse,
    the numbers stay the same (within float rounding), and the model itself is left as it was."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}")
    iws = DEFAULT_IW[protocol] if iws is None else tuple(iws)
    binary = is_binary(model)
    x, y = evaluation_set(protocol, test, binary)
    if compile:
        from .train import check_compile_toolchain

        check_compile_toolchain(x.device)
    # Bounds go through forward(); a compiled wrapper shares the model's parameters.
    bounded = torch.compile(model) if compile else model
    labels = y if getattr(model, "conditional", False) else None  # conditional models bound log p(x | y)
    device = x.device
    result = {"protocol": protocol, "images": int(x.shape[0]), "binarized": binary, "binarization_seed": 0 if binary else None,
              "eval_seed": seed, "bound": "log p(x | y)" if labels is not None else "log p(x)", "compiled": compile}
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if progress:
            progress(f"NELBO ({NELBO_REPEATS[protocol]} repeats)")
        if getattr(model, "semi_supervised", False):
            result.update(enumerated_elbo_terms(model, x, NELBO_REPEATS[protocol], budget))
            if progress:
                progress("accuracy on all test images (not binarized)")
            # As the reference: every test image, pixels in [0, 1], whatever the protocol's bound subset.
            result["accuracy"] = accuracy(model, test.pixels(), test.labels)
            result["accuracy_images"] = len(test)
        else:
            result.update(elbo_terms(bounded, x, NELBO_REPEATS[protocol], budget, labels))
        for m in iws:
            repeats = max(100 // m, 1) if protocol == "cs236" else 1
            if progress:
                progress(f"IWAE-{m} ({repeats} repeats)")
            bound = iwae_per_image(bounded, x, m, repeats, budget, labels)
            result[f"niwae_{m}"] = float(-bound.mean())
            if protocol == "full":
                result[f"niwae_{m}_sem"] = float(bound.std() / math.sqrt(len(bound)))
        if protocol == "full" and not getattr(model, "conditional", False):
            result["active_units"], variances = active_units(model, x)
            result["z_dim"] = int(variances.shape[0])
    model.train(was_training)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result
