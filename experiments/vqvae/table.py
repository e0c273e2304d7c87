"""The table of experiments/vqvae: one row per stage-one run (and its learned prior, where trained), from each run
directory's eval-full.json and summary.json.

  python experiments/vqvae/table.py [experiments/vqvae]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {"mnist": ("MNIST", "on"), "mnist_norestart": ("MNIST", "off"), "fashion": ("Fashion-MNIST", "on"),
        "fashion_norestart": ("Fashion-MNIST", "off")}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print("| data | code restarts | -log p(x \\| e_k) (s.e.) | codebook perplexity | codes in use | bound, uniform codes | "
          "-log p_psi(k) | **bound, learned prior** (s.e.) | train s (stage one + two) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (data, restarts) in ROWS.items():
        if not (root / name / "eval-full.json").is_file():
            print(f"| {data} | {restarts} | not run | | | | | | |")
            continue
        one = json.loads((root / name / "eval-full.json").read_text())
        seconds = json.loads((root / name / "summary.json").read_text())["train_seconds"]
        learned, neg_log_prior, time = "not trained", "", f"{seconds:.0f}"
        if (root / name / "prior" / "eval-full.json").is_file():
            two = json.loads((root / name / "prior" / "eval-full.json").read_text())
            learned = f"**{two['nelbo']:.2f}** ({two['niwae_1_sem']:.2f})"
            neg_log_prior = f"{two['kl']:.2f}"
            time += f" + {json.loads((root / name / 'prior' / 'summary.json').read_text())['train_seconds']:.0f}"
        # rec's standard error: the bound's, since the uniform prior's term is the same constant for every image
        print(f"| {data} | {restarts} | {one['rec']:.2f} ({one['niwae_1_sem']:.2f}) | {one['codebook_perplexity']:.1f} / {one['codebook_size']} | "
              f"{100 * one['codes_in_use']:.1f} % | {one['nelbo']:.2f} | {neg_log_prior} | {learned} | {time} |")


if __name__ == "__main__":
    main()
