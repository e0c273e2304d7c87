"""What each `vaelab` command does, once its options are parsed (cli.parser)."""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path

import torch

from ..errors import ArgumentError, VaelabError
from ..training.config import load_preset, parse_override, run_label, set_key
from .parser import TRAIN_FLAGS
from .paths import distinct, output_file, output_folder, written

def cmd_train(args) -> int:
    from ..errors import ConfigError
    from ..training import load_json, train, validate
    from ..training.runs import CONFIG_FILE

    if args.resume is not None:
        from ..training.resume import RESUMABLE

        # Flags of settings a resumed run may change (how long it trains, how it is watched); any other is fixed.
        allowed = {flag for flag, key in TRAIN_FLAGS.items() if key in RESUMABLE and flag != "data_dir"}
        given = [f"--{flag.replace('_', '-')}" for flag in TRAIN_FLAGS if getattr(args, flag) is not None and flag not in allowed]
        given += ["--set"] * bool(args.set) + ["--no-download"] * args.no_download + ["--out"] * (args.out is not None)
        given += ["--from"] * (args.from_run is not None)
        if args.model is not None or given:
            raise VaelabError(f"--resume continues the run's saved config; drop {', '.join(([args.model] if args.model else []) + given)} "
                              f"(with --resume only {', '.join(sorted('--' + f.replace('_', '-') for f in allowed))} may be given)")
        if not (args.resume / CONFIG_FILE).is_file():
            raise VaelabError(f"--resume: {args.resume} is not a vaelab run directory (no {CONFIG_FILE})")
        cfg = load_json(args.resume / CONFIG_FILE)
        try:  # an edited config.json is checked as it is read, naming the file
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{args.resume / CONFIG_FILE}: {exc}") from None
        for flag in allowed:
            if getattr(args, flag) is not None:
                set_key(cfg, TRAIN_FLAGS[flag], getattr(args, flag))
        args.out = args.resume
        summary = train(cfg, args.resume, progress=not args.no_progress, resume=True)
        return _report_training(summary, args.out)
    if args.model is None or args.out is None:
        raise VaelabError("give a model or preset and --out RUN_DIR (or --resume RUN_DIR)")
    overrides = [parse_override(text) for text in args.set]
    cfg = load_preset(args.model)
    if args.from_run is not None:
        from ..training.runs import inherit_from_source

        inherit_from_source(cfg, args.from_run)
    for key, value in overrides:  # first: the model decides which model settings the flags and --set may give
        if key == "model.name":
            _switch_model(cfg, value, f"--from {args.from_run}" if args.from_run is not None else f"the preset {args.model}")
    for flag, key in TRAIN_FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            if flag == "data_dir":
                value = str(Path(value).expanduser().resolve())
            set_key(cfg, key, value)
    if args.no_download:
        cfg.data.download = False
    for key, value in overrides:
        if key != "model.name":
            set_key(cfg, key, value)
    return _report_training(train(cfg, args.out, progress=not args.no_progress), args.out)


def _switch_model(cfg, name: str, origin: str) -> None:
    """--set model.name=NAME on the config `origin` gave: a model setting of that config NAME lacks is refused, naming
    where it came from."""
    from ..errors import ConfigError

    try:
        set_key(cfg, "model.name", name)
    except ConfigError as exc:
        if str(exc).startswith("model.name:"):
            raise
        raise ConfigError(f"{exc} ({origin} sets it): start from a preset or .toml file of model {name!r}") from None


PLUGINS_ENV = "VAELAB_PLUGINS"


def use_plugins(args) -> None:
    """Import the plugins $VAELAB_PLUGINS and --plugin name, for the commands that have --plugin."""
    from ..models.plugins import load_plugins, split_specs

    if hasattr(args, "plugin"):
        load_plugins(split_specs(os.environ.get(PLUGINS_ENV, "")), PLUGINS_ENV)
        load_plugins(args.plugin, "--plugin")


