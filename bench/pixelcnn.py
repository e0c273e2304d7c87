"""The PixelCNN decoder's speed on the CPU, before and after: bench/pixelcnn_reference.py (a frozen copy of the
implementation the current one replaced) against vaelab.distributions.pixelcnn, same weights, one process.

  OMP_NUM_THREADS=1 python bench/pixelcnn.py [--data-dir DATA] [--steps 40] [--images 10] [--iw 200]
                                             [--eval-repeats 3] [--samples 100] [--reference-pixels 784] [--out FILE]

The model: the pixelvae preset (conv VAE, z = 32, 3 gated layers of 32 channels, ELBO, batch 100), built from seed 0;
"before" is a copy of it whose likelihood is the reference module, loaded from the same state dict (the parameter
names are unchanged).

  training     one step as vaelab.training.loop runs it (training_loss, backward, fused Adam) of each model on the
               same batch, the order alternating, `--steps` times; images/s = batch / median step time.
  evaluation   vaelab.evaluation.iwae_per_image (IWAE-`--iw`: the one-pass density of every draw, in chunks, under
               inference mode) of both on `--images` test images, alternating, `--eval-repeats` times; importance
               samples/s = images * iw / median seconds. The bounds must agree.
  --bf16       adds a third contender to training and evaluation: "after" under bfloat16 autocast (`--precision bf16`:
               the networks in bf16, densities and log-weights in float32), from the same weights; its bound's
               difference from the float32 one is printed.
  sampling     model.sample(`--samples`), the grid `vaelab sample` draws, from seed 0: after, before, after; seconds.
               The reference recomputes the whole image for each of the 784 pixels (minutes): `--reference-pixels N`
               times its first N pixels and scales to 784 (a pass costs the same at every pixel). With all 784 the
               two grids (each pixel's probability along the draw) are compared: same seed, same draws.

Prints JSON and writes it to --out (default bench/results/pixelcnn-DATE.json), with the load average before and after
each part (a shared machine: compare the two columns of one run, not numbers across runs).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import json
import os
import statistics
import time
from pathlib import Path

import torch

from vaelab import data as data_mod
from vaelab.devices import matmul_precision
from vaelab.evaluation import iwae_per_image
from vaelab.models import build_model
from vaelab.training.config import load_preset
from vaelab.training.loop import training_loss
from vaelab.training.optimizers import make_optimizer
from vaelab.training.runs import provenance

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("pixelcnn_reference", HERE / "pixelcnn_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def models(cfg) -> dict:
    """"after" (the preset's model) and "before" (the same weights, the reference likelihood)."""
    torch.manual_seed(0)
    after = build_model(cfg.model)
    before = copy.deepcopy(after)
    old = reference.PixelCNNLikelihood(cfg.model.image_shape, cfg.model.pixel_layers, cfg.model.pixel_channels)
    old.load_state_dict(before.observation.state_dict())
    before.observation = old
    return {"before": before, "after": after}


def autocast(name: str):
    """The precision vaelab's --precision runs: bf16 for the bf16 contender, fp32 for the others."""
    return matmul_precision(torch.device("cpu"), "bf16" if name.endswith("bf16") else "fp32")


def training(cfg, contenders: dict, train: torch.Tensor, steps: int) -> dict:
    batch = cfg.train.batch_size
    steppers = {}
    for name, model in contenders.items():
        model.train()
        optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))

        def step(x, model=model, optimizer=optimizer, name=name):
            with autocast(name):
                out = training_loss(model, {"x": x}, cfg, 1.0)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()

        steppers[name] = step
    seconds = {name: [] for name in steppers}
    start_load = load()
    for i in range(steps + 3):  # 3 untimed warm-up rounds
        x = data_mod.binarize_batch(train[torch.randint(train.shape[0], (batch,))])
        for name in sorted(steppers, reverse=i % 2 == 1):
            start = time.perf_counter()
            steppers[name](x)
            if i >= 3:
                seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in seconds.items()}
    return {"images_per_second": {name: round(batch / m, 1) for name, m in medians.items()},
            "median_ms_per_step": {name: round(m * 1e3, 1) for name, m in medians.items()},
            "ms_per_step_all": {name: [round(t * 1e3, 1) for t in ts] for name, ts in seconds.items()},
            **{f"{name}_over_before": round(medians["before"] / medians[name], 2) for name in medians if name != "before"},
            "steps": steps, "batch": batch,
            "load_before_after": [start_load, load()]}


