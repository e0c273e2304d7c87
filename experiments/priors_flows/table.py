"""The table of experiments/priors_flows: one row per run directory's eval-full.json and summary.json.

  python experiments/priors_flows/table.py [experiments/priors_flows]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, for runs_table
from runs_table import print_table  # noqa: E402

ROWS = {"normal": "standard prior N(0, I)", "vamp": "VampPrior (K = 500)", "iaf": "IAF posterior (2 steps)", "af": "AF prior (2 steps)"}


def _cells(e: dict, s: dict, folder: Path) -> list[str]:
    surgery, mark = e, ""
    if (folder / "eval-diagnostics.json").is_file():  # ELBO surgery measured again (see README.md)
        surgery, mark = json.loads((folder / "eval-diagnostics.json").read_text()), " *"
    return [f"**{e['niwae_5000']:.2f}** ({e['niwae_5000_sem']:.2f})", f"{e['nelbo']:.2f}", f"{e['kl']:.2f}", f"{e['rec']:.2f}",
            f"{surgery['mutual_information']:.2f}{mark}", f"{surgery['marginal_kl']:.2f}{mark}", f"{e['active_units']} / {e['z_dim']}",
            f"{s['train_seconds']:.0f}", f"{e['seconds']:.0f}"]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print_table(root, ["model", "-IWAE-5000 (s.e.)", "NELBO", "KL", "Rec", "I(x; z)", "marginal KL", "active units", "train s", "eval s"],
                ROWS, _cells)


if __name__ == "__main__":
    main()
