"""What each speed choice is worth: vaelab with one choice undone or changed at a time.

  python bench/ablations.py --data-dir DATA [--steps 1000] [--repeats 2] [--images 500] [--out FILE]

Training (images/s of vaelab.training.train on the reference VAE, median of interleaved repeats):
  default                       fused Adam, IndependentBernoulli, batches binarized as 1[u < pixel],
                                threads = cores, fp32, eager
  adam-foreach                  torch.optim.Adam's default (foreach) update instead of the fused one
  torch-bernoulli               Independent(Bernoulli(logits)) (binary_cross_entropy_with_logits)
                                instead of vaelab's IndependentBernoulli (sum x h - softplus(h))
  bernoulli-draw                training batches binarized with torch.bernoulli instead of 1[u < pixel]
  threads-1                     train.threads = 1
  bf16                          train.precision = bf16 (autocast on the CPU)
  compile                       train.compile = true (after one untimed compiling run)
IWAE-1000 evaluation (importance samples/s of vaelab.evaluation.iwae_per_image on --images test images):
  default and torch-bernoulli, and a range of chunk budgets (elements of the largest tensor);
  the GMVAE (500 components) with vaelab's mixture density (matmul expansion) and with
  MixtureSameFamily's (a (samples, K, z) tensor).
--variants "" measures the IWAE cases only.
Undone and tried-and-dropped choices live here, monkeypatched in; vaelab itself has no switch for them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch.distributions import Bernoulli, Independent, MixtureSameFamily

from vaelab import data as data_mod
from vaelab.distributions import likelihoods, priors
from vaelab.training import loop as train_mod
from vaelab.training.config import load_preset
from vaelab.evaluation import DEFAULT_BUDGET, iwae_per_image
from vaelab.models import build_model
from vaelab.distributions import full_precision
from vaelab.training.runs import load_run, provenance

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import vaelab_loop  # noqa: E402  (the benchmark's own vaelab measurement)


@contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


def torch_bernoulli(self, h):
    return Independent(Bernoulli(logits=full_precision(h), validate_args=False), 1, validate_args=False)


def bernoulli_draw(images):
    return torch.bernoulli(images.reshape(images.shape[0], -1).float().div_(255.0))


def foreach_adam(model, train, device):
    return torch.optim.Adam(model.parameters(), lr=train.lr)


@contextmanager
def variant(name: str):
    if name == "adam-foreach":
        with patched(train_mod, "make_optimizer", foreach_adam):
            yield {}
    elif name == "bernoulli-draw":
        with patched(data_mod, "binarize_batch", bernoulli_draw):
            yield {}
    elif name == "torch-bernoulli":
        with patched(likelihoods.BernoulliLikelihood, "forward", torch_bernoulli):
            yield {}
    else:
        yield {"threads-1": {"threads": 1}, "bf16": {"precision": "bf16"}, "compile": {"compile": True}}.get(name, {})


def iwae_speed(model, x: torch.Tensor, k: int, budget: int) -> float:
    iwae_per_image(model, x[:10], k, budget=budget)  # warm-up
    start = time.perf_counter()
    iwae_per_image(model, x, k, budget=budget)
    return x.shape[0] * k / (time.perf_counter() - start)


def gmvae_iwae_speeds(x: torch.Tensor, k: int) -> dict:
    """IWAE-k samples/s of the cs236 GMVAE (untrained: the speed does not depend on the weights) with
    vaelab's mixture log-density and with MixtureSameFamily's, chunks sized for each."""
    cfg = load_preset("gmvae")
    cfg.model.x_dim, cfg.model.image_shape = x.shape[1], [1, 28, 28]
    torch.manual_seed(0)
    gmvae = build_model(cfg.model).eval()
    speeds = {"gmvae-default": iwae_speed(gmvae, x, k, DEFAULT_BUDGET)}
    with patched(priors.DiagonalGaussianMixture, "log_prob", MixtureSameFamily.log_prob), \
            patched(priors.MixtureOfGaussiansPrior, "elements_per_sample", lambda self: self.components * self.z_pre.shape[2]):
        speeds["gmvae-mixture-same-family"] = iwae_speed(gmvae, x, k, DEFAULT_BUDGET)
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--variants", default="default,adam-foreach,torch-bernoulli,bernoulli-draw,threads-1,bf16,compile")
    parser.add_argument("--out", type=Path, default=Path("bench/results/ablations.json"))
    args = parser.parse_args()
    names = [name for name in args.variants.split(",") if name]
    results = {"machine": provenance(), "steps": args.steps, "repeats": args.repeats, "training_images_per_second": {},
               "iwae_samples_per_second": {}}
    speeds = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        # An untimed eager run: warms up and trains the model for the IWAE cases, which are measured
        # before anything is compiled in this process (compiling slowed later eager kernels by ~20%).
        _, run_dir = vaelab_loop(args.data_dir, args.steps, 0, workdir, {})
        model, _ = load_run(run_dir, torch.device("cpu"))
        model.eval()
        test = data_mod.load("mnist", "test", args.data_dir, "cpu", False)
        x = data_mod.binarized_test_set(test)[: args.images]
        cases = [("default", DEFAULT_BUDGET), ("torch-bernoulli", DEFAULT_BUDGET)]
        cases += [(f"budget-2^{p}", 1 << p) for p in (18, 20, 22, 24, 26)]
        for name, budget in cases:
            with variant(name if name == "torch-bernoulli" else "default"):
                speed = iwae_speed(model, x, args.k, budget)
            results["iwae_samples_per_second"][name] = round(speed)
            print(f"iwae  {name:16s} budget {budget:>9d}: {speed:10.0f} samples/s", flush=True)
        for name, speed in gmvae_iwae_speeds(x, args.k).items():
            results["iwae_samples_per_second"][name] = round(speed)
            print(f"iwae  {name:26s}: {speed:10.0f} samples/s", flush=True)
        if "compile" in names:  # compile once, untimed; the measured runs reuse the compiled code
            vaelab_loop(args.data_dir, 50, 0, workdir, {"compile": True})
        for r in range(args.repeats):
            for name in names:
                with variant(name) as settings:
                    speed, _ = vaelab_loop(args.data_dir, args.steps, 0, workdir, settings)
                speeds[name].append(speed)
                print(f"train {name:16s} repeat {r}: {speed:8.0f} images/s", flush=True)
        results["training_images_per_second"] = {n: round(statistics.median(v), 1) for n, v in speeds.items()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
