"""The options of every `vaelab` command (argparse), and the train flags that are shorthands for config keys."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import __version__
from ..data import REGISTRY
from ..distributions import LIKELIHOODS, POSTERIORS, PRIORS
from ..evaluation import DEFAULT_BUDGET
from ..nets import NETS
from ..training.config import LR_SCHEDULES, OPTIMIZERS, list_presets

# Flags of `vaelab train` that are shorthands for config keys.
TRAIN_FLAGS = {
    "steps": "train.steps",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "optimizer": "train.optimizer",
    "lr_schedule": "train.lr_schedule",
    "warmup": "train.lr_warmup_steps",
    "ema_decay": "train.ema_decay",
    "validation": "data.validation",
    "eval_every": "train.eval_every",
    "patience": "train.patience",
    "seed": "train.seed",
    "device": "train.device",
    "threads": "train.threads",
    "compile": "train.compile",
    "precision": "train.precision",
    "log_every": "train.log_every",
    "checkpoint_every": "train.checkpoint_every",
    "z_dim": "model.z_dim",
    "net": "model.net",
    "hidden": "model.hidden",
    "channels": "model.channels",
    "beta": "objective.beta",
    "objective": "objective.kind",
    "k": "objective.k",
    "kl_warmup": "objective.kl_warmup_steps",
    "free_bits": "objective.free_bits",
    "free_bits_group": "objective.free_bits_group",
    "prior": "model.prior",
    "components": "model.prior_components",
    "posterior": "model.posterior",
    "flow_steps": "model.flow_steps",
    "inference": "model.inference",
    "pixel_layers": "model.pixel_layers",
    "mixtures": "model.mixtures",
    "likelihood": "model.likelihood",
    "decoder_variance": "model.decoder_variance",
    "gen_weight": "model.gen_weight",
    "class_weight": "model.class_weight",
    "dataset": "data.dataset",
    "data_dir": "data.data_dir",
}


def _positive_int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py",
                   help="import a module or Python file that registers models of your own (vaelab.models.register_model) "
                        "first (repeatable; also $VAELAB_PLUGINS, a list separated by os.pathsep). Not needed for a run "
                        "directory, whose config.json records its model's plugin, nor for installed packages' vaelab.models "
                        "entry points (docs/api.md)")


# Two or three examples at the end of each command's --help (and of `vaelab --help`).
EXAMPLES = {
    None: [("vaelab train vae --out runs/vae", "train the reference VAE into runs/vae"),
           ("vaelab eval runs/vae --protocol full", "its bounds on all test images"),
           ("vaelab train --help", "a command's options, and its examples")],
    "train": [("vaelab train vae --out runs/vae", "the reference VAE: 20,000 steps, z = 10, MLPs 300-300"),
              ("vaelab train vae --prior vamp --z-dim 40 --out runs/vamp", "the VampPrior; any setting: --set KEY=VALUE"),
              ("vaelab train --resume runs/vae", "continue a killed run from its newest checkpoint")],
    "eval": [("vaelab eval runs/vae", "the cs236 protocol: 100 test images, -IWAE up to 1000"),
             ("vaelab eval runs/vae --protocol full --json", "all test images, -IWAE up to 5000, one JSON object"),
             ("vaelab eval runs/b16 --disentanglement", "beta-VAE, FactorVAE, MIG and DCI of a dSprites run")],
    "sample": [("vaelab sample runs/vae", "RUN_DIR/samples.png and RUN_DIR/reconstructions.png"),
               ("vaelab sample runs/vae --n 100 --mode sample --out samples.png", "100 Bernoulli draws, one grid"),
               ("vaelab sample runs/cvae --no-recon", "a label-conditioned model: one column per label")],
    "plot": [("vaelab plot runs/vae --kind latents", "posterior means coloured by label"),
             ("vaelab plot runs/vae --kind traversal --out traversal.png", "one latent dimension varied per row"),
             ("vaelab plot runs/vae --kind curves", "loss, KL and Rec against step")],
    "compare": [("vaelab compare runs/vae runs/gmvae --out cmp", "cmp/compare.md, compare.csv and curves.png"),
                ("vaelab compare runs/vae runs/iwae5 runs/iwae50 --out cmp-iwae", "any number of runs")],
    "data": [("vaelab data", "every dataset, where its files are looked for, and whether they are there"),
             ("vaelab data --data-dir ~/data", "the same for another data root")],
    "reproduce": [("vaelab reproduce cs236 --out report", "the course's experiments and report.md / report.html"),
                  ("vaelab reproduce cs236 --quick --out /tmp/smoke", "the same on short schedules, for a smoke test"),
                  ("vaelab reproduce literature --epochs 100 --out lit", "the papers' protocols, capped at 100 epochs")],
}


class _HelpWithExamples(argparse.HelpFormatter):
    """The default formatter, except that an epilog starting with "examples:" keeps its lines as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return text
        return super()._fill_text(text, width, indent)


