"""The table of experiments/hierarchical: one row per run directory's eval-full.json and summary.json, with KL and
active units per layer.

  python experiments/hierarchical/table.py [experiments/hierarchical]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, for runs_table
from runs_table import print_table  # noqa: E402

# The one-layer row is experiments/priors_flows' standard VAE: the same settings (MLPs 300-300, z = 40, N(0, I), 30,000
# steps, seed 0), trained there at commit d388615 (`hvae --set model.z_dims=40` is the same model: tests/test_hvae.py).
ROWS = {"../priors_flows/normal": "one layer (z = 40)", "bottom_up": "two layers, bottom-up", "ladder": "two layers, ladder",
        "ladder_warmup": "two layers, ladder, KL warm-up 10,000 steps", "vamp": "two layers, bottom-up, VampPrior on z2"}


def _cells(e: dict, s: dict, folder: Path) -> list[str]:
    # One layer: its only group is z1; the keys carry no group name then.
    kl = [e.get("kl_z1", e["kl"]), e.get("kl_z2")]
    units = [e.get("active_units_z1", e["active_units"]), e.get("active_units_z2")]
    # KL per dimension: for ladder inference E_q[z1] follows the top-down prior mean, so the variance criterion
    # counts dimensions as active that carry almost no information; the KL does not
    per_dim = [e.get(f"per_dimension_kl_{g}", e.get("per_dimension_kl") if g == "z1" else None) for g in ("z1", "z2")]
    two = kl[1] is not None
    kl_active = ", ".join("-" if d is None else str(sum(v > 0.01 for v in d)) for d in per_dim[: 2 if two else 1])
    return [f"**{e['niwae_5000']:.2f}** ({e['niwae_5000_sem']:.2f})", f"{e['nelbo']:.2f}", f"{kl[0]:.2f}", f"{kl[1]:.2f}" if two else "",
            f"{units[0]} / 40", f"{units[1]} / 40" if two else "", kl_active, f"{s['train_seconds']:.0f}", f"{e['seconds']:.0f}"]


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print_table(root, ["model", "-IWAE-5000 (s.e.)", "NELBO", "KL z1", "KL z2", "active units z1", "active units z2",
                       "dims with KL > 0.01 (z1, z2)", "train s", "eval s"], ROWS, _cells)


if __name__ == "__main__":
    main()