def _report_training(summary: dict, run_dir) -> int:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return 0
    final = summary["final"]
    print(f"trained {summary['label']} for {summary['steps']} steps in {summary['train_seconds']:.1f} s "
          f"({summary['images_per_second']:.0f} images/s); last {summary['final_steps']} steps: "
          f"NELBO {final['nelbo']:.2f}, KL {final['kl']:.2f}, Rec {final['rec']:.2f}; run directory {run_dir}")
    validation = summary.get("validation")
    if validation is not None and validation["best"] is not None:
        ended = (f"stopped early after {validation['since_best']} validations without a better bound; "
                 if summary["stopped"] == "early stopping" else "")
        print(f"  {ended}best validation {validation['bound']} {validation['best']:.2f} at step {validation['best_step']} "
              f"(kept as best.safetensors)")
    return 0


def _load(args):
    return _load_weights(args)[:4]


def _load_weights(args):
    """_load, plus which weights were read (file, step, sha256), for an evaluation to record."""
    from .. import data as data_mod
    from ..devices import resolve_device
    from ..training.runs import BEST_FILE, load_run_weights

    device = resolve_device(args.device)
    model, cfg, weights = load_run_weights(args.run_dir, device, getattr(args, "weights", "auto"))
    if weights["weights"] == BEST_FILE:  # said, since `vaelab eval` of a run that validates reads these by default
        print(f"vaelab: the weights with the best validation bound, from step {weights['step']} ({BEST_FILE}; "
              f"--weights final for the final ones)", file=sys.stderr, flush=True)
    data_dir = args.data_dir or cfg.data.data_dir
    return model, cfg, device, lambda: data_mod.load_for(cfg.data, "test", device, data_dir), weights


def cmd_eval(args) -> int:
    from ..evaluation import evaluate
    from ..report.compare import COMPUTED_ON

    if args.disentanglement:  # checked before the weights are read
        from ..evaluation.disentanglement import check_metric_points

        check_metric_points(args.metric_points, "--metric-points")
    model, cfg, _, load_test, weights = _load_weights(args)
    if args.disentanglement:
        return _eval_disentanglement(args, model, cfg, weights)
    if args.protocol is None:  # the cs236 subset exists for MNIST's test split only
        args.protocol = "cs236" if cfg.data.dataset == "mnist" and args.images is None else "full"
    if args.images is not None and args.protocol != "full":
        raise ArgumentError(f"--images: a subset of the full protocol's test split; --protocol {args.protocol} has its own images")
    if args.protocol == "cs236" and cfg.data.dataset != "mnist":
        raise VaelabError(f"--protocol cs236 is defined on MNIST's test subset; {args.run_dir} was trained on {cfg.data.dataset}: use --protocol full")
    test = load_test()
    if args.images is not None and args.images > len(test):
        raise ArgumentError(f"--images: a subset of {args.images} asked, {cfg.data.dataset}'s test split has {len(test)} images")
    def say(label: str) -> None:  # each phase as it starts, on stderr: with --json too, whose stdout stays one object
        print(f"  {label} ...", file=sys.stderr, flush=True)

    result = evaluate(model, test, args.protocol, args.iw, args.seed, args.budget, progress=say, compile=args.compile,
                      precision=args.precision, images=args.images)
    result = {"run": str(args.run_dir), "model": cfg.model.name, "label": run_label(cfg), "dataset": cfg.data.dataset,
              COMPUTED_ON: weights, **result}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{run_label(cfg)} on {cfg.data.dataset}, protocol {args.protocol} ({result['images']} test images"
              + (f", a fixed subset of {result['subset_of']}" if args.images else "") + "), nats:")
        groups = {key[3:]: value for key, value in result.items() if key.startswith("kl_")}
        print(f"  NELBO {result['nelbo']:.2f}   KL {result['kl']:.2f}   Rec {result['rec']:.2f}"
              + (f"   ({', '.join(f'KL_{name} {value:.2f}' for name, value in groups.items())})" if len(groups) > 1 else "")
              + ("" if result["bound"] == "log p(x)" else "   [bounds on log p(x | y)]"))
        if "accuracy" in result:
            print(f"  accuracy {result['accuracy']:.4f} on {result['accuracy_images']} test images")
        for key, value in result.items():
            if key.startswith("niwae_") and not key.endswith("_sem"):
                sem = result.get(f"{key}_sem")
                print(f"  -IWAE-{key[6:]:<5} {value:.2f}" + (f"  (+- {sem:.2f} s.e.)" if sem is not None else ""))
        if "bpd_nelbo" in result:  # likelihoods over 8-bit pixels
            print("  bits/dim: " + "   ".join(f"{'NELBO' if key == 'bpd_nelbo' else '-IWAE-' + key[10:]} {value:.4f}"
                                              for key, value in result.items() if key.startswith("bpd_")))
        if result["deterministic_posterior"]:
            print("  the posterior is a point mass: IWAE-m equals the ELBO for every m, computed once")
        if "codebook_perplexity" in result:
            print(f"  codebook perplexity {result['codebook_perplexity']:.1f} of {result['codebook_size']} codes, "
                  f"{100 * result['codes_in_use']:.1f} % in use on these images")
        print(f"  active units {result['active_units']} of {result['z_dim']}")
        for key, value in result.items():
            if key.startswith("mutual_information"):
                suffix = key[len("mutual_information"):]
                print(f"  ELBO surgery{suffix.replace('_', ' of ')} on {result['surgery_images']} images: I(x; z) {value:.2f} "
                      f"(at most log N = {math.log(result['surgery_images']):.2f}), marginal KL(q(z) || p(z)) {result['marginal_kl' + suffix]:.2f}")
        print(f"  ({result['seconds']:.1f} s)")
    return _save_result(args, f"eval-{args.protocol}{'' if args.images is None else f'-{args.images}'}.json", result)


