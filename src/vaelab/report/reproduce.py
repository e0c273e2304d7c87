"""`vaelab reproduce cs236`: the assignment's experiments with the reference settings, then a report.

Each experiment is a preset plus overrides, trained for each seed into OUT/runs/<name>-seed<s>,
evaluated with its protocol, and drawn (samples, reconstructions, training curves). OUT/report.md
and OUT/report.html put every measured metric beside the write-ups' numbers (docs/reference.md) with the
wall time of each run. Finished runs are reused, so an interrupted reproduction picks up where it
stopped.
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
from ..errors import ConfigError
from ..evaluation import evaluate
from ..training import load_preset, set_key, train
from ..training.config import run_label
from ..training.files import atomic_write_text, read_jsonl
from ..training.runs import METRICS_FILE, SUMMARY_FILE, load_run
from .figures import training_curves, write_sample_grids


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
SUITES = {"cs236": CS236}
TIMING_FILE = "reproduce.json"
METRIC_NAMES = {"nelbo": "NELBO", "kl": "KL", "rec": "Rec", "kl_z": "KL_z", "kl_y": "KL_y", "accuracy": "test accuracy",
                "niwae_1": "-IWAE-1", "niwae_10": "-IWAE-10", "niwae_100": "-IWAE-100", "niwae_1000": "-IWAE-1000",
                "niwae_5000": "-IWAE-5000", "active_units": "active units"}


def run_experiment(exp: Experiment, seed: int, out: Path, data_dir, device: str, steps: int | None, progress: bool,
                   threads: int = 0) -> Path:
    """Train, evaluate and draw one (experiment, seed); reuse the run if it already finished."""
    run_dir = out / "runs" / f"{exp.name}-seed{seed}"
    if (run_dir / TIMING_FILE).is_file():
        return run_dir
    start = time.perf_counter()
    if run_dir.exists():  # an interrupted run: start it again
        shutil.rmtree(run_dir)
    cfg = load_preset(exp.preset)
    for key, value in exp.overrides.items():
        set_key(cfg, key, value)
    cfg.train.seed, cfg.train.device, cfg.train.threads = seed, device, threads
    cfg.data.data_dir = str(data_dir) if data_dir else None
    if steps is not None:
        cfg.train.steps = steps
        cfg.train.checkpoint_every = max(1, steps // 2)
        cfg.train.log_every = max(1, min(cfg.train.log_every, steps // 20))
    train(cfg, run_dir, progress=progress)
    device = resolve_device(device)
    model, cfg = load_run(run_dir, device)
    test = data_mod.load(cfg.data.dataset, "test", cfg.data.data_dir, device, cfg.data.download)
    result = evaluate(model, test, exp.protocol, exp.iws, seed=0)
    result = {"run": str(run_dir), "model": cfg.model.name, "label": run_label(cfg), "dataset": cfg.data.dataset, **result}
    write_sample_grids(model, cfg, test, run_dir / "samples.png", run_dir / "reconstructions.png")
    training_curves({run_dir.name: read_jsonl(run_dir / METRICS_FILE)}, run_dir / "curves.png")
    atomic_write_text(run_dir / f"eval-{exp.protocol}.json", json.dumps(result, indent=2) + "\n")
    # Written last: its presence marks the run finished (and keeps its wall time for later reports).
    atomic_write_text(run_dir / TIMING_FILE, json.dumps({"wall_seconds": round(time.perf_counter() - start, 1)}) + "\n")
    return run_dir


def reproduce(suite: str, out: str | Path, quick: bool = False, runs: int = 1, data_dir=None, device: str = "auto",
              steps: int | None = None, progress: bool = True, only=None, threads: int = 0) -> Path:
    """Run a suite's experiments for seeds 0..runs-1 and write OUT/report.md and OUT/report.html.
    `steps` overrides every experiment's step count (tests); `quick` uses each experiment's short schedule."""
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r} (choose from {', '.join(SUITES)})")
    if runs < 1:
        raise ConfigError(f"--runs: must be >= 1 (got {runs})")
    if threads < 0:
        raise ConfigError(f"--threads: must be >= 0 (got {threads})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    experiments = [e for e in SUITES[suite] if only is None or e.name in only]
    results = {}
    for exp in experiments:
        exp_steps = steps if steps is not None else (exp.quick_steps if quick else None)
        results[exp.name] = []
        for seed in range(runs):
            # One line per experiment on stderr, so a run without progress bars still says where it is.
            print(f"reproduce: {exp.name} seed {seed} ({len(results)}/{len(experiments)})...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            results[exp.name].append(run_experiment(exp, seed, out, data_dir, device, exp_steps, progress, threads))
            print(f"reproduce: {exp.name} seed {seed} done in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return write_report(suite, out, experiments, results, quick=quick, steps=steps)


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


def write_report(suite: str, out: Path, experiments, results: dict, quick: bool = False, steps: int | None = None) -> Path:
    """report.md and report.html from the finished runs; figures are copied under OUT/figures/."""
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    blocks = []  # (title, header, rows, images, notes) per experiment
    summary_sources = [WRITEUP_ONE, WRITEUP_MEAN, OFFICIAL]
    summary_rows = []
    for exp in experiments:
        run_dirs = results[exp.name]
        evals = [json.loads((d / f"eval-{exp.protocol}.json").read_text()) for d in run_dirs]
        summaries = [json.loads((d / SUMMARY_FILE).read_text()) for d in run_dirs]
        total_s = [json.loads((d / TIMING_FILE).read_text())["wall_seconds"] for d in run_dirs]
        sources = list(dict.fromkeys(src for ref in exp.reference.values() for src in ref))
        n = len(evals)
        header = ["metric", f"vaelab ({'mean ± std of ' + str(n) + ' runs' if n > 1 else 'seed 0'})", *sources]
        rows = []
        train_s = [s["train_seconds"] for s in summaries]
        for metric in METRIC_NAMES:
            if metric not in evals[0]:
                continue
            mean, std = _mean_std([e[metric] for e in evals])
            cell = _fmt(metric, mean) + ("" if std is None else f" ± {_fmt(metric, std)}")
            reference = exp.reference.get(metric, {})
            rows.append([METRIC_NAMES[metric], cell, *_reference_cells(metric, reference, sources)])
            if metric in exp.headline:
                summary_rows.append([exp.name, METRIC_NAMES[metric], cell,
                                     *_reference_cells(metric, reference, summary_sources),
                                     f"{statistics.median(train_s):.0f} s"])
        first = run_dirs[0]
        images = []
        for kind, caption in (("samples", exp.samples_caption),
                              ("reconstructions", "reconstructions (odd rows inputs, even rows reconstructions)"), ("curves", "training curves")):
            target = figures / f"{exp.name}-{kind}.png"
            shutil.copyfile(first / f"{kind}.png", target)
            images.append((f"figures/{target.name}", caption))
        notes = [f"preset `{exp.preset}`" + (f" with {', '.join(f'{k}={v}' for k, v in exp.overrides.items())}" if exp.overrides else "")
                 + f", {summaries[0]['steps']} steps, protocol `{exp.protocol}` on {evals[0]['images']} test images",
                 f"wall time per run: training {', '.join(f'{t:.0f} s' for t in train_s)}; training + evaluation + figures "
                 f"{', '.join(f'{t:.0f} s' for t in total_s)}",
                 "trained with vaelab " + "; ".join(sorted({f"{s.get('vaelab', '?')} at commit {s.get('commit') or 'unknown'}, "
                                                          f"torch {s['torch']}, {s['device']} ({s.get('cpu', '?')}, {s['threads']} threads)"
                                                          for s in summaries}))]
        blocks.append((exp.title, header, rows, images, notes))
    title = f"vaelab reproduce {suite}" + (" --quick (short schedule: not comparable with the write-ups)" if quick else "")
    if steps is not None:
        title += f" (every experiment {steps} steps)"
    n_runs = len(results[experiments[0].name])
    summary_header = ["experiment", "metric", "vaelab" + (f" (mean ± std of {n_runs} runs)" if n_runs > 1 else ""), *summary_sources,
                      "training time" + (" (median)" if n_runs > 1 else "")]
    blocks.insert(0, ("Summary", summary_header, summary_rows, [], ["details, figures and every metric of each experiment below"]))
    md = _markdown(title, blocks)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html(title, md))
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
