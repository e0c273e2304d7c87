"""What vaelab's own code costs per training step, measured finely enough to see it on a noisy machine.

  python bench/step_overhead.py --data-dir DATA [--steps 1500] [--out FILE]

Runs one step of each contender in turn, `--steps` times, and reports each one's median step time:
the load of this shared machine drifts over seconds, so interleaving single steps cancels most of
it where bench.py's whole runs cannot. The contenders, all on the reference VAE (batch 100):

  vaelab        the step vaelab.training.loop runs: Batches.next, training_loss, backward, the non-finite
                check, fused Adam, the logged values (without the progress bar and log writes)
  plain         bench.py's plain loop step (torch.bernoulli draw, torch's default Adam)
  plain_tuned   the same with vaelab's two speed choices (the 1[u < pixel] draw, fused Adam)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from vaelab import data as data_mod
from vaelab.training.config import load_preset
from vaelab.models import build_model
from vaelab.training.runs import provenance
from vaelab.training.batches import Batches
from vaelab.training.loop import gradients_finite, training_loss
from vaelab.training.optimizers import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BATCH, plain_step  # noqa: E402  (the benchmark's own plain loop)


def vaelab_step(train_set: data_mod.ImageSet):
    cfg = load_preset("vae")
    cfg.model.x_dim, cfg.model.image_shape = train_set.x_dim, train_set.image_shape
    model = build_model(cfg.model)
    optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))
    batches = Batches(train_set, cfg, model.spec.labels, model.binary_pixels, torch.device("cpu"))
    parameters = list(model.parameters())

    def step():
        out = training_loss(model, batches.next(), cfg, 1.0)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if bool(torch.isfinite(out.loss.detach()) & gradients_finite(parameters)):
            optimizer.step()
        torch.stack([out.loss.detach(), out.nelbo, out.kl, out.rec])

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=1500, help="steps of each contender, interleaved (default 1500)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here as JSON")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_set = data_mod.load("mnist", "train", args.data_dir, "cpu", False)
    pixels = train_set.pixels()
    n = pixels.shape[0]
    plain, plain_tuned = plain_step(pixels, tuned=False), plain_step(pixels, tuned=True)
    contenders = {"vaelab": vaelab_step(train_set), "plain": lambda: plain(torch.randint(n, (BATCH,))),
                  "plain_tuned": lambda: plain_tuned(torch.randint(n, (BATCH,)))}
    for step in contenders.values():  # warm-up, untimed
        for _ in range(30):
            step()
    seconds = {name: [] for name in contenders}
    for _ in range(args.steps):
        for name, step in contenders.items():
            start = time.perf_counter()
            step()
            seconds[name].append(time.perf_counter() - start)
    # Rounded before the ratios, so the ratios follow from the medians as stored (as in bench.py).
    medians = {name: round(statistics.median(times) * 1e3, 3) for name, times in seconds.items()}
    results = {"machine": provenance(), "steps": args.steps, "median_ms_per_step": medians,
               "ratios": {f"vaelab/{other}": round(medians[other] / medians["vaelab"], 3) for other in ("plain", "plain_tuned")}}
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