def _save_result(args, name: str, result: dict) -> int:
    """RUN_DIR/<name>, written after the results are printed: a run directory that cannot be written then costs
    the file, not the evaluation (one error line after the results, exit 1). A signal meanwhile waits for the write
    (no temporary file left behind), then stops the command."""
    from ..training.files import atomic_write_text
    from ..training.stopping import StopRequest

    if not args.no_save:
        sys.stdout.flush()
        with StopRequest():
            atomic_write_text(args.run_dir / name, json.dumps(result, indent=2) + "\n")
    return 0


def _eval_disentanglement(args, model, cfg, weights) -> int:
    from ..data import factor_data
    from ..evaluation.disentanglement import evaluate_disentanglement
    from ..report.compare import COMPUTED_ON
    from ..training.stopping import phase

    factors = factor_data(cfg.data.dataset, args.data_dir or cfg.data.data_dir)
    with phase(f"computing the disentanglement metrics ({args.metric_points} training points per metric)"):
        scores = evaluate_disentanglement(model, factors, args.seed, args.metric_points)
    result = {"run": str(args.run_dir), "model": cfg.model.name, "label": run_label(cfg), "dataset": cfg.data.dataset,
              COMPUTED_ON: weights, **scores}
    if args.json:
        print(json.dumps(result))
        return _save_result(args, "eval-disentanglement.json", result)
    print(f"{run_label(cfg)} on {cfg.data.dataset}: disentanglement ({args.metric_points} training points per metric)")
    print(f"  beta-VAE metric {result['beta_vae']:.3f}   FactorVAE metric {result['factor_vae']:.3f}   MIG {result['mig']:.3f}")
    print(f"  DCI disentanglement {result['dci_disentanglement']:.3f}   completeness {result['dci_completeness']:.3f}   "
          f"informativeness {result['dci_informativeness']:.3f}")
    print("  MIG per factor: " + ", ".join(f"{name} {gap:.3f}" for name, gap in zip(result["factors"], result["mig_per_factor"])))
    print(f"  ({result['seconds']:.1f} s)")
    return _save_result(args, "eval-disentanglement.json", result)


