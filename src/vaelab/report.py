"""Tables and reports across runs (vaelab compare)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .errors import RunDirError
from .runs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, read_jsonl
from .viz import training_curves

EVAL_KEYS = ("nelbo", "kl", "rec", "niwae_1", "niwae_10", "niwae_100", "niwae_1000", "niwae_5000", "accuracy", "active_units")


def describe(cfg: dict) -> str:
    """A short description of a run's settings, e.g. 'vae, prior mog (K=500), diagonal, ELBO'."""
    m, o = cfg["model"], cfg["objective"]
    parts = [m["name"]]
    if m.get("prior", "normal") != "normal":
        parts.append(f"prior {m['prior']} (K={m['prior_components']})")
    if m.get("posterior", "diagonal") != "diagonal":
        parts.append(f"{m['posterior']} posterior")
    if m.get("likelihood", "bernoulli") != "bernoulli":
        parts.append(f"{m['likelihood']} likelihood")
    if m["name"] == "ssvae":
        parts.append(f"gen_weight {o.get('gen_weight', 1)}")
    else:
        parts.append(f"IWAE k={o['k']}" if o["kind"] == "iwae" else "ELBO")
    if o.get("beta", 1) != 1:
        parts.append(f"beta {o['beta']}")
    if o.get("kl_warmup_steps", 0):
        parts.append(f"KL warm-up {o['kl_warmup_steps']}")
    if o.get("free_bits", 0):
        parts.append(f"free bits {o['free_bits']}")
    parts.append(f"z={m['z_dim']}, {cfg['data']['dataset']}")
    return ", ".join(parts)


def run_row(run_dir: Path) -> dict:
    """Settings, timing, final training metrics and evaluations of one run directory."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_FILE}; not a vaelab run directory")
    cfg = json.loads((run_dir / CONFIG_FILE).read_text())
    row = {"run": run_dir.name, "setting": describe(cfg), "steps": cfg["train"]["steps"], "seed": cfg["train"]["seed"]}
    if (run_dir / SUMMARY_FILE).is_file():
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        row["train_seconds"] = summary.get("train_seconds")
        row["train_nelbo"] = summary.get("final", {}).get("nelbo")
    for path in sorted(run_dir.glob("eval-*.json")):
        result = json.loads(path.read_text())
        for key in EVAL_KEYS:
            if key in result:
                row[f"{result['protocol']}.{key}"] = result[key]
    return row


def _fmt(value, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if column.endswith("accuracy") else f"{value:.2f}"
    return str(value)


def compare_runs(run_dirs, out_dir: Path) -> str:
    """Write compare.md, compare.csv and curves.png for the runs; return the markdown table."""
    rows = [run_row(d) for d in run_dirs]
    columns = list(dict.fromkeys(key for row in rows for key in row))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in columns) + " |" for row in rows]
    table = "\n".join(lines)
    (out_dir / "compare.md").write_text(table + "\n")
    with open(out_dir / "compare.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    training_curves({Path(d).name: read_jsonl(Path(d) / METRICS_FILE) for d in run_dirs}, out_dir / "curves.png")
    return table
