"""The table of experiments/disentanglement: per model, the mean and the range over seeds of reconstruction, KL and
the four metrics, from each run directory's eval-full.json and eval-disentanglement.json.

  python experiments/disentanglement/table.py [experiments/disentanglement]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {"vae": "VAE (beta = 1)", "beta4": "beta-VAE, beta = 4", "beta16": "beta-VAE, beta = 16", "conv_beta4": "beta-VAE, beta = 4, conv"}
COLUMNS = [("full", "rec"), ("full", "kl"), ("dis", "beta_vae"), ("dis", "factor_vae"), ("dis", "mig"), ("dis", "dci_disentanglement")]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print("| model | seeds | Rec | KL | beta-VAE metric | FactorVAE metric | MIG | DCI disentanglement |")
    print("|---|---|---|---|---|---|---|---|")
    for name, label in ROWS.items():
        runs = sorted(p for p in root.glob(f"{name}-seed*") if (p / "eval-disentanglement.json").is_file())
        if not runs:
            print(f"| {label} | not run | | | | | | |")
            continue
        results = [{"full": json.loads((p / "eval-full.json").read_text()), "dis": json.loads((p / "eval-disentanglement.json").read_text())}
                   for p in runs]
        cells = []
        for source, key in COLUMNS:
            values = [r[source][key] for r in results]
            digits = 1 if source == "full" else 3
            cells.append(f"{sum(values) / len(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})")
        print(f"| {label} | {len(runs)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