def cmd_sample(args) -> int:
    from ..report.grids import write_sample_grids

    model, cfg, _, load_test = _load(args)
    targets = [output_file(args.out, args.run_dir / "samples.png", "--out")]
    if not args.no_recon:
        targets.append(output_file(args.recon_out, args.run_dir / "reconstructions.png", "--recon-out"))
        distinct(**{"--out": targets[0], "--recon-out": targets[1]})
    what = f"drawing {args.n} samples" + ("" if args.no_recon else f" and {args.recon_n} reconstructions")
    with written(*targets) as partial, _drawing(model, what):
        write_sample_grids(model, cfg, None if args.no_recon else load_test(), partial[0], partial[-1], n=args.n, ncol=args.ncol,
                           seed=args.seed, mode=args.mode, recon_n=args.recon_n)
    for path in targets:
        print(f"wrote {path}")
    return 0


def _drawing(model, what: str):
    """A line as drawing from `model` starts and ends (on stderr) where it is autoregressive: a network pass per pixel,
    minutes on a CPU; nothing where one pass draws an image."""
    from ..training.board import sampling_passes
    from ..training.stopping import phase

    passes = sampling_passes(model)
    return phase(f"{what} ({passes} network passes each)") if passes > 1 else nullcontext()


def cmd_plot(args) -> int:
    target = output_file(args.out, args.run_dir / f"{args.kind}.png", "--out")
    with written(target) as (out,):
        _draw_plot(args, out)
    print(f"wrote {target}")
    return 0


def _draw_plot(args, out: Path) -> None:
    from .. import evaluation
    from ..report import figures
    from ..training.files import read_jsonl
    from ..training.runs import METRICS_FILE

    if args.kind == "curves":
        if not (args.run_dir / METRICS_FILE).is_file():
            raise VaelabError(f"{args.run_dir}: no {METRICS_FILE}; not a vaelab run directory")
        figures.training_curves({args.run_dir.name: read_jsonl(args.run_dir / METRICS_FILE)}, out)
        return
    model, cfg, device, load_test = _load(args)
    x, y = evaluation.evaluation_set("full", load_test(), model.binary_pixels)
    decodes = args.kind in ("interpolation", "traversal", "lossy")
    with torch.no_grad(), _drawing(model, f"drawing the {args.kind} figure") if decodes else nullcontext():
        label = run_label(cfg)
        if args.kind == "interpolation":
            figures.interpolation_figure(model, x, out, f"{args.run_dir.name} ({label}): interpolations between posterior means", y=y)
        elif args.kind == "traversal":
            figures.check_traversal(model)  # a discrete code is refused before its KL is computed
            notes = _factor_notes(args.run_dir)  # rows then name the factor each latent captures best
            kl = evaluation.kl_per_dimension(model, x[: args.images], None if y is None else y[: args.images])
            figures.traversal_figure(model, x, out, f"{args.run_dir.name} ({label}): one latent varied per row", y=y, notes=notes, kl=kl)
        elif args.kind == "lossy":
            figures.lossy_codes_figure(model, x, out, f"{args.run_dir.name} ({label}): what the code keeps", y=y)
        elif args.kind == "latents":
            figures.latent_scatter(model, x[: args.images], y[: args.images], out, title=f"{args.run_dir.name}: posterior means")
        else:
            xs, ys = x[: args.images], None if y is None else y[: args.images]
            kl = evaluation.kl_per_dimension(model, xs, ys)
            per_group = kl or evaluation.active_units(model, xs, ys)
            per_dimension = torch.cat(list(per_group.values()))
            surgery = evaluation.elbo_surgery(model, xs[: evaluation.SURGERY_IMAGES], None if ys is None else ys[: evaluation.SURGERY_IMAGES])
            figures.kl_diagnostics_figure(per_dimension, bool(kl), next(iter(surgery.values())) if len(surgery) == 1 else None, out,
                                          title=f"{args.run_dir.name} ({label}) on {len(xs)} test images",
                                          groups=[(name, v.shape[0]) for name, v in per_group.items()])


