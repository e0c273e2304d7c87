"""Where the time goes: torch.profiler tables for vaelab's training step and its IWAE evaluation.

  python bench/profile_ops.py --data-dir DATA [--what train|iwae] [--steps 200] [--k 1000] [--images 20]

Prints the operators by self CPU time. docs/performance.md records what these tables showed and
what was changed because of them.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from vaelab import data as data_mod
from vaelab.training.config import load_preset
from vaelab.evaluation import iwae_per_image
from vaelab.models import build_model
from vaelab.training.batches import Batches
from vaelab.training.loop import training_loss
from vaelab.training.optimizers import make_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--what", choices=("train", "iwae"), default="train")
    parser.add_argument("--preset", default="vae")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rows", type=int, default=25)
    args = parser.parse_args()

    cfg = load_preset(args.preset)
    device = torch.device("cpu")
    train_set = data_mod.load(cfg.data.dataset, "train", args.data_dir, device, False)
    cfg.model.x_dim, cfg.model.image_shape = train_set.x_dim, train_set.image_shape
    torch.manual_seed(0)
    model = build_model(cfg.model)
    if args.what == "train":
        batches = Batches(train_set, cfg, model.spec.labels, model.binary_pixels, device)
        optimizer = make_optimizer(model, cfg.train, device)

        def work():
            for _ in range(args.steps):
                out = training_loss(model, batches.next(), cfg, 1.0)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
    else:
        test = data_mod.load(cfg.data.dataset, "test", args.data_dir, device, False)
        x = data_mod.binarized_test_set(test)[: args.images]
        model.eval()

        def work():
            iwae_per_image(model, x, args.k)

    work()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
