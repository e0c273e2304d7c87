"""The tables of the CPU protocol (experiments/pixelvae_cpu.sh): NLL against the conv VAE and the papers, and
posterior collapse, from the run folders it copies into experiments/pixelvae/cpu.

  python experiments/pixelvae/cpu_table.py [experiments/pixelvae/cpu] [SUBSET]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NLL_ROWS = {"conv_vae": ("conv VAE (z = 10)", None),
            "pixelvae_bernoulli": ("PixelVAE's networks, Bernoulli decoder (z = 32, no PixelCNN)", None),
            "pixelvae": ("PixelVAE (3 PixelCNN layers)", "about 79.02 (static, k = 1000; Gulrajani et al. 2017)"),
            "vlae": ("VLAE (AF prior, 2 PixelCNN layers)", "78.53 (dynamic, k = 4096; Chen et al. 2017)")}
COLLAPSE_ROWS = {f"{width}_{how}": f"{layers} layers, {label}" for width, layers in (("narrow", 3), ("wide", 12))
                 for how, label in (("elbo", "plain ELBO"), ("anneal", "KL annealing"), ("freebits", "free bits 0.25 nats / dim"))}


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def nll_table(root: Path, subset: int) -> list[str]:
    header = ["model", f"-IWAE-1000, {subset} images (s.e.)", f"-IWAE-100, {subset} images", "k 100 -> 1000", f"NELBO, {subset} images",
              "NELBO, 10,000 images", "KL", "I(x; z)", "active units", "steps", "training time",
              f"evaluation time ({subset} images)", "published"]
    lines = [_row(header), "|" + "---|" * len(header)]
    for name, (label, paper) in NLL_ROWS.items():
        whole, part, summary = (_read(root / name / f) for f in ("eval-full.json", f"eval-full-{subset}.json", "summary.json"))
        if not (whole and part and summary):
            lines.append(_row([label, "not run"] + [""] * (len(header) - 2)))
            continue
        lines.append(_row([
            label, f"**{part['niwae_1000']:.2f}** ({part['niwae_1000_sem']:.2f})", f"{part['niwae_100']:.2f}",
            f"{part['niwae_1000'] - part['niwae_100']:+.2f}", f"{part['nelbo']:.2f}", f"{whole['nelbo']:.2f}", f"{whole['kl']:.2f}",
            f"{whole['mutual_information']:.2f}", f"{whole['active_units']} / {whole['z_dim']}", summary["steps"],
            f"{summary['train_seconds'] / 60:.0f} min", f"{part['seconds'] / 60:.0f} min", paper or ""]))
    return lines


def collapse_table(root: Path, subset: int) -> list[str]:
    header = ["PixelCNN decoder", f"NELBO, {subset} images", "KL", "I(x; z)", "active units", "steps", "training time"]
    lines = [_row(header), "|" + "---|" * len(header)]
    for name, label in COLLAPSE_ROWS.items():
        part, summary = _read(root / name / f"eval-full-{subset}.json"), _read(root / name / "summary.json")
        if not (part and summary):
            lines.append(_row([label, "not run"] + [""] * (len(header) - 2)))
            continue
        lines.append(_row([label, f"{part['nelbo']:.2f}", f"{part['kl']:.2f}", f"{part['mutual_information']:.2f}",
                           f"{part['active_units']} / {part['z_dim']}", summary["steps"], f"{summary['train_seconds'] / 60:.0f} min"]))
    return lines


def tables(root: Path, subset: int) -> str:
    """The tables of the runs `root` holds (a folder of collapse runs alone gives the collapse table alone)."""
    found = [table for table in (nll_table(root, subset), collapse_table(root, subset))
             if any("not run" not in row for row in table[2:])]
    return "\n\n".join("\n".join(table) for table in found)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parent / "cpu")
    subset = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    print(tables(root, subset))


if __name__ == "__main__":
    main()
