"""The table of experiments/priors_flows: one row per run directory's eval-full.json and summary.json.

  python experiments/priors_flows/table.py [experiments/priors_flows]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = {"normal": "standard prior N(0, I)", "vamp": "VampPrior (K = 500)", "iaf": "IAF posterior (2 steps)", "af": "AF prior (2 steps)"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print("| model | -IWAE-5000 (s.e.) | NELBO | KL | Rec | I(x; z) | marginal KL | active units | train s | eval s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label in ROWS.items():
        if not (root / name / "eval-full.json").is_file():
            print(f"| {label} | not run | | | | | | | | |")
            continue
        e = json.loads((root / name / "eval-full.json").read_text())
        s = json.loads((root / name / "summary.json").read_text())
        surgery, mark = e, ""
        if (root / name / "eval-diagnostics.json").is_file():  # ELBO surgery measured again (see README.md)
            surgery, mark = json.loads((root / name / "eval-diagnostics.json").read_text()), " *"
        print(f"| {label} | **{e['niwae_5000']:.2f}** ({e['niwae_5000_sem']:.2f}) | {e['nelbo']:.2f} | {e['kl']:.2f} | {e['rec']:.2f} | "
              f"{surgery['mutual_information']:.2f}{mark} | {surgery['marginal_kl']:.2f}{mark} | {e['active_units']} / {e['z_dim']} | "
              f"{s['train_seconds']:.0f} | {e['seconds']:.0f} |")


if __name__ == "__main__":
    main()