def _add_examples(parser: argparse.ArgumentParser) -> None:
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, p in [(None, parser), *commands.items()]:
        examples = EXAMPLES.get(name)
        if not examples:
            continue  # a command without examples yet (tests/test_docs.py asks for them)
        width = max(len(command) for command, _ in examples)
        p.epilog = "examples:\n" + "\n".join(f"  {command:<{width}}  # {what}" for command, what in examples)
        p.formatter_class = _HelpWithExamples


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vaelab", description="Variational autoencoders: train, evaluate, sample.")
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model into a new run directory",
                       description="Train a model from a preset (defaults as in docs/reference.md) into a new run directory.")
    p.add_argument("model", nargs="?", help=f"preset name ({', '.join(list_presets())}) or a .toml preset file")
    p.add_argument("--out", type=Path, metavar="RUN_DIR", help="new (or empty) run directory to write")
    p.add_argument("--resume", type=Path, metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint (model, optimiser, schedule, averaged weights, validation, "
                        "step, RNG, batch order); only --steps, --epochs, --patience, --device, --threads, --log-every, "
                        "--checkpoint-every and --no-progress may be given with it. "
                        "An edit to RUN_DIR/config.json that changes anything else is refused")
    p.add_argument("--from", dest="from_run", type=Path, metavar="RUN_DIR",
                   help="start from a finished run (vqvae-prior from a vqvae run): its model settings, dataset and frozen weights")
    p.add_argument("--steps", type=int, help="optimiser steps (default 20000)")
    p.add_argument("--epochs", type=int, help="passes over the training images instead of --steps (default 0: --steps decides)")
    p.add_argument("--batch-size", type=int, help="images per step (default 100)")
    p.add_argument("--lr", type=float, help="learning rate, the peak of a schedule (default 1e-3)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam, adamw or adamax (default adam)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant, step, exponential, multistep, cosine, or plateau (decay on the validation bound); "
                        "train.lr_decay, lr_step, lr_milestones, lr_min, lr_plateau_patience tune them (default constant)")
    p.add_argument("--warmup", type=int, metavar="STEPS", help="linear learning-rate warm-up over STEPS before the schedule (default 0)")
    p.add_argument("--ema-decay", type=float, metavar="D",
                   help="Polyak averaging of the weights with decay D (e.g. 0.999); the averaged weights are validated and kept (default 0: off)")
    p.add_argument("--validation", type=int, metavar="N", help="hold out the last N training images as a validation set (default 0)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="bound the validation images every N steps (train.eval_unit=epochs: epochs), keep the best weights as "
                        "RUN_DIR/best.safetensors (default 0: never)")
    p.add_argument("--patience", type=int, metavar="P", help="early stopping: stop after P validations without a better bound (default 0: off)")
    p.add_argument("--seed", type=int, help="random seed for weights, batches, binarization and samples (default 0)")
    p.add_argument("--z-dim", type=int, help="latent dimensionality (default 10)")
    p.add_argument("--net", choices=NETS, help="encoder and decoder networks: mlp (--hidden) or conv (stride-2 convolutions, --channels) (default mlp)")
    p.add_argument("--hidden", help="hidden widths of the MLPs, comma-separated (default 300,300)")
    p.add_argument("--channels", help="channels of the stride-2 convolutions when --net conv, comma-separated (default 32,64)")
    p.add_argument("--beta", type=float, help="KL weight; beta != 1 gives a beta-VAE (default 1)")
    p.add_argument("--objective", choices=("elbo", "iwae"), help="training objective (default elbo)")
    p.add_argument("--k", type=int, help="samples per input in the training objective (default 1)")
    p.add_argument("--kl-warmup", type=int, metavar="STEPS", help="KL annealing: KL weight rises linearly from 0 to beta over STEPS (default 0: off)")
    p.add_argument("--free-bits", type=float, metavar="LAMBDA", help="free bits: KL cost per group is max(LAMBDA, batch-mean KL) (default 0: off)")
    p.add_argument("--free-bits-group", type=int, metavar="G", help="latent dimensions per free-bits group; 0 = all in one (default 1)")
    p.add_argument("--prior", choices=PRIORS, help="prior p(z): normal N(0, I), mog, a learnable mixture (GMVAE), vamp, the VampPrior, or af, an autoregressive flow (default normal)")
    p.add_argument("--components", type=int, help="mixture components (--prior mog) or pseudo-inputs (--prior vamp) (default 500)")
    p.add_argument("--posterior", choices=tuple(POSTERIORS),
                   help="q(z|x): diagonal, full covariance via a Cholesky factor, or iaf (inverse autoregressive flow) (default diagonal)")
    p.add_argument("--flow-steps", type=int, help="autoregressive steps of --posterior iaf and --prior af (default 2)")
    p.add_argument("--pixel-layers", type=int, help="gated layers of --likelihood pixelcnn (default 3)")
    p.add_argument("--inference", choices=("bottom-up", "ladder"), help="hvae: bottom-up q(z_L|x) ... q(z_1|z_2,x), or ladder (top-down, precision-weighted) (default bottom-up)")
    p.add_argument("--likelihood", choices=LIKELIHOODS,
                   help="p(x|z): bernoulli on binarized pixels, gaussian (fixed variance) / gaussian-learned on pixels in [0, 1], "
                        "pixelcnn (autoregressive over binarized pixels, conditioned on the decoder's output), "
                        "or dlogistic / dgaussian (discretized logistic mixture / Gaussian over 8-bit pixels; bounds also in bits/dim)")
    p.add_argument("--mixtures", type=int, help="logistic components per pixel of --likelihood dlogistic (default 10)")
    p.add_argument("--decoder-variance", type=float, help="variance of the gaussian likelihood (default 0.1)")
    p.add_argument("--gen-weight", type=float, help="model.gen_weight of models trained on a labelled subset: weight of the unlabelled bound; 0 trains the classifier alone (default 1)")
    p.add_argument("--class-weight", type=float, help="model.class_weight of models trained on a labelled subset: weight of the labelled cross-entropy (default 100)")
    p.add_argument("--dataset", metavar="NAME|PATH",
                   help=f"training data: {', '.join(REGISTRY)} (default mnist; dsprites is generated on first use; `vaelab data` lists them), or a path "
                        "to your images: a folder of PNG / JPEG / BMP files (one sub-folder per class optional) or a .npy / .npz "
                        "array; see docs/your-data.md for data.test_path, data.test_fraction and data.image_size")
    p.add_argument("--data-dir", help="data root holding mnist/ and fashion-mnist/ (default $VAELAB_DATA, else ~/.cache/vaelab)")
    p.add_argument("--device", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default 0: 1 for a step under 1 GFLOP, else one per core)")
    p.add_argument("--compile", action="store_const", const=True, help="torch.compile the training objective (slower first steps; a C compiler on the CPU)")
    p.add_argument("--precision", choices=("fp32", "bf16"), help="bf16: mixed precision for the networks, meant for CUDA (default fp32)")
    p.add_argument("--log-every", type=int, help="steps between metrics lines (default 100)")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 5000)")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading missing data files")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any setting, e.g. --set model.activation=relu (repeatable; unknown keys are errors)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _plugin_option(p)

    p = sub.add_parser("eval", help="evaluate a run's bounds on the test set",
                       description="Compute NELBO, KL, Rec and negative IWAE-m bounds (nats) for a trained run.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--protocol", choices=("cs236", "full"),
                   help="cs236: the 100-image subset of docs/reference.md section 1 (MNIST only); full: the whole test split "
                        "(default cs236 for a run trained on MNIST, full for any other)")
    p.add_argument("--iw", type=_positive_int_list, metavar="M,M,...",
                   help="importance-sample counts m for IWAE-m (default 1,10,100,1000 for cs236; 1,10,100,1000,5000 for full)")
    p.add_argument("--images", type=_positive_int, metavar="N",
                   help="the full protocol (implied) on a fixed subset of N test images (the same N images for every run, drawn with seed 0), "
                        "written to RUN_DIR/eval-full-N.json: for bounds too slow on the whole split")
    p.add_argument("--weights", choices=("auto", "best", "final"), default="auto",
                   help="best: the weights with the best validation bound (RUN_DIR/best.safetensors, kept when the run validates); "
                        "final: the final weights (or the newest checkpoint of a run in progress); auto: best when the run has them "
                        "(default auto)")
    p.add_argument("--seed", type=int, default=0, help="seed for the evaluation's z draws (default 0)")
    p.add_argument("--json", action="store_true", help="print all metrics as one JSON object on stdout")
    p.add_argument("--data-dir", help="data root (default: the run's, else $VAELAB_DATA, else ~/.cache/vaelab)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--budget", type=_positive_int, default=DEFAULT_BUDGET,
                   help=f"largest tensor in elements (samples x images x pixels); lower it to save memory (default {DEFAULT_BUDGET})")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for the bounds: faster on long evaluations (IWAE-1000, -5000), "
                        "a few seconds to compile, needs a C compiler on the CPU")
    p.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="fp32",
                   help="the networks' matrix products: fp32, tf32 (CUDA only) or bf16; log-weights and logsumexp stay "
                        "float32 (default fp32; docs/performance.md gives each one's error)")
    p.add_argument("--disentanglement", action="store_true",
                   help="instead of the bounds: the beta-VAE, FactorVAE, MIG and DCI metrics of a run trained on dsprites or color-dsprites, "
                        "written to RUN_DIR/eval-disentanglement.json")
    p.add_argument("--metric-points", type=int, default=10_000,
                   help="training points of each disentanglement metric (at least 10), half as many held out (default 10000, as disentanglement_lib)")
    p.add_argument("--no-save", action="store_true", help="do not write RUN_DIR/eval-<protocol>.json")
    _plugin_option(p)

    p = sub.add_parser("sample", help="write a grid of prior samples and a reconstruction grid",
                       description="Draw images from the prior (and reconstruct test images) as PNG grids.")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--n", type=_positive_int, default=200,
                   help="number of prior samples (default 200), at most 10000 in one grid and 16384 pixels a side; models that "
                        "generate given a label draw n // C rows, one column per label")
    p.add_argument("--ncol", type=_positive_int, help="images per grid row, at most --n (default 20, or --n when fewer)")
    p.add_argument("--out", type=Path, help="PNG for prior samples (default RUN_DIR/samples.png)")
    p.add_argument("--mode", choices=("mean", "sample"), default="mean",
                   help="mean: decoder probabilities; sample: one Bernoulli draw of them (default mean)")
    p.add_argument("--recon-out", type=Path, help="PNG for reconstructions (default RUN_DIR/reconstructions.png)")
    p.add_argument("--recon-n", type=_positive_int, default=60,
                   help="test images to reconstruct (default 60), at most 5000: with their reconstructions 10000 in one grid")
    p.add_argument("--no-recon", action="store_true", help="skip the reconstruction grid (needs no data)")
    p.add_argument("--seed", type=int, default=0, help="seed for z draws (default 0)")
    p.add_argument("--data-dir", help="data root for the test images (default: the run's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    _plugin_option(p)
    p = sub.add_parser("plot", help="latent-space figures and training curves for a run",
                       description="Figures of a trained run, written as PNG (default RUN_DIR/<kind>.png).")
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    p.add_argument("--kind", required=True, choices=PLOT_KINDS,
                   help="interpolation: decoded lines between test images' posterior means; traversal: one latent "
                        "dimension varied per row (64 rows at most: of more dimensions, those of largest KL; not for a "
                        "VQ-VAE's discrete codes); latents: posterior means coloured by label (PCA beyond 2-D); "
                        "kl: mean KL per latent dimension; lossy: test images beside several decodings of each one's code "
                        "(what an autoregressive decoder redraws); curves: loss, KL and rec against step")
    p.add_argument("--out", type=Path, help="output PNG (default RUN_DIR/<kind>.png)")
    p.add_argument("--images", type=_positive_int, default=2000, help="test images for latents and kl (default 2000)")
    p.add_argument("--data-dir", help="data root for the test images (default: the run's)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    _plugin_option(p)

    p = sub.add_parser("compare", help="one table and one plot for several runs",
                       description="Put runs side by side: settings, training time, final training metrics and every "
                                   "evaluation found in each run directory; training curves overlaid.")
    p.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for compare.md, compare.csv and curves.png")
    _plugin_option(p)

    p = sub.add_parser("data", help="list the datasets vaelab knows by name, and whether their files are present",
                       description="One entry per registered dataset: what it is, its image shape, classes and splits, where its "
                                   "files are looked for, and whether they are there (missing ones are downloaded on first use; "
                                   "docs/datasets.md).")
    p.add_argument("--data-dir", help="data root to look in (default $VAELAB_DATA, else ~/.cache/vaelab)")
    p = sub.add_parser("reproduce", help="run a suite of reference experiments and write a report",
                       description="Train and evaluate a suite's experiments with their reference settings, then write "
                                   "OUT/report.md and OUT/report.html (metrics beside the published numbers, figures, wall times). "
                                   "Finished runs under OUT/runs are reused, unfinished ones resumed; a folder there that reproduce did not make "
                                   "is refused, never deleted.")
    p.add_argument("suite", choices=("cs236", "literature"),
                   help="cs236: VAE, GMVAE, SSVAE (gen_weight 0 and 1), conditional VAE; literature: the IWAE, VampPrior and Ladder VAE "
                        "papers' models at their protocols, tested with IWAE-5000 on all test images")
    p.add_argument("--epochs", type=_positive_int,
                   help="cap the experiments given in epochs (literature) at N epochs: a budget below the papers'; "
                        "the same command with a larger N continues them")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--quick", action="store_true", help="short schedules (a few minutes in all on 2 CPU cores), for smoke tests")
    p.add_argument("--runs", type=_positive_int, default=1, help="repeat each experiment with seeds 0..N-1 and report mean and std (default 1)")
    p.add_argument("--steps", type=_positive_int, help="train every experiment for this many steps (overrides the schedule)")
    p.add_argument("--report-only", action="store_true",
                   help="write OUT/report.md from the runs OUT/runs holds, as far as they got: train and evaluate nothing")
    p.add_argument("--only", help="comma-separated experiment names (cs236: vae, gmvae, ssvae_gen0, ssvae, cvae; literature: iwae_vae, "
                                  "iwae_k5, iwae_k50, vamp_vae, vamp_vampprior, vamp_hvae, vamp_hvae_vampprior, ladder)")
    p.add_argument("--data-dir", help="data root (default $VAELAB_DATA, else ~/.cache/vaelab)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch in every training (default 0: chosen per training, as train --threads)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (one line per experiment still says where it is)")
    _add_examples(parser)
    return parser


PLOT_KINDS = ("interpolation", "traversal", "latents", "kl", "lossy", "curves")


