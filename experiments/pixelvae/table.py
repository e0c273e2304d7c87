"""The tables of experiments/pixelvae: NLL against the conv VAE and the papers, and posterior collapse.

  python experiments/pixelvae/table.py [experiments/pixelvae]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # experiments/, for runs_table
from runs_table import print_table  # noqa: E402

NLL_ROWS = {"conv_vae": "conv VAE (z = 10)", "pixelvae": "PixelVAE (3 PixelCNN layers)", "vlae": "VLAE (AF prior, 2 layers)"}
COLLAPSE_ROWS = {"deep_elbo": "12 layers, plain ELBO", "deep_warmup": "12 layers, KL annealing (10,000 steps)",
                 "deep_freebits": "12 layers, free bits 0.25 nats / dim", "pixelvae": "3 layers (restricted receptive field)"}


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent)
    print_table(root, ["model", "-IWAE-1000 (s.e.)", "NELBO", "KL", "train s", "device"], NLL_ROWS,
                lambda e, s, folder: [f"**{e['niwae_1000']:.2f}** ({e['niwae_1000_sem']:.2f})", f"{e['nelbo']:.2f}", f"{e['kl']:.2f}",
                                      f"{s['train_seconds']:.0f}", s.get("device", "")])
    print()
    print_table(root, ["PixelCNN decoder", "KL", "I(x; z)", "active units", "-IWAE-1000 (s.e.)"], COLLAPSE_ROWS,
                lambda e, s, folder: [f"{e['kl']:.2f}", f"{e['mutual_information']:.2f}", f"{e['active_units']} / {e['z_dim']}",
                                      f"{e['niwae_1000']:.2f} ({e['niwae_1000_sem']:.2f})"])


if __name__ == "__main__":
    main()
