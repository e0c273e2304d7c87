"""`vaelab reproduce literature`: published MNIST log-likelihoods at their papers' protocols, and a table of ours.

Each experiment is one paper's model trained as the paper trains it (architecture, optimiser, learning-rate
schedule, KL warm-up, validation split and early stopping, the paper's maximum number of epochs) and tested as
papers test: -IWAE-5000 on all 10,000 test images (dynamically binarized once with a fixed seed), with its
standard error. `--epochs N` caps every experiment at N epochs (a budget): the report then says, per run,
whether early stopping or the cap ended it, the gap to the paper, and how long the paper's budget would take at
the measured speed. A capped run continues to a larger cap with the same command. docs/reference.md gives each
paper's number with its table and column, and the protocol details with their sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..training.files import atomic_write_text, read_jsonl
from ..training.runs import METRICS_FILE
from .figures import save_figure
from .reproduce import COMPUTED_ON, REPORTS, SUITES, Experiment, _html, _make_folder, _run_files


@dataclass(frozen=True)
class Published:
    value: float
    binarization: str  # dynamic or static
    samples: int  # k of the paper's IWAE estimate
    source: str  # paper, table, row and column


# The IWAE paper (Burda et al. 2016, section 5 and appendix): batch 20, Adam (beta 0.9, 0.999, eps 1e-4), 3^i passes
# at lr 0.001 * 10^(-i/7) for i = 0..7 (3,280 passes over the 60,000 training images, 3,000 steps each).
IWAE_EPOCHS = 3280
_IWAE_BOUNDARIES = [sum(3 ** j for j in range(i + 1)) for i in range(7)]  # epochs 1, 4, 13, 40, 121, 364, 1093
IWAE_SCHEDULE = {"train.lr_schedule": "multistep", "train.lr_decay": 10 ** (-1 / 7), "train.eps": 1e-4,
                 "train.lr_milestones": [epoch * 3000 for epoch in _IWAE_BOUNDARIES]}

# The VampPrior paper (Tomczak & Welling 2018) as its authors' code runs it (docs/reference.md): dynamic MNIST with
# the last 10,000 training images held out for validation, gated MLPs 300-300, z = 40 (each layer), Adam 5e-4 on
# gradients scaled to unit norm per tensor (their AdamNormGrad), batch 100, KL warm-up over 100 epochs (500 steps
# each), early stopping after 50 epochs without a better validation bound, counted from the end of the warm-up,
# at most 2,000 epochs.
VAMP_EPOCHS = 2000
VAMP_PROTOCOL = {"model.activation": "gated", "model.hidden": [300, 300], "train.lr": 5e-4, "train.batch_size": 100,
                 "train.grad_normalize": True, "objective.kl_warmup_steps": 100 * 500, "data.validation": 10_000,
                 "train.eval_every": 1, "train.eval_unit": "epochs", "train.patience": 50, "train.patience_from": 100 * 500,
                 "train.log_every": 500, "train.checkpoint_every": 5000}

# The Ladder VAE paper (Sønderby et al. 2016) as its authors' code runs it: five stochastic layers of 64, 32, 16, 8
# and 4 latents, KL warm-up over 200 epochs, Adam 2e-4 (the README's commands; 2e-3 is the code's default) with
# eps 1e-4, batch 256, 2,000 epochs on all 60,000 training images, no validation. vaelab's ladder has no batch
# normalisation, no gradient clipping, and one MLP width for every layer (512-256), where the paper narrows its
# deterministic layers 512, 256, 128, 64, 32 going up.
LADDER_EPOCHS = 2000

IWAE = "Burda et al. 2016, Table 1 (checked)"
VAMP = "Tomczak & Welling 2018 (not checked against the paper's text here)"
LITERATURE = (
    Experiment("iwae_vae", "VAE, one stochastic layer (Burda et al.)", "iwae-1l",
               {"objective.kind": "elbo", "objective.k": 1, **IWAE_SCHEDULE}, protocol="full", iws=(5000,),
               epochs=IWAE_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(86.76, "dynamic", 5000, f"{IWAE}, MNIST, 1 layer, VAE, k = 1")}}),
    Experiment("iwae_k5", "IWAE, k = 5, one stochastic layer (Burda et al.)", "iwae-1l",
               {"objective.kind": "iwae", "objective.k": 5, **IWAE_SCHEDULE}, protocol="full", iws=(5000,),
               epochs=IWAE_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(85.54, "dynamic", 5000, f"{IWAE}, MNIST, 1 layer, IWAE, k = 5")}}),
    Experiment("iwae_k50", "IWAE, k = 50, one stochastic layer (Burda et al.)", "iwae-1l",
               {"objective.kind": "iwae", "objective.k": 50, **IWAE_SCHEDULE}, protocol="full", iws=(5000,),
               epochs=IWAE_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(84.78, "dynamic", 5000, f"{IWAE}, MNIST, 1 layer, IWAE, k = 50")}}),
    Experiment("vamp_vae", "VAE, N(0, I) prior (Tomczak & Welling)", "vae", {"model.z_dim": 40, **VAMP_PROTOCOL},
               protocol="full", iws=(5000,), epochs=VAMP_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(84.50, "dynamic", 5000, f"{VAMP}, dynamic MNIST, VAE (L = 1), standard prior")}}),
    Experiment("vamp_vampprior", "VAE, VampPrior with 500 pseudo-inputs (Tomczak & Welling)", "vae",
               {"model.z_dim": 40, "model.prior": "vamp", "model.prior_components": 500, **VAMP_PROTOCOL},
               protocol="full", iws=(5000,), epochs=VAMP_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(82.38, "dynamic", 5000, f"{VAMP}, dynamic MNIST, VAE (L = 1), VampPrior")}}),
    Experiment("vamp_hvae", "HVAE, two stochastic layers, N(0, I) prior (Tomczak & Welling)", "hvae", dict(VAMP_PROTOCOL),
               protocol="full", iws=(5000,), epochs=VAMP_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(82.42, "dynamic", 5000, f"{VAMP}, dynamic MNIST, HVAE (L = 2), standard prior")}}),
    Experiment("vamp_hvae_vampprior", "HVAE, two stochastic layers, VampPrior (Tomczak & Welling)", "hvae",
               {"model.prior": "vamp", "model.prior_components": 500, **VAMP_PROTOCOL},
               protocol="full", iws=(5000,), epochs=VAMP_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(81.24, "dynamic", 5000, f"{VAMP}, dynamic MNIST, HVAE (L = 2), VampPrior")}}),
    Experiment("ladder", "Ladder VAE, five stochastic layers (Sønderby et al.)", "hvae",
               {"model.inference": "ladder", "model.z_dims": [64, 32, 16, 8, 4], "model.hidden": [512, 256],
                "train.lr": 2e-4, "train.eps": 1e-4, "train.batch_size": 256, "objective.kl_warmup_steps": 200 * 234,
                "train.log_every": 234, "train.checkpoint_every": 2340},
               protocol="full", iws=(5000,), epochs=LADDER_EPOCHS, headline=("niwae_5000",),
               reference={"niwae_5000": {"paper": Published(81.74, "dynamic", 5000,
                                                             "Sønderby et al. 2016, MNIST, LVAE (not checked against the paper's text here)")}}),
)
SUITES["literature"] = LITERATURE


def _paper(exp: Experiment) -> Published:
    return exp.reference[exp.headline[0]]["paper"]


def _cell(value, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def validation_curves(histories: dict, path: Path, steps_per_epoch: dict | None = None) -> Path:
    """The validation bound of each run against epochs (histories: run name -> metrics.jsonl records); a run whose
    protocol has no validation set (the IWAE paper's) shows its training NELBO instead, dashed, where
    `steps_per_epoch` (run name -> steps) places its steps on the epoch axis."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    tails = []
    for name, records in histories.items():
        points = [(r["epoch"], r["validation_nelbo"]) for r in records if "validation_nelbo" in r and "epoch" in r]
        style = {"label": name}
        if not points and (steps_per_epoch or {}).get(name):
            by_epoch: dict = {}  # the mean of each epoch's logged means: batches of 20 are noisy
            for r in records:
                if "nelbo" in r and "loss" in r:
                    by_epoch.setdefault(math.ceil(r["step"] / steps_per_epoch[name]), []).append(r["nelbo"])
            points = [(epoch, sum(v) / len(v)) for epoch, v in sorted(by_epoch.items())]
            style = {"label": f"{name} (training batches)", "ls": "--"}
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, lw=1.2, **style)
            tails += values[len(values) // 5:]
    ax.set(xlabel="epoch", ylabel="NELBO (nats)", title="validation bound during training (dashed: training NELBO)")
    if tails:
        ax.set_ylim(min(tails) - 1, max(tails) + 1)
    if histories:
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_literature_report(suite: str, out: Path, experiments, results: dict, quick: bool = False, steps: int | None = None) -> Path:
    """report.md and report.html: the reproducibility table (paper, ours, epochs run, what ended the run, wall time,
    commit), the validation curves, and per run the gap and the time the paper's budget would take."""
    figures = out / "figures"
    _make_folder(figures)
    bound = experiments[0].headline[0].replace("niwae_", "-IWAE-") if experiments else "-IWAE-5000"
    header = ["model", "paper (binarization, k)", f"vaelab {bound} (s.e.)", "gap", "NELBO", "epochs run (paper's max)",
              "ended by", "training time", "commit"]
    rows, notes, histories, per_epoch_of = [], [], {}, {}
    for exp in experiments:
        for run_dir in results[exp.name]:
            result, summary, timing, problems = _run_files(run_dir, exp, out)
            histories[run_dir.name] = read_jsonl(run_dir / METRICS_FILE)
            paper = _paper(exp)
            metric = exp.headline[0]  # -IWAE-5000 in the suite
            ours = None if result is None else result.get(metric)
            sem = None if result is None else result.get(f"{metric}_sem")
            epochs = summary.get("epochs")
            validation = summary.get("validation") or {}
            if not summary:  # still training (or stopped before its end): as far as its validations say
                seen = [r for r in histories[run_dir.name] if "epoch" in r]
                epochs, seconds_so_far = (seen[-1]["epoch"], seen[-1].get("seconds")) if seen else (None, None)
            per_epoch = summary["steps"] / epochs if epochs and summary else None
            per_epoch_of[run_dir.name] = per_epoch
            capped = "budget cap" if epochs is not None and epochs < exp.epochs else "the paper's maximum"
            ended = {"early stopping": "early stopping" + (f" (best at epoch {validation.get('best_step', 0) / per_epoch:.0f})" if per_epoch else ""),
                     "budget": capped}.get(summary.get("stopped"), "not yet: still training" if not summary else "?")
            seconds = summary.get("train_seconds") if summary else seconds_so_far
            rows.append([exp.title, f"{paper.value:.2f} ({paper.binarization}, {paper.samples})",
                         "" if ours is None else f"{ours:.2f} ({_cell(sem)})", "" if ours is None else f"{ours - paper.value:+.2f}",
                         _cell(None if result is None else result.get("nelbo")),
                         f"{_cell(epochs, 1)} ({exp.epochs})", ended, "" if seconds is None else _hours(seconds),
                         str(summary.get("commit") or "?")])
            if epochs and seconds and summary.get("stopped", "budget") == "budget" and epochs < exp.epochs:
                notes.append(f"{exp.name}: {'the budget ended it' if summary else 'still training'} at epoch {epochs:.1f} of the paper's {exp.epochs}; the paper's "
                             f"budget would take {_hours(seconds / epochs * exp.epochs)} at this run's speed "
                             f"({seconds / epochs:.1f} s an epoch)" + ("" if ours is None else f"; gap {ours - paper.value:+.2f} nats"))
            notes += [f"{exp.name}: {problem}" for problem in problems]
            if result is not None and COMPUTED_ON in result:
                notes.append(f"{exp.name}: evaluated on {result[COMPUTED_ON]['weights']} (step {result[COMPUTED_ON]['step']}), "
                             f"{result.get('images')} test images, {metric.replace('niwae_', 'k = ')}")
    validation_curves(histories, figures / "validation.png", per_epoch_of)
    sources = [f"- {exp.name}: {_paper(exp).source}" for exp in experiments]
    lines = ["# vaelab reproduce literature", "",
             f"Test negative log-likelihood on MNIST, nats (lower is better): {bound} on all 10,000 test images with its "
             "standard error over images, beside the paper's number and binarization. `gap` is ours minus the paper's.", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "## Runs", ""] + [f"- {n}" for n in notes] + ["", "## Sources", ""] + sources
    lines += ["", "## Validation curves", "", "![validation bound against epochs](figures/validation.png)", ""]
    md = "\n".join(lines) + "\n"
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", _html("vaelab reproduce literature", md))
    return out / "report.md"


REPORTS["literature"] = write_literature_report