def _factor_notes(run_dir: Path) -> list[str] | None:
    """The factor each latent carries most about, from RUN_DIR/eval-disentanglement.json (checked; a malformed one is
    one error naming it); none when there is no such file, it names no factors, or it was computed on other weights."""
    from ..errors import warn
    from ..report import figures
    from ..report.compare import current_weights, freshness, read_disentanglement

    path = run_dir / "eval-disentanglement.json"
    if not path.is_file():
        return None
    scores = read_disentanglement(path)
    state, why = freshness(scores, current_weights(run_dir))
    if state == "stale":
        warn(f"{path} {why}: rows are not named by factor (run vaelab eval {run_dir} --disentanglement again)")
        return None
    return figures.factor_notes(scores) if scores["factors"] else None


def cmd_reproduce(args) -> int:
    from ..report import literature  # noqa: F401  (registers the literature suite)
    from ..report.reproduce import SUITES, reproduce

    only = None
    if args.only:
        only = [name.strip() for name in args.only.split(",") if name.strip()]
        known = {e.name for e in SUITES[args.suite]}
        unknown = sorted(set(only) - known)
        if unknown:
            raise VaelabError(f"--only: unknown experiment(s) {', '.join(unknown)} (choose from {', '.join(sorted(known))})")
    data_dir = str(Path(args.data_dir).expanduser().resolve()) if args.data_dir else None
    report = reproduce(args.suite, output_folder(args.out, "--out"), quick=args.quick, runs=args.runs, data_dir=data_dir, device=args.device,
                       steps=args.steps, progress=not args.no_progress, only=only, threads=args.threads, epochs=args.epochs,
                       report_only=args.report_only)
    print(report.read_text())
    print(f"wrote {report} and {report.with_suffix('.html')}")
    return 0


def cmd_compare(args) -> int:
    from ..errors import warn
    from ..models.plugins import PluginError
    from ..report.compare import compare_runs
    from ..training import load_json
    from ..training.runs import CONFIG_FILE

    for run_dir in args.run_dirs:  # imports each run's plugin; one that cannot be imported costs its settings column
        try:
            load_json(run_dir / CONFIG_FILE)
        except PluginError as exc:
            warn(f"{exc}: its settings are shown as config.json records them")
        except VaelabError:
            pass  # compare_runs says what it cannot read
    table = compare_runs(args.run_dirs, output_folder(args.out, "--out"))
    print(table)
    print(f"wrote {args.out / 'compare.md'}, {args.out / 'compare.csv'}, {args.out / 'curves.png'}")
    return 0




def cmd_data(args) -> int:
    from ..data.catalog import catalog
    from ..data.datasets import resolve_data_root

    root, _ = resolve_data_root(args.data_dir)
    print(f"data root: {root}")
    for entry in catalog(args.data_dir):
        shape = " x ".join(str(s) for s in entry.image_shape)
        classes = f"{len(entry.classes)} classes ({', '.join(entry.classes[:4])}{', ...' if len(entry.classes) > 4 else ''})" \
            if entry.classes else "no labels"
        state = {True: "present", False: "missing (downloaded on first use)", None: "the dataset does not list its files"}[entry.present]
        if entry.present is False and not entry.files:  # generated, not downloaded
            state = "not generated yet (generated on first use)"
        elif entry.present is False:
            absent = [f.name for f in entry.files if not f.exists()]
            how = "downloaded on first use" if entry.downloaded else "not downloaded: put them there by hand, docs/datasets.md"
            state = f"missing {', '.join(absent)} ({how})"
        print(f"\n{entry.name}: {entry.description}")
        print(f"  images {shape}, {classes}; splits {', '.join(entry.splits)}")
        print(f"  files in {entry.folder if entry.folder is not None else root}: {state}")
    return 0
