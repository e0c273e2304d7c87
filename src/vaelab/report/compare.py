"""Tables and reports across runs (vaelab compare), and the readers of a run's side files.

Every evaluation records the weights it was computed on (`computed_on`: file, step, sha256). A result
whose weights are no longer the run's (it trained on, or its weights were written again) is stale:
`vaelab compare` leaves its values out of the table, says "stale (step N)" in the protocol's `weights`
column and adds a note saying which file and how to compute it again. A result from before evaluations
recorded their weights is shown, marked "unverified". A side file that is not what vaelab writes
(summary.json `[1, 2]`, an evaluation without its protocol, bytes that are not JSON) is one RunDirError
naming the file.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..errors import RunDirError, VaelabError
from ..training import checkpoints, files
from ..training.config import RunConfig, run_label
from ..training.legacy import migrate_legacy
from ..training.files import read_jsonl
from ..training.runs import BEST_FILE, CONFIG_FILE, METRICS_FILE, SUMMARY_FILE, WEIGHTS_FILE, best_step
from .figures import training_curves

EVAL_KEYS = ("nelbo", "kl", "rec", "niwae_1", "niwae_10", "niwae_100", "niwae_1000", "niwae_5000", "bpd_nelbo", "bpd_niwae_1",
             "bpd_niwae_10", "bpd_niwae_100", "bpd_niwae_1000", "bpd_niwae_5000", "accuracy", "active_units",
             "mutual_information", "marginal_kl", "codebook_perplexity", "codes_in_use")
DISENTANGLEMENT = "disentanglement"
DISENTANGLEMENT_KEYS = ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness")
COMPUTED_ON = "computed_on"  # the key under which an evaluation records the weights it was computed on

NUMBER = (int, float)


# ---------------------------------------------------------------- side files
def read_json_object(path: Path, what: str) -> dict:
    """The JSON object in `path`; anything else (unreadable, not JSON, a list) is one RunDirError naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes())
    except OSError as exc:
        raise RunDirError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise RunDirError(f"{path}: not JSON; not the {what} vaelab writes") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: a JSON {type(data).__name__}, not an object; not the {what} vaelab writes")
    return data


KINDS = {"number": (int, float), "integer": (int,), "string": (str,), "object": (dict,), "list": (list,)}


def _check(path: Path, data: dict, key: str, kind: str, what: str, required: bool = True):
    """data[key] (a dotted path) when it is of `kind` (see KINDS; a bool is not a number); None when absent and
    not required; else one RunDirError naming the file and the key."""
    value = data
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            if required:
                raise RunDirError(f"{path}: no {key!r}; not the {what} vaelab writes")
            return None
        value = value[part]
    if value is None and not required:
        return None
    if not isinstance(value, KINDS[kind]) or isinstance(value, bool):
        raise RunDirError(f"{path}: {key} is {json.dumps(value)[:40]}, not a{'n' if kind[0] in 'aeiou' else ''} {kind}; "
                          f"not the {what} vaelab writes")
    return value


def read_config(path: Path) -> dict:
    """A run's config.json as the dict compare describes: sections of settings with a model name and code size,
    an objective, a dataset, steps and a seed."""
    what = "run configuration"
    data = read_json_object(path, what)
    for key, kind in (("model.name", "string"), ("model.z_dim", "integer"), ("objective.kind", "string"), ("data.dataset", "string"),
                       ("train.steps", "integer"), ("train.seed", "integer")):
        _check(path, data, key, kind, what)
    _check(path, data, "train.label", "string", what, required=False)
    if data["objective"]["kind"] == "iwae":
        _check(path, data, "objective.k", "integer", what)
    return data


def read_summary(path: Path) -> dict:
    """A run's summary.json, checked for the fields compare and reproduce read."""
    what = "training summary"
    data = read_json_object(path, what)
    for key in ("train_seconds", "final.nelbo"):
        _check(path, data, key, "number", what, required=False)
    _check(path, data, "steps", "integer", what, required=False)
    _check(path, data, "final", "object", what, required=False)
    return data


def _read_computed_on(path: Path, data: dict, what: str) -> None:
    if data.get(COMPUTED_ON) is not None:
        _check(path, data, COMPUTED_ON, "object", what)
        _check(path, data, f"{COMPUTED_ON}.weights", "string", what)
        _check(path, data, f"{COMPUTED_ON}.step", "integer", what)
        _check(path, data, f"{COMPUTED_ON}.sha256", "string", what)


