"""The loop every experiment's table.py shares: one Markdown row per run folder holding eval-full.json and summary.json,
"not run" for the others. Table scripts import it with their parent folder on sys.path."""

from __future__ import annotations

import json
from pathlib import Path


def print_table(root: Path, header: list[str], rows: dict[str, str], cells) -> None:
    """rows: folder (relative to root) -> row label; cells(eval, summary, folder) -> the row's other cells."""
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, label in rows.items():
        folder = root / name
        if not (folder / "eval-full.json").is_file():
            print(f"| {label} | not run |" + " |" * (len(header) - 2))
            continue
        e = json.loads((folder / "eval-full.json").read_text())
        s = json.loads((folder / "summary.json").read_text())
        print(f"| {label} | " + " | ".join(cells(e, s, folder)) + " |")
