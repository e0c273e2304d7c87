"""Markdown table of full-protocol results from result folders (each with eval-full.json, config.json, summary.json).
Usage: python experiments/table.py DIR [DIR ...]   (missing folders are listed as not run)"""

import json
import sys
from pathlib import Path


def describe(cfg: dict) -> str:
    m, o = cfg["model"], cfg["objective"]
    parts = [f"prior {m['prior']}" + (f" (K={m['prior_components']})" if m["prior"] == "mog" else ""), f"{m['posterior']} posterior"]
    parts.append(f"IWAE k={o['k']}" if o["kind"] == "iwae" else ("ELBO" + (f", beta={o['beta']}" if o["beta"] != 1 else "")))
    return ", ".join(parts)


rows = ["| run | setting | steps | train s | NELBO | KL | Rec | -IWAE-1000 (s.e.) | active units |", "|---|---|---|---|---|---|---|---|---|"]
for folder in map(Path, sys.argv[1:]):
    if not (folder / "eval-full.json").is_file():
        rows.append(f"| {folder.name} | not run | | | | | | | |")
        continue
    ev = json.loads((folder / "eval-full.json").read_text())
    cfg = json.loads((folder / "config.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    rows.append(
        f"| {folder.name} | {describe(cfg)} | {cfg['train']['steps']} | {summary['train_seconds']:.0f} | {ev['nelbo']:.2f} | {ev['kl']:.2f} | "
        f"{ev['rec']:.2f} | {ev['niwae_1000']:.2f} ({ev['niwae_1000_sem']:.2f}) | {ev['active_units']} / {ev['z_dim']} |"
    )
print("\n".join(rows))