def read_eval(path: Path) -> dict:
    """An eval-<protocol>.json: an object naming its protocol, with numbers for the metrics compare shows."""
    path = Path(path)
    what = "evaluation"
    data = read_json_object(path, what)
    if path.name == f"eval-{DISENTANGLEMENT}.json":
        return read_disentanglement(path, data)
    _check(path, data, "protocol", "string", what)
    for key in (*EVAL_KEYS, *_group_keys(data)):
        _check(path, data, key, "number", what, required=False)
    _read_computed_on(path, data, what)
    return data


def read_disentanglement(path: Path, data: dict | None = None) -> dict:
    """An eval-disentanglement.json: its metrics, the factors' names and the matrix I(z_j; v_k) (one row of numbers
    per code dimension, one column per factor) that `vaelab plot --kind traversal` names each row's factor from."""
    path = Path(path)
    what = "disentanglement evaluation"
    data = read_json_object(path, what) if data is None else data
    factors = _check(path, data, "factors", "list", what)
    matrix = _check(path, data, "code_factor_information", "list", what)
    if not all(isinstance(name, str) for name in factors):
        raise RunDirError(f"{path}: factors is not a list of names; not the {what} vaelab writes")
    width = len(factors) or None  # a dataset without factor names still has the matrix, unnamed
    if not all(isinstance(row, list) and row and len(row) == (width or len(row))
               and all(isinstance(v, NUMBER) and not isinstance(v, bool) for v in row) for row in matrix):
        raise RunDirError(f"{path}: code_factor_information is not one row of numbers per code dimension"
                          + (f", one per factor ({width})" if width else "") + f"; not the {what} vaelab writes")
    for key in DISENTANGLEMENT_KEYS:
        _check(path, data, key, "number", what, required=False)
    _read_computed_on(path, data, what)
    return {**data, "protocol": DISENTANGLEMENT}


def _group_keys(result: dict) -> list[str]:
    return sorted(key for key in result if key.startswith(("kl_", "active_units_")))


# ---------------------------------------------------------------- which weights a result belongs to
def current_weights(run_dir: Path) -> dict | None:
    """{"weights", "step", "sha256"} of the weights `vaelab eval` would read now (the best by validation, else the
    final weights, else the newest checkpoint), or None for a run with none. The sha256 comes from manifest.json
    where it records the file at its present size, else the file is hashed."""
    run_dir = Path(run_dir)
    manifest = files.read_manifest(run_dir)
    final, best = run_dir / WEIGHTS_FILE, run_dir / BEST_FILE
    if best.is_file():
        source, step = best, best_step(run_dir)
    elif final.is_file():
        source = final
        summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else {}
        step = summary.get("steps")
        if step is None:  # a run killed between its weights and its summary: they are of its last step
            step = read_config(run_dir / CONFIG_FILE)["train"]["steps"]
    else:
        paths = checkpoints.checkpoint_paths(run_dir)
        if manifest is not None:  # eval skips checkpoints the manifest does not vouch for
            paths = [p for p in paths if _recorded(manifest, run_dir, p) is not None]
        if not paths:
            return None
        source, step = paths[0], checkpoints.step_of(paths[0])
    digest = _recorded(manifest, run_dir, source) if manifest is not None else None
    return {"weights": source.relative_to(run_dir).as_posix(), "step": step, "sha256": digest or files.sha256(source)}


def _recorded(manifest: dict, run_dir: Path, path: Path) -> str | None:
    entry = manifest.get(path.relative_to(run_dir).as_posix())
    return entry["sha256"] if entry is not None and path.stat().st_size == entry["bytes"] else None


def freshness(result: dict, current: dict | None) -> tuple[str, str]:
    """Whether an evaluation belongs to the run's current weights: ("current", "step N"), ("stale", why) or
    ("unverified", why)."""
    recorded = result.get(COMPUTED_ON)
    if recorded is None:
        return "unverified", "does not record the weights it was computed on (written by an earlier vaelab)"
    if current is None:
        return "unverified", f"was computed on step {recorded['step']} weights; the run has no weights left to check them against"
    if recorded["sha256"] == current["sha256"]:
        return "current", f"step {recorded['step']}"
    if recorded["step"] != current["step"]:
        return "stale", f"was computed on step {recorded['step']} weights; the run is now at step {current['step']}"
    return "stale", f"was computed on other step {recorded['step']} weights than the run's ({current['weights']} differs)"


def eval_command(run_dir: Path, result: dict) -> str:
    protocol = result["protocol"]
    subset = f" --images {result['images']}" if "subset_of" in result else ""
    return f"vaelab eval {run_dir} " + ("--disentanglement" if protocol == DISENTANGLEMENT else f"--protocol {protocol}{subset}")


