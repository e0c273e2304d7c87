"""The tables of experiments/pixelvae: NLL against the conv VAE and the papers, and posterior collapse.

  python experiments/pixelvae/table.py [experiments/pixelvae]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NLL_ROWS = {"conv_vae": "conv VAE (z = 10)", "pixelvae": "PixelVAE (3 PixelCNN layers)", "vlae": "VLAE (AF prior, 2 layers)"}
COLLAPSE_ROWS = {"deep_elbo": "12 layers, plain ELBO", "deep_warmup": "12 layers, KL annealing (10,000 steps)",
                 "deep_freebits": "12 layers, free bits 0.25 nats / dim", "pixelvae": "3 layers (restricted receptive field)"}


def _table(root: Path, header: list[str], rows: dict, cells) -> None:
    """One Markdown table: a row per run name whose eval-full.json exists (cells(eval, summary) -> its cells)."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, label in rows.items():
        if not (root / name / "eval-full.json").is_file():
            print(f"| {label} | not run |" + " |" * (len(header) - 2))
            continue
        e = json.loads((root / name / "eval-full.json").read_text())
        s = json.loads((root / name / "summary.json").read_text())
        print(f"| {label} | " + " | ".join(cells(e, s)) + " |")


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    _table(root, ["model", "-IWAE-1000 (s.e.)", "NELBO", "KL", "train s", "device"], NLL_ROWS,
           lambda e, s: [f"**{e['niwae_1000']:.2f}** ({e['niwae_1000_sem']:.2f})", f"{e['nelbo']:.2f}", f"{e['kl']:.2f}",
                         f"{s['train_seconds']:.0f}", s.get("device", "")])
    print()
    _table(root, ["PixelCNN decoder", "KL", "I(x; z)", "active units", "-IWAE-1000 (s.e.)"], COLLAPSE_ROWS,
           lambda e, s: [f"{e['kl']:.2f}", f"{e['mutual_information']:.2f}", f"{e['active_units']} / {e['z_dim']}",
                         f"{e['niwae_1000']:.2f} ({e['niwae_1000_sem']:.2f})"])


if __name__ == "__main__":
    main()
