"""`vaelab reproduce SUITE`: a suite's experiments with their reference settings, then a report. The suites:
cs236 (the assignment's experiments, here) and literature (the papers' models at their protocols, literature.py).

Each experiment is a preset plus overrides, trained for each seed into OUT/runs/<name>-seed<s>,
evaluated with its protocol, and drawn (samples, reconstructions, training curves). OUT/report.md
and OUT/report.html put every measured metric beside the write-ups' numbers (docs/reference.md) with the
wall time of each run.

reproduce never deletes or overwrites a folder it did not make. It writes OUT/runs/<name>-seed<s>/owner.json
(suite, experiment, seed) before training starts, and refuses, in one line and before training anything, a
folder there without it (a run of the user's own copied there). Its own runs are reused when finished, and
resumed when not (an interrupt, a kill, a run extended with `vaelab train --resume --steps N`), never started
again. OUT/.lock keeps a second reproduce out of OUT while one runs; each run directory's lock is held while it
is trained and while it is evaluated and drawn, so a run another process trains is never evaluated half-way.
An evaluation that does not belong to the run's current weights is computed again.
"""

from __future__ import annotations

import html
import json
import math
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import data as data_mod
from ..devices import resolve_device
from ..errors import ConfigError, RunDirError, TrainingInterrupted
from ..evaluation import evaluate
from ..training import load_json, load_preset, set_key, train
from ..training.config import run_label
from ..training.files import atomic_write_text, read_jsonl
from ..training.runs import (CONFIG_FILE, METRICS_FILE, OWNER_FILE, SUMMARY_FILE, RunLock, final_step, final_weights_problem,
                             load_run_weights)
from .compare import COMPUTED_ON, current_weights, freshness, read_eval, read_json_object, read_summary
from .figures import training_curves
from .grids import write_sample_grids


@dataclass
class Experiment:
    name: str
    title: str
    preset: str
    overrides: dict = field(default_factory=dict)
    protocol: str = "cs236"
    iws: tuple = (1, 10, 100, 1000)
    quick_steps: int = 1000
    # metric -> {source: value}, the numbers of docs/reference.md section 1
    reference: dict = field(default_factory=dict)
    # the metrics of the report's summary table
    headline: tuple = ("nelbo", "niwae_1000")
    samples_caption: str = "samples (decoder means)"
    # The protocol's length in epochs, when it is given in epochs (train.epochs; reproduce --epochs caps it)
    epochs: int = 0


WRITEUP_ONE = "write-up (one run)"
WRITEUP_MEAN = "write-up (mean of 7 runs)"
OFFICIAL = "official solution"

CS236 = (
    Experiment("vae", "VAE", "vae", quick_steps=1500, reference={
        "nelbo": {WRITEUP_ONE: 101.51, WRITEUP_MEAN: 101.69, OFFICIAL: 101.5},
        "kl": {WRITEUP_ONE: 19.45, WRITEUP_MEAN: 19.26}, "rec": {WRITEUP_ONE: 82.06, WRITEUP_MEAN: 82.43},
        "niwae_1": {WRITEUP_ONE: 101.44, OFFICIAL: 99.83}, "niwae_10": {WRITEUP_ONE: 98.55, OFFICIAL: 97.13},
        "niwae_100": {WRITEUP_ONE: 97.42, OFFICIAL: 96.1}, "niwae_1000": {WRITEUP_ONE: 96.81, OFFICIAL: 95.62}}),
    Experiment("gmvae", "GMVAE (mixture prior, K = 500)", "gmvae", quick_steps=1000, reference={
        "nelbo": {WRITEUP_ONE: 98.30, OFFICIAL: 97.22}, "kl": {WRITEUP_ONE: 17.77}, "rec": {WRITEUP_ONE: 80.53},
        "niwae_1": {WRITEUP_ONE: 98.32, OFFICIAL: 97.22}, "niwae_10": {WRITEUP_ONE: 96.00, OFFICIAL: 94.74},
        "niwae_100": {WRITEUP_ONE: 95.24, OFFICIAL: 93.8}, "niwae_1000": {WRITEUP_ONE: 94.83, OFFICIAL: 93.38}}),
    Experiment("ssvae_gen0", "SSVAE, classifier only (gen_weight 0)", "ssvae", {"model.gen_weight": 0}, iws=(),
               quick_steps=600, reference={"accuracy": {WRITEUP_ONE: 0.7339, OFFICIAL: 0.735}}, headline=("accuracy",)),
    Experiment("ssvae", "SSVAE (M2, gen_weight 1, class_weight 100)", "ssvae", iws=(), quick_steps=300,
               reference={"accuracy": {WRITEUP_ONE: 0.9380, OFFICIAL: 0.9340}}, headline=("accuracy", "nelbo")),
    Experiment("cvae", "Conditional VAE on MNIST (Gaussian decoder, variance 0.1)", "cvae",
               iws=(1, 10, 100), quick_steps=1000, headline=("nelbo", "niwae_100"),
               samples_caption="style/content: rows are z draws, columns labels 0-9"),
)
SUITES = {"cs236": CS236}  # name -> experiments; literature.py adds its suite
REPORTS: dict = {}  # name -> the suite's report writer, where it is not write_report
TIMING_FILE = "reproduce.json"
METRIC_NAMES = {"nelbo": "NELBO", "kl": "KL", "rec": "Rec", "kl_z": "KL_z", "kl_y": "KL_y", "accuracy": "test accuracy",
                "niwae_1": "-IWAE-1", "niwae_10": "-IWAE-10", "niwae_100": "-IWAE-100", "niwae_1000": "-IWAE-1000",
                "niwae_5000": "-IWAE-5000", "active_units": "active units"}


