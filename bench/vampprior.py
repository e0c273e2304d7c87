"""What the VampPrior costs against the standard normal prior, per training step and per evaluation.

  OMP_NUM_THREADS=1 python bench/vampprior.py [--data-dir DATA] [--steps 300] [--images 1000] [--out FILE]

The VampPrior paper's dynamic-MNIST settings: the VAE with MLPs 300-300 (ELU), z = 40, batch 100,
K = 500 pseudo-inputs. A model per prior (model.prior = normal, vamp) and objective, each from the
same seed.

Training: one step as vaelab.training.loop runs it (training_loss, backward, fused Adam) for each
prior and objective (elbo k = 1, iwae k = 5); single steps of the four contenders interleaved
`--steps` times (this shared machine's load drifts over seconds), median ms per step.

Evaluation: vaelab.evaluation.elbo_terms (NELBO, `--nelbo-repeats` single-draw repeats) and
iwae_per_image (IWAE-`--iw`) of the two elbo k = 1 models as trained by the timed steps (an untrained
VampPrior's pseudo-inputs all have nearly the same posterior) on the first `--images` test images
(binarized once, seed 0), each timed `--eval-repeats` times, interleaved, median seconds.

For each measurement it counts the encoder's passes over the K pseudo-inputs (a forward hook on the
encoder, in one more untimed call), and it times one such pass and the mixture density log p(z) alone,
so the share of the VampPrior's own work can be read off.
Prints JSON (and writes it to --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vaelab import data as data_mod
from vaelab.evaluation import DEFAULT_BUDGET, elbo_terms, iwae_per_image, plan_chunks
from vaelab.models import build_model
from vaelab.training.config import load_preset
from vaelab.training.loop import training_loss
from vaelab.training.optimizers import make_optimizer
from vaelab.training.runs import provenance

Z_DIM, HIDDEN, BATCH, COMPONENTS = 40, (300, 300), 100, 500
OBJECTIVES = {"elbo_k1": ("elbo", 1), "iwae_k5": ("iwae", 5)}


def config(prior: str, kind: str = "elbo", k: int = 1):
    cfg = load_preset("vae")
    cfg.model.z_dim, cfg.model.hidden, cfg.model.prior, cfg.model.prior_components = Z_DIM, HIDDEN, prior, COMPONENTS
    cfg.objective.kind, cfg.objective.k = kind, k
    cfg.train.batch_size = BATCH
    return cfg


def pseudo_input_passes(model, run) -> int:
    """The encoder's calls on the pseudo-inputs (K rows equal to u_k: a chunk of K images has K rows too) while
    run() runs. The hook is removed after, so that no timed call pays for it."""
    prior, count = model.prior, 0

    @torch.no_grad()
    def hook(module, inputs, output):
        nonlocal count
        rows = inputs[0]
        count += rows.shape[0] == prior.components and torch.equal(rows, prior.pseudo_inputs())

    handle = model.encoder.register_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return count


def training_steps(train_pixels: torch.Tensor, steps: int) -> tuple[dict, dict]:
    """The timings, and the two priors' elbo k = 1 models as trained here (for the evaluation)."""
    contenders, models = {}, {}
    for prior in ("normal", "vamp"):
        for name, (kind, k) in OBJECTIVES.items():
            cfg = config(prior, kind, k)
            torch.manual_seed(0)
            model = build_model(cfg.model)
            model.train()
            models[f"{prior}_{name}"] = model
            optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))

            def step(model=model, optimizer=optimizer, cfg=cfg):
                index = torch.randint(train_pixels.shape[0], (BATCH,))
                batch = {"x": data_mod.binarize_batch(train_pixels[index])}
                out = training_loss(model, batch, cfg, 1.0)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()

            contenders[f"{prior}_{name}"] = step
    for step in contenders.values():  # warm-up, untimed
        for _ in range(20):
            step()
    passes = {name: pseudo_input_passes(models[name], step) for name, step in contenders.items() if name.startswith("vamp_")}
    seconds = {name: [] for name in contenders}
    for _ in range(steps):
        for name, step in contenders.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    medians = {name: round(statistics.median(times) * 1e3, 3) for name, times in seconds.items()}
    ratios = {name: round(medians[f"vamp_{name}"] / medians[f"normal_{name}"], 3) for name in OBJECTIVES}
    result = {"median_ms_per_step": medians, "vamp_over_normal": ratios, "pseudo_input_passes_per_step": passes}
    return result, {prior: models[f"{prior}_elbo_k1"].eval() for prior in ("normal", "vamp")}


