"""Codebook use during training, with and without code restarts: perplexity and share of codes chosen in each logged
batch, from the runs' metrics.jsonl. Writes experiments/vqvae/usage.png.

  python experiments/vqvae/usage.py [experiments/vqvae]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RUNS = {"mnist": "MNIST, restarts", "mnist_norestart": "MNIST, no restarts", "fashion": "Fashion-MNIST, restarts",
        "fashion_norestart": "Fashion-MNIST, no restarts"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, label in RUNS.items():
        path = root / name / "metrics.jsonl"
        if not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        steps = [r["step"] for r in rows]
        left.plot(steps, [r["perplexity"] for r in rows], label=label)
        right.plot(steps, [100 * r["codes_used"] for r in rows], label=label)
    left.set(xlabel="training step", ylabel="codebook perplexity (of 128 codes)", title="perplexity of each batch's codes")
    right.set(xlabel="training step", ylabel="% of codes chosen in the batch", title="codes in use")
    left.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(root / "usage.png", dpi=120)
    print(f"wrote {root / 'usage.png'}")


if __name__ == "__main__":
    main()