FIGURES = ("samples.png", "reconstructions.png", "curves.png")
MADE_BY = "vaelab reproduce"


def _make_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RunDirError(f"--out: {path} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunDirError(f"--out: cannot make {path}: {exc.strerror}") from None


def run_dir_of(out: Path, exp: Experiment, seed: int) -> Path:
    return Path(out) / "runs" / f"{exp.name}-seed{seed}"


def owner_record(suite: str, exp: Experiment, seed: int) -> dict:
    return {"made_by": MADE_BY, "suite": suite, "experiment": exp.name, "seed": seed}


def check_owned(run_dir: Path, owner: dict) -> None:
    """Nothing when RUN_DIR is this reproduce's run of this experiment and seed (its owner.json says so, or it is
    a finished run of a reproduce from before owner.json); else one RunDirError, and the folder is left as it is."""
    leave = f"vaelab reproduce never changes or deletes it: move it out of {run_dir.parent} or choose another --out"
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a folder; {leave}")
    marker = run_dir / OWNER_FILE
    if marker.is_file():
        found = read_json_object(marker, "owner record")
        if any(found.get(key) != value for key, value in owner.items()):
            made = ", ".join(f"{key} {json.dumps(found.get(key))}" for key in owner if key != "made_by")
            raise RunDirError(f"{run_dir}: made by {found.get('made_by', 'another program')} ({made}), not this reproduce's "
                              f"{owner['suite']} {owner['experiment']} seed {owner['seed']}; {leave}")
        return
    if not (run_dir / TIMING_FILE).is_file():
        raise RunDirError(f"{run_dir}: not made by vaelab reproduce (no {OWNER_FILE}); {leave}")


def _config(exp: Experiment, seed: int, run_dir: Path, data_dir, device: str, steps: int | None, threads: int,
            epochs: int | None = None):
    """The run's saved config.json where training started (a resume continues that run), else the experiment's.
    `epochs` caps an experiment given in epochs (a budget below the protocol's): a run continues to a larger cap."""
    if (run_dir / CONFIG_FILE).is_file():
        cfg = load_json(run_dir / CONFIG_FILE)
    else:
        cfg = load_preset(exp.preset)
        for key, value in exp.overrides.items():
            set_key(cfg, key, value)
        cfg.train.seed = seed
        if steps is not None:
            cfg.train.steps = steps
            cfg.train.checkpoint_every = max(1, steps // 2)
            cfg.train.log_every = max(1, min(cfg.train.log_every, steps // 20))
    if exp.epochs and steps is None:
        cfg.train.epochs = min(exp.epochs, epochs) if epochs else exp.epochs
    cfg.train.device, cfg.train.threads = device, threads
    if data_dir:
        cfg.data.data_dir = str(data_dir)
    return cfg


def _trained(run_dir: Path, cfg) -> bool:
    """The final weights are in place, intact, and of the last step (or epoch) the run's config asks for, or of the
    step early stopping ended it at."""
    if final_weights_problem(run_dir) is not None:
        return False
    summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else {}
    if summary.get("stopped") == "early stopping":
        return True
    if cfg.train.epochs:
        return isinstance(summary.get("epochs"), (int, float)) and summary["epochs"] >= cfg.train.epochs
    return final_step(run_dir, cfg) >= cfg.train.steps


def _finished(run_dir: Path, exp: Experiment, cfg) -> bool:
    """Trained as far as `cfg` asks, evaluated on the weights the run has now, and drawn."""
    evaluation = run_dir / f"eval-{exp.protocol}.json"
    needed = (TIMING_FILE, CONFIG_FILE, evaluation.name, *FIGURES)
    if not all((run_dir / name).is_file() for name in needed):
        return False
    if not _trained(run_dir, cfg):
        return False
    return freshness(read_eval(evaluation), current_weights(run_dir))[0] == "current"


def run_experiment(exp: Experiment, seed: int, out: Path, data_dir, device: str, steps: int | None, progress: bool,
                   threads: int = 0, suite: str = "cs236", epochs: int | None = None) -> Path:
    """Train, evaluate and draw one (experiment, seed): reuse the run if it is finished, resume it if not."""
    run_dir = run_dir_of(out, exp, seed)
    owner = owner_record(suite, exp, seed)
    exists = run_dir.exists() or run_dir.is_symlink()
    if exists:
        check_owned(run_dir, owner)  # before anything in it is read
    cfg = _config(exp, seed, run_dir, data_dir, device, steps, threads, epochs)
    if exists:
        if _finished(run_dir, exp, cfg):
            return run_dir
        if (run_dir / TIMING_FILE).is_file() and current_weights(run_dir) is None:
            return run_dir  # finished and kept without its weights (results committed alone): reported as recorded
    else:
        _make_folder(run_dir)
        atomic_write_text(run_dir / OWNER_FILE, json.dumps(owner, indent=2) + "\n")  # before training: the folder is ours
    if not _trained(run_dir, cfg):
        # A folder holding only owner.json is new; anything more is a start that stopped (even before its
        # first checkpoint, which train's resume handles by starting from step 0).
        resume = any(path.name != OWNER_FILE for path in run_dir.iterdir())
        try:
            train(cfg, run_dir, progress=progress, resume=resume)
        except TrainingInterrupted as exc:
            stopped = str(exc).split("; continue with", 1)[0]
            raise TrainingInterrupted(f"{stopped} in {run_dir}; run the same vaelab reproduce command again to continue it",
                                      exc.exit_code - 128) from None
    _evaluate_and_draw(exp, run_dir, device, data_dir)
    return run_dir


def _evaluate_and_draw(exp: Experiment, run_dir: Path, device: str, data_dir) -> None:
    """Evaluate the run's weights and draw its figures, holding the run's lock: a process training the run
    (vaelab train --resume) makes this one line instead of an evaluation of weights about to change."""
    lock = RunLock(run_dir, "--out")
    try:
        start = time.perf_counter()
        device = resolve_device(device)
        model, cfg, weights = load_run_weights(run_dir, device)
        test = data_mod.load_for(cfg.data, "test", device, data_dir)
        result = evaluate(model, test, exp.protocol, exp.iws, seed=0)
        result = {"run": str(run_dir), "model": cfg.model.name, "label": run_label(cfg), "dataset": cfg.data.dataset,
                  COMPUTED_ON: weights, **result}
        write_sample_grids(model, cfg, test, run_dir / "samples.png", run_dir / "reconstructions.png")
        training_curves({run_dir.name: read_jsonl(run_dir / METRICS_FILE)}, run_dir / "curves.png")
        atomic_write_text(run_dir / f"eval-{exp.protocol}.json", json.dumps(result, indent=2) + "\n")
        summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else {}
        wall = (summary.get("train_seconds") or 0.0) + time.perf_counter() - start
        # Written last: with an evaluation of the current weights it marks the run finished.
        atomic_write_text(run_dir / TIMING_FILE, json.dumps({"wall_seconds": round(wall, 1), COMPUTED_ON: weights}) + "\n")
    finally:
        lock.release()


def reproduce(suite: str, out: str | Path, quick: bool = False, runs: int = 1, data_dir=None, device: str = "auto",
              steps: int | None = None, progress: bool = True, only=None, threads: int = 0, epochs: int | None = None,
              report_only: bool = False) -> Path:
    """Run a suite's experiments for seeds 0..runs-1 and write OUT/report.md and OUT/report.html.
    `steps` overrides every experiment's step count (tests); `quick` uses each experiment's short schedule;
    `epochs` caps the experiments given in epochs (a budget: their runs continue to a larger cap later);
    `report_only` writes the report from the runs OUT/runs holds, training and evaluating nothing."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r} (choose from {', '.join(SUITES)})")
    if runs < 1:
        raise ConfigError(f"--runs: must be >= 1 (got {runs})")
    if threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (got {threads})")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs: must be >= 1 (got {epochs})")
    out = Path(out)
    _make_folder(out)
    experiments = [e for e in SUITES[suite] if only is None or e.name in only]
    lock = RunLock(out, "--out")  # one reproduce in OUT at a time
    try:
        # Every folder in the way is refused before anything is trained.
        for exp in experiments:
            for seed in range(runs):
                run_dir = run_dir_of(out, exp, seed)
                if run_dir.exists() or run_dir.is_symlink():
                    check_owned(run_dir, owner_record(suite, exp, seed))
        results = {}
        if report_only:
            results = {exp.name: [d for d in (run_dir_of(out, exp, seed) for seed in range(runs)) if d.is_dir()] for exp in experiments}
            experiments = [exp for exp in experiments if results[exp.name]]
            if not experiments:
                raise RunDirError(f"--report-only: {out / 'runs'} holds no run of the {suite} suite yet")
            return REPORTS.get(suite, write_report)(suite, out, experiments, results, quick=quick, steps=steps)
        for exp in experiments:
            exp_steps = steps if steps is not None else (exp.quick_steps if quick else None)
            results[exp.name] = []
            for seed in range(runs):
                # One line per experiment on stderr, so a run without progress bars still says where it is.
                print(f"reproduce: {exp.name} seed {seed} ({len(results)}/{len(experiments)})...", file=sys.stderr, flush=True)
                start = time.perf_counter()
                results[exp.name].append(run_experiment(exp, seed, out, data_dir, device, exp_steps, progress, threads, suite, epochs))
                print(f"reproduce: {exp.name} seed {seed} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        return REPORTS.get(suite, write_report)(suite, out, experiments, results, quick=quick, steps=steps)
    finally:
        lock.release()


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _fmt(metric: str, value: float) -> str:
    return f"{value:.4f}" if metric == "accuracy" else (f"{value:.0f}" if metric == "active_units" else f"{value:.2f}")


def _reference_cells(metric: str, reference: dict, sources) -> list[str]:
    """One table cell per source: its reference value of `metric`, or empty where it has none."""
    return [_fmt(metric, reference[source]) if source in reference else "" for source in sources]


def _run_files(run_dir: Path, exp: Experiment, out: Path) -> tuple[dict | None, dict, dict, list[str]]:
    """A run's evaluation (None when it is of other weights than the run's current ones; counted with a note when
    that cannot be checked), summary and timing ({} where missing), and a note for each thing missing, left out
    or unverified, so a half-finished run never breaks the report."""
    problems = []
    evaluation, result = run_dir / f"eval-{exp.protocol}.json", None
    shown = evaluation.relative_to(out) if evaluation.is_relative_to(out) else evaluation  # as the report's links are
    if evaluation.is_file():
        result = read_eval(evaluation)
        state, why = freshness(result, current_weights(run_dir))
        if state == "stale":
            problems.append(f"{shown} {why}: left out")
            result = None
        elif state == "unverified":
            problems.append(f"{shown} {why}: counted, unverified")
    else:
        problems.append(f"{shown.parent}: not evaluated yet")
    summary = read_summary(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else {}
    timing = read_json_object(run_dir / TIMING_FILE, "reproduce record") if (run_dir / TIMING_FILE).is_file() else {}
    if not isinstance(timing.get("wall_seconds"), (int, float)) or isinstance(timing.get("wall_seconds"), bool):
        timing = {}
    return result, summary, timing, problems


def _seconds(values) -> str:
    return ", ".join("?" if t is None else f"{t:.0f} s" for t in values)


def write_report(suite: str, out: Path, experiments, results: dict, quick: bool = False, steps: int | None = None) -> Path:
    """report.md and report.html from the runs; figures are copied under OUT/figures/. Only evaluations of each
    run's current weights are counted; anything missing or left out is said in the experiment's notes."""
    figures = out / "figures"
    _make_folder(figures)
    blocks = []  # (title, header, rows, images, notes) per experiment
    summary_sources = [WRITEUP_ONE, WRITEUP_MEAN, OFFICIAL]
    summary_rows = []
    for exp in experiments:
        run_dirs = results[exp.name]
        read = [_run_files(d, exp, out) for d in run_dirs]
        evals = [r for r, *_ in read if r is not None]
        summaries = [summary for _, summary, _, _ in read]
        total_s = [timing.get("wall_seconds") for _, _, timing, _ in read]
        train_s = [summary.get("train_seconds") for summary in summaries]
        sources = list(dict.fromkeys(src for ref in exp.reference.values() for src in ref))
        n = len(evals)
        header = ["metric", f"vaelab ({'mean ± std of ' + str(n) + ' runs' if n > 1 else 'seed 0' if n else 'no evaluation'})", *sources]
        rows = []
        timed = [t for t in train_s if t is not None]
        for metric in METRIC_NAMES:
            values = [e[metric] for e in evals if isinstance(e.get(metric), (int, float))]
            if not values:
                continue
            mean, std = _mean_std(values)
            cell = _fmt(metric, mean) + ("" if std is None else f" ± {_fmt(metric, std)}")
            reference = exp.reference.get(metric, {})
            rows.append([METRIC_NAMES[metric], cell, *_reference_cells(metric, reference, sources)])
            if metric in exp.headline:
                summary_rows.append([exp.name, METRIC_NAMES[metric], cell,
                                     *_reference_cells(metric, reference, summary_sources),
                                     f"{statistics.median(timed):.0f} s" if timed else "?"])
        images = []
        for kind, caption in (("samples", exp.samples_caption),
                              ("reconstructions", "reconstructions (odd rows inputs, even rows reconstructions)"), ("curves", "training curves")):
            drawn = next((d / f"{kind}.png" for d in run_dirs if (d / f"{kind}.png").is_file()), None)
            target = figures / f"{exp.name}-{kind}.png"
            if drawn is not None:
                shutil.copyfile(drawn, target)
            if target.is_file():  # else kept from an earlier report, for runs kept without their figures
                images.append((f"figures/{target.name}", caption))
        step_counts = sorted({s["steps"] for s in summaries if "steps" in s})
        weights = sorted({e[COMPUTED_ON]["step"] for e in evals if e.get(COMPUTED_ON)})
        notes = [f"preset `{exp.preset}`" + (f" with {', '.join(f'{k}={v}' for k, v in exp.overrides.items())}" if exp.overrides else "")
                 + f", {', '.join(map(str, step_counts)) or '?'} steps, protocol `{exp.protocol}`"
                 + (f" on {evals[0]['images']} test images" if evals and "images" in evals[0] else "")
                 + (f", evaluated on the weights of step {', '.join(map(str, weights))}" if weights else ""),
                 f"wall time per run: training {_seconds(train_s)}; training + evaluation + figures {_seconds(total_s)}",
                 "trained with vaelab " + "; ".join(sorted({f"{s.get('vaelab', '?')} at commit {s.get('commit') or 'unknown'}, "
                                                          f"torch {s.get('torch', '?')}, {s.get('device', '?')} ({s.get('cpu', '?')}, "
                                                          f"{s.get('threads', '?')} thread{'' if s.get('threads') == 1 else 's'})" for s in summaries}))]
        notes += [problem for *_, problems in read for problem in problems]
        blocks.append((exp.title, header, rows, images, notes))
    title = f"vaelab reproduce {suite}" + (" --quick (short schedule: not comparable with the write-ups)" if quick else "")
    if steps is not None:
        title += f" (every experiment {steps} steps)"
    n_runs = len(results[experiments[0].name])
    summary_header = ["experiment", "metric", "vaelab" + (f" (mean ± std of {n_runs} runs)" if n_runs > 1 else ""), *summary_sources,
                      "training time" + (" (median)" if n_runs > 1 else "")]
    blocks.insert(0, ("Summary", summary_header, summary_rows, [], ["details, figures and every metric of each experiment below"]))
    md = _markdown(title, blocks)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html(title, md))
    return out / "report.md"


def _markdown(title: str, blocks) -> str:
    lines = [f"# {title}", "", "Nats for bounds (lower is better); accuracy on all 10,000 test images. Reference columns: docs/reference.md.", ""]
    for name, header, rows, images, notes in blocks:
        lines += [f"## {name}", ""] + [f"- {n}" for n in notes] + [""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]
        lines += [f"![{caption}]({path})" for path, caption in images] + [""]
    return "\n".join(lines)


HTML_STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;margin:1em 0}"
              "td,th{border:1px solid #bbb;padding:4px 10px;text-align:right}td:first-child,th:first-child{text-align:left}"
              "img{max-width:100%}code{background:#f3f3f3;padding:0 3px}")


def _html(title: str, markdown_text: str) -> str:
    """The Markdown report rendered by the markdown package (a TensorBoard dependency), tables included."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")
