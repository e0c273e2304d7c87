"""The tables of experiments/disentanglement, from each run directory's eval-full.json, eval-disentanglement.json and summary.json:
per model the mean and the range over seeds (the value alone for one seed) of reconstruction, KL, active units and the metrics; then one row per
run (the spread over seeds is the point of docs/reference.md section 3).

  python experiments/disentanglement/table.py [experiments/disentanglement]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {"vae": "VAE (beta = 1)", "beta4": "beta-VAE, beta = 4", "beta16": "beta-VAE, beta = 16", "conv_beta4": "beta-VAE, beta = 4, conv"}
COLUMNS = [("Rec", "full", "rec", 1), ("KL", "full", "kl", 1), ("active units", "full", "active_units", 1),
           ("beta-VAE metric", "dis", "beta_vae", 3), ("FactorVAE metric", "dis", "factor_vae", 3), ("MIG", "dis", "mig", 3),
           ("DCI disentanglement", "dis", "dci_disentanglement", 3), ("DCI informativeness", "dis", "dci_informativeness", 3),
           ("train s", "summary", "train_seconds", 0), ("metrics s", "dis", "seconds", 0)]


def results(root: Path, name: str) -> list[tuple[str, dict]]:
    runs = sorted(p for p in root.glob(f"{name}-seed*") if (p / "eval-disentanglement.json").is_file())
    return [(p.name, {"full": json.loads((p / "eval-full.json").read_text()), "dis": json.loads((p / "eval-disentanglement.json").read_text()),
                      "summary": json.loads((p / "summary.json").read_text())}) for p in runs]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    header = " | ".join(title for title, *_ in COLUMNS)
    print(f"| model | seeds | {header} |")
    print("|---|---|" + "---|" * len(COLUMNS))
    found_by_name = {name: results(root, name) for name in ROWS}
    for name, label in ROWS.items():
        found = found_by_name[name]
        if not found:
            print(f"| {label} | not run |" + " |" * len(COLUMNS))
            continue
        cells = []
        for _, source, key, digits in COLUMNS:
            values = [r[source][key] for _, r in found]
            mean = f"{sum(values) / len(values):.{digits}f}"
            cells.append(mean if len(values) == 1 else f"{mean} ({min(values):.{digits}f}-{max(values):.{digits}f})")
        print(f"| {label} | {len(found)} | " + " | ".join(cells) + " |")
    print()
    print(f"| run | {header} | MIG per factor (shape, scale, orientation, x, y) |")
    print("|---|" + "---|" * (len(COLUMNS) + 1))
    for found in found_by_name.values():
        for run, r in found:
            cells = [f"{r[source][key]:.{digits}f}" if isinstance(r[source][key], float) else str(r[source][key])
                     for _, source, key, digits in COLUMNS]
            print(f"| {run} | " + " | ".join(cells) + " | " + ", ".join(f"{g:.3f}" for g in r["dis"]["mig_per_factor"]) + " |")


if __name__ == "__main__":
    main()