def evaluation(models: dict, x: torch.Tensor, nelbo_repeats: int, iw: int, repeats: int) -> dict:
    jobs = {}
    for prior, model in models.items():
        jobs[f"{prior}_nelbo"] = lambda model=model: elbo_terms(model, x, nelbo_repeats)
        jobs[f"{prior}_iwae"] = lambda model=model: iwae_per_image(model, x, iw)
    seconds = {name: [] for name in jobs}
    values = {}
    for _ in range(repeats):
        for name, job in jobs.items():
            torch.manual_seed(0)
            start = time.perf_counter()
            out = job()
            seconds[name].append(time.perf_counter() - start)
            values[name] = out["nelbo"] if isinstance(out, dict) else float(-out.mean())
    medians = {name: round(statistics.median(times), 3) for name, times in seconds.items()}
    passes = {name: pseudo_input_passes(models["vamp"], job) for name, job in jobs.items() if name.startswith("vamp_")}
    chunks = {"nelbo": plan_chunks(x.shape[0], nelbo_repeats, models["vamp"].elements_per_sample, DEFAULT_BUDGET),
              "iwae": plan_chunks(x.shape[0], iw, models["vamp"].elements_per_sample, DEFAULT_BUDGET)}

    # The VampPrior's own work, alone: one pass of the pseudo-inputs, and log p(z) for one IWAE chunk's points.
    vamp = models["vamp"]
    images, samples = chunks["iwae"]
    with torch.inference_mode():
        build_times, density_times = [], []
        for _ in range(20):
            start = time.perf_counter()
            prior = vamp.prior(vamp.posterior)
            build_times.append(time.perf_counter() - start)
        z = vamp.posterior(x[:images]).sample((samples,))
        for _ in range(20):
            start = time.perf_counter()
            prior.log_prob(z)
            density_times.append(time.perf_counter() - start)
    return {"median_seconds": medians,
            "vamp_over_normal": {kind: round(medians[f"vamp_{kind}"] / medians[f"normal_{kind}"], 3) for kind in ("nelbo", "iwae")},
            "pseudo_input_passes_per_evaluation": passes,
            "chunks_images_x_draws": {kind: list(c) for kind, c in chunks.items()},
            "one_pseudo_input_pass_ms": round(statistics.median(build_times) * 1e3, 3),
            "mixture_log_density_ms_per_iwae_chunk": round(statistics.median(density_times) * 1e3, 3),
            "iwae_chunk_points": samples * images,
            "bounds_nats": {name: round(v, 4) for name, v in values.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MNIST here (else random pixels of the same shape)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps of each training contender (default 300)")
    parser.add_argument("--images", type=int, default=1000, help="test images evaluated (default 1000)")
    parser.add_argument("--nelbo-repeats", type=int, default=10, help="single-draw NELBO repeats (default 10)")
    parser.add_argument("--iw", type=int, default=100, help="IWAE-m's m (default 100)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timings of each evaluation (default 3)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.data_dir:
        train = data_mod.load("mnist", "train", args.data_dir, "cpu", False).uint8()
        test = data_mod.load("mnist", "test", args.data_dir, "cpu", False).uint8()[: args.images]
        data = "mnist"
    else:
        train = torch.randint(256, (60000, 28, 28), dtype=torch.uint8)
        test = torch.randint(256, (args.images, 28, 28), dtype=torch.uint8)
        data = "random pixels"
    train = train.reshape(train.shape[0], -1)
    generator = torch.Generator().manual_seed(0)
    x = (torch.randint(255, test.reshape(test.shape[0], -1).shape, generator=generator) < test.reshape(test.shape[0], -1)).float()
    training, trained = training_steps(train, args.steps)
    results = {"machine": provenance(), "data": data,
               "settings": {"z_dim": Z_DIM, "hidden": list(HIDDEN), "batch": BATCH, "components": COMPONENTS,
                            "images": args.images, "nelbo_repeats": args.nelbo_repeats, "iw": args.iw},
               "training": training, "evaluation": evaluation(trained, x, args.nelbo_repeats, args.iw, args.eval_repeats)}
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