# ---------------------------------------------------------------- the table
def describe(cfg: dict) -> str:
    """A short description of a run's settings: the model, then every model and objective setting that
    differs from that model's defaults, e.g. 'vae, prior mog, ELBO, z=10, mnist'."""
    m, o = cfg["model"], cfg["objective"]
    try:
        resolved = RunConfig.from_dict(migrate_legacy(cfg), source="config.json")
        defaults = RunConfig.from_dict({"model": {"name": m["name"]}})
    except VaelabError:
        resolved = defaults = None
    label = run_label(resolved) if resolved is not None else cfg.get("train", {}).get("label") or m["name"]
    parts = [label if label == m["name"] else f"{label} ({m['name']}"]
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


def run_row(run_dir: Path, notes: list | None = None) -> dict:
    """Settings, timing, final training metrics and evaluations of one run directory. An evaluation of other
    weights than the run's current ones is left out (its `<protocol>.weights` cell says "stale"); one that does
    not say which weights it was computed on is kept and marked "unverified". Each gets a line in `notes`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} does not exist")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"{run_dir}: no {CONFIG_FILE}; not a vaelab run directory")
    cfg = read_config(run_dir / CONFIG_FILE)
    row = {"run": run_dir.name, "setting": describe(cfg), "steps": cfg["train"]["steps"], "seed": cfg["train"]["seed"]}
    if (run_dir / SUMMARY_FILE).is_file():
        summary = read_summary(run_dir / SUMMARY_FILE)
        row["train_seconds"] = summary.get("train_seconds")
        row["train_nelbo"] = (summary.get("final") or {}).get("nelbo")
    results = {path: read_eval(path) for path in sorted(run_dir.glob("eval-*.json"))}
    current = current_weights(run_dir) if results else None
    for path, result in results.items():
        name = path.name[len("eval-"):-len(".json")]  # the protocol, unless the file was saved under another name
        state, why = freshness(result, current)
        row[f"{name}.weights"] = why if state == "current" else (
            f"stale (step {result[COMPUTED_ON]['step']})" if state == "stale" else "unverified")
        if state != "current" and notes is not None:
            fix = "run" if state == "stale" else "shown as is; to check it, run"
            notes.append(f"{path} {why}: {fix} {eval_command(run_dir, result)} again")
        if state == "stale":
            continue
        keys = DISENTANGLEMENT_KEYS if result["protocol"] == DISENTANGLEMENT else (*EVAL_KEYS, *_group_keys(result))
        for key in keys:
            if key in result:
                row[f"{name}.{key}"] = result[key]
    return row


def _fmt(value, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if column.endswith("accuracy") or ".bpd_" in column else f"{value:.2f}"
    return str(value)


def _histories(run_dirs) -> dict:
    """Each run's logged metrics, as the curves figure reads them: records with an integer step, numbers only."""
    histories = {}
    for d in run_dirs:
        records = read_jsonl(Path(d) / METRICS_FILE)
        histories[Path(d).name] = [{k: v for k, v in r.items() if isinstance(v, NUMBER) and not isinstance(v, bool)}
                                   for r in records if isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)]
    return histories


def _out_dir(out_dir: Path) -> Path:
    """--out as a folder that can be written, made if missing; a file, a run directory or a folder that cannot be
    made is one line naming it, before anything is written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out: {out_dir} is a file, not a folder")
    if (out_dir / CONFIG_FILE).is_file():
        raise RunDirError(f"--out: {out_dir} is a run directory; compare's curves.png would replace its own")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--out: cannot make {out_dir}: {exc.strerror}") from None
    return out_dir


def compare_runs(run_dirs, out_dir: Path) -> str:
    """Write compare.md, compare.csv and curves.png for the runs; return the markdown table and its notes
    (one line per stale or unverified evaluation)."""
    notes: list[str] = []
    rows = [run_row(d, notes) for d in run_dirs]
    histories = _histories(run_dirs)
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c), c) for c in columns) + " |" for row in rows]
    text = "\n".join(lines) + ("\n\n" + "\n".join(f"- {note}" for note in notes) if notes else "")
    out_dir = _out_dir(out_dir)
    files.atomic_write_text(out_dir / "compare.md", text + "\n")
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    files.atomic_write_text(out_dir / "compare.csv", table.getvalue())
    try:
        training_curves(histories, out_dir / "curves.png")
    except OSError as exc:
        raise RunDirError(f"cannot write {out_dir / 'curves.png'}: {exc.strerror or exc}") from None
    return text
