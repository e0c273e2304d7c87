"""Tables and reports across runs (vaelab compare)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import RunDirError, VaelabError
from ..training.config import RunConfig
from ..training.legacy import migrate_legacy
from ..training.files import read_jsonl
from ..training.runs import CONFIG_FILE, METRICS_FILE, SUMMARY_FILE
from .figures import training_curves

EVAL_KEYS = ("nelbo", "kl", "rec", "niwae_1", "niwae_10", "niwae_100", "niwae_1000", "niwae_5000", "accuracy", "active_units",
             "mutual_information", "marginal_kl", "codebook_perplexity", "codes_in_use")


def describe(cfg: dict) -> str:
    """A short description of a run's settings: the model, then every model and objective setting that
    differs from that model's defaults, e.g. 'vae, prior mog, ELBO, z=10, mnist'."""
    m, o = cfg["model"], cfg["objective"]
    label = cfg.get("train", {}).get("label") or m["name"]
    parts = [label if label == m["name"] else f"{label} ({m['name']}"]
    try:
        resolved = RunConfig.from_dict(migrate_legacy(cfg), source="config.json")
        defaults = RunConfig.from_dict({"model": {"name": m["name"]}})
    except VaelabError:
        resolved = defaults = None
    if resolved is not None:
        for key, value in vars(resolved.model).items():
            if key not in ("name", "x_dim", "image_shape", "z_dim") and value != getattr(defaults.model, key):
                parts.append(f"{key} {','.join(map(str, value)) if isinstance(value, tuple) else value}")
        for key in ("beta", "kl_warmup_steps", "free_bits", "free_bits_group"):
            if getattr(resolved.objective, key) != getattr(defaults.objective, key):
                parts.append(f"{key} {getattr(resolved.objective, key)}")
    parts.append(f"IWAE k={o['k']}" if o["kind"] == "iwae" else "ELBO")
    parts.append(f"z={m['z_dim']}, {cfg['data']['dataset']}")
    return ", ".join(parts) + (")" if label != m["name"] else "")


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
        groups = sorted(key for key in result if key.startswith(("kl_", "active_units_")))
        for key in (*EVAL_KEYS, *groups):
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