def evaluation(contenders: dict, x: torch.Tensor, iw: int, repeats: int) -> dict:
    for name in contenders:  # the same weights (training moved each)
        if name != "after":
            contenders[name].load_state_dict(contenders["after"].state_dict())
    seconds, bounds = {name: [] for name in contenders}, {}
    start_load = load()
    for i in range(repeats):
        for name in sorted(contenders, reverse=i % 2 == 1):
            contenders[name].eval()
            torch.manual_seed(0)
            start = time.perf_counter()
            with autocast(name):
                bounds[name] = iwae_per_image(contenders[name], x, iw)
            seconds[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in seconds.items()}
    points = x.shape[0] * iw
    return {"importance_samples_per_second": {name: round(points / m, 1) for name, m in medians.items()},
            "median_seconds": {name: round(m, 3) for name, m in medians.items()},
            "seconds_all": {name: [round(t, 3) for t in ts] for name, ts in seconds.items()},
            **{f"{name}_over_before": round(medians["before"] / medians[name], 2) for name in medians if name != "before"},
            "images": x.shape[0], "iw": iw, "iwae_nats": {name: round(float(b.mean()), 4) for name, b in bounds.items()},
            **{f"largest_bound_difference_{name}": float((bounds[name] - bounds["after"]).abs().max()) for name in bounds if name != "after"},
            "load_before_after": [start_load, load()]}


@torch.no_grad()
def reference_pixels(model, n: int, pixels: int) -> torch.Tensor:
    """The reference sampler's first `pixels` passes, as its _autoregress runs them (for a timing)."""
    p = model.likelihood(model.sample_codes(n)["z"])
    x = torch.zeros(p._extended_shape(), dtype=p.conditioning.dtype)
    for i in range(pixels):
        x[..., i] = torch.bernoulli(torch.sigmoid(p._logits(x)[..., i]))
    return x


def sampling(contenders: dict, n: int, pixels: int) -> dict:
    contenders = {name: contenders[name] for name in ("before", "after")}
    for model in contenders.values():
        model.eval()
    total = contenders["after"].config.x_dim
    start_load, seconds, images = load(), {"after": [], "before": []}, {}
    for name in ("after", "before", "after"):
        torch.manual_seed(0)
        start = time.perf_counter()
        if name == "before" and pixels < total:
            reference_pixels(contenders[name], n, pixels)
            seconds[name].append((time.perf_counter() - start) * total / pixels)
        else:
            images[name] = contenders[name].sample(n)
            seconds[name].append(time.perf_counter() - start)
    result = {"seconds": {name: round(statistics.median(t), 2) for name, t in seconds.items()},
              "seconds_all": {name: [round(t, 2) for t in ts] for name, ts in seconds.items()}, "images": n,
              "reference_pixels_timed": pixels, "load_before_after": [start_load, load()]}
    result["after_over_before"] = round(result["seconds"]["before"] / result["seconds"]["after"], 1)
    if "before" in images:  # sample() gives each pixel's probability along the draw: a draw that went otherwise shows
        result["largest_difference_between_the_grids"] = float((images["before"] - images["after"]).abs().max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="MNIST here (else random pixels of the same shape)")
    parser.add_argument("--steps", type=int, default=40, help="timed training steps of each (default 40)")
    parser.add_argument("--images", type=int, default=10, help="test images the IWAE bound is computed for (default 10)")
    parser.add_argument("--iw", type=int, default=200, help="importance samples per image (default 200)")
    parser.add_argument("--eval-repeats", type=int, default=3, help="timings of each evaluation (default 3)")
    parser.add_argument("--samples", type=int, default=100, help="images in the sampled grid (default 100)")
    parser.add_argument("--reference-pixels", type=int, default=784, help="pixels of the reference's sampling timed (default all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--bf16", action="store_true", help="also time the current network under bf16 autocast")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_preset("pixelvae")
    if args.data_dir:
        train = data_mod.load("mnist", "train", args.data_dir, "cpu", False)
        test = data_mod.load("mnist", "test", args.data_dir, "cpu", False)
        cfg.model.x_dim, cfg.model.image_shape = train.x_dim, train.image_shape
        images = train.uint8()
        pixels, x = images.reshape(images.shape[0], -1), data_mod.binarized_test_set(test)[: args.images]
        source = "mnist"
    else:
        cfg.model.x_dim, cfg.model.image_shape = 784, (28, 28)
        pixels = torch.randint(256, (60000, 784), dtype=torch.uint8)
        x = (torch.rand(args.images, 784, generator=torch.Generator().manual_seed(0)) < 0.13).float()
        source = "random pixels"
    contenders = models(cfg)
    if args.bf16:
        contenders["after_bf16"] = copy.deepcopy(contenders["after"])
    results = {"machine": provenance(), "date": datetime.date.today().isoformat(), "data": source,
               "settings": {"preset": "pixelvae", "pixel_layers": cfg.model.pixel_layers,
                            "pixel_channels": cfg.model.pixel_channels, "threads": torch.get_num_threads(),
                            "bf16": args.bf16},
               "training": training(cfg, contenders, pixels, args.steps),
               "evaluation": evaluation(contenders, x, args.iw, args.eval_repeats),
               "sampling": sampling(contenders, args.samples, min(args.reference_pixels, cfg.model.x_dim))}
    text = json.dumps(results, indent=2)
    print(text)
    out = args.out or HERE / "results" / f"pixelcnn-{results['date']}.json"
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
