"""Typed run configuration: dataclasses with documented defaults, TOML presets, checked overrides.

A run is fully described by a RunConfig; its resolved form is saved as `config.json` in the run
directory, which alone rebuilds the model. Overrides use dotted keys (`--set train.steps=500`) and
are read against the dataclasses by overrides.py (unknown keys and ill-typed values are errors);
validate() checks ranges and what the model supports.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import REGISTRY, is_path
from ..distributions import LIKELIHOODS
from ..errors import ConfigError
from ..models import MODELS, ModelConfig, build_model, model_class
from ..models.plugins import absolute, load_plugins, load_recorded_plugins, plugin_of
from ..nets import ACTIVATIONS, NETS, check_shape
from .files import atomic_write_text
from .legacy import migrate_legacy
from .overrides import apply_dict, parse_override, set_key  # noqa: F401 (part of this module's interface)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ObjectiveConfig:
    kind: str = "elbo"
    """Training objective: elbo (VAE / beta-VAE) or iwae (importance weighted, k samples)."""
    k: int = 1
    """Samples z ~ q(z|x) per input in the training objective."""
    beta: float = 1.0
    """Weight of the KL term (beta-VAE); 1 is the plain VAE. Evaluation always uses beta = 1."""
    kl_warmup_steps: int = 0
    """KL annealing: the KL weight rises linearly from 0 to beta over this many steps (0: off)."""
    free_bits: float = 0.0
    """Free bits lambda, nats per group: the KL cost of a group is max(lambda, batch-mean KL) (0: off)."""
    free_bits_group: int = 1
    """Latent dimensions per free-bits block within each latent group (1: per dimension; 0: each latent
    group is one block)."""


@dataclass
class DataConfig:
    dataset: str = "mnist"
    """A registered dataset (`vaelab data` lists them: mnist, fashion-mnist, svhn, cifar10, static-mnist, omniglot,
    caltech101, frey, dsprites and color-dsprites, generated on first use; docs/datasets.md), or user: your images at
    data.path (`--dataset PATH` sets both; docs/your-data.md)."""
    path: typing.Optional[str] = None
    """Your images: a folder of PNG / JPEG / BMP files (optionally one sub-folder per class) or a .npy / .npz array;
    when set, it is the training data. Recorded as an absolute path."""
    test_path: typing.Optional[str] = None
    """Your test images, laid out as data.path; without it data.test_fraction of data.path's images are held out."""
    test_fraction: float = 0.1
    """The fraction of data.path's images held out as the test split (drawn with a fixed seed) when data.test_path is not set."""
    image_size: typing.Optional[int] = None
    """Center-crop your images to a square and resize them to this side; needed when they differ in size."""
    data_dir: typing.Optional[str] = None
    """Root holding mnist/ and fashion-mnist/; default $VAELAB_DATA, else ~/.cache/vaelab."""
    download: bool = True
    """Download missing files from the canonical mirrors (checksums verified)."""
    labelled: str = "cs236"
    """Labelled subset of models trained on one (ssvae): cs236 (the reference's 10 positions per digit;
    MNIST only) or random."""
    labels_per_class: int = 10
    """Labelled images per class when labelled = random."""
    validation: int = 0
    """Hold out the last N training images as a validation set (the VampPrior paper: 10,000 of MNIST's 60,000), never
    trained on; train.eval_every says how often it is bounded (0: no validation set)."""


@dataclass
class TrainConfig:
    steps: int = 20000
    """Optimiser steps (the reference trains 20,000); train.epochs, when set, decides it instead."""
    epochs: int = 0
    """Passes over the training set (0: train.steps decides): train.steps becomes epochs x (training images //
    batch_size), the last partial batch of each epoch dropped, and is recorded so in config.json."""
    batch_size: int = 100
    """Images per step."""
    lr: float = 1e-3
    """Learning rate (the peak of a schedule)."""
    optimizer: str = "adam"
    """adam, adamw (decoupled weight decay) or adamax (Adam's infinity-norm variant, as NVAE)."""
    weight_decay: float = 0.0
    """Weight decay: decoupled for adamw, added to the gradient (L2) for adam and adamax (0: none)."""
    eps: float = 1e-8
    """The optimiser's epsilon, added to the root of the second moment (the IWAE paper: 1e-4)."""
    lr_schedule: str = "constant"
    """How the learning rate changes, stepped once per optimiser step (torch.optim.lr_scheduler): constant; step (times
    lr_decay every lr_step steps); exponential (the same decay spread over every step); multistep (times lr_decay at each
    step of lr_milestones); cosine (down to lr_min at the last step); plateau (times lr_decay after lr_plateau_patience
    validations without a better bound; needs data.validation)."""
    lr_decay: float = 0.1
    """The factor of the step, exponential, multistep and plateau schedules."""
    lr_step: int = 10000
    """Steps per decay by lr_decay of the step and exponential schedules."""
    lr_milestones: tuple[int, ...] = ()
    """Steps at which the multistep schedule multiplies the learning rate by lr_decay (increasing)."""
    lr_min: float = 0.0
    """The cosine schedule's final learning rate."""
    lr_plateau_patience: int = 10
    """Validations without a better bound before the plateau schedule decays the learning rate."""
    lr_warmup_steps: int = 0
    """Linear warm-up: the learning rate rises from lr / lr_warmup_steps to lr over this many steps, then follows
    lr_schedule (0: none)."""
    ema_decay: float = 0.0
    """Polyak averaging of the weights, w_avg <- d w_avg + (1 - d) w after every step, with d this decay (0: off;
    0.999 or 0.9999 are usual). Validation, best.safetensors and model.safetensors then hold the averaged weights."""
    eval_every: int = 0
    """Bound the validation images (data.validation) every this many train.eval_unit, log it to validation.jsonl,
    TensorBoard and the progress bar, and keep the best weights as best.safetensors (0: never)."""
    eval_unit: str = "steps"
    """The unit of train.eval_every: steps or epochs."""
    validation_iw: int = 0
    """Also bound the validation images by IWAE-k with this k (>= 2), and choose the best weights by it (0: by the NELBO)."""
    grad_normalize: bool = False
    """Divide each parameter's gradient by its L2 norm (+ 1e-7) before the optimiser step: the VampPrior authors'
    AdamNormGrad with train.optimizer=adam."""
    patience_from: int = 0
    """Validations before this step never count towards train.patience (the VampPrior code counts none during its
    100 epochs of KL warm-up); the best weights are kept from the first validation on."""
    patience: int = 0
    """Early stopping: stop after this many validations in a row without a better bound (0: train to the end).
    The VampPrior paper's look-ahead of 50 epochs is train.patience=50 with train.eval_every=1, train.eval_unit=epochs."""
    seed: int = 0
    """Seeds weights, batch order, binarization and z samples."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto (cuda when available)."""
    log_every: int = 100
    """Steps between lines in metrics.jsonl and progress-bar updates."""
    checkpoint_every: int = 5000
    """Steps between checkpoints under checkpoints/ (the final weights are always saved)."""
    checkpoint_seconds: float = 60.0
    """Also write a checkpoint when this many seconds have passed since the last one, so a kill loses at
    most about this much work however long a step takes (0: by checkpoint_every only)."""
    keep_checkpoints: int = 3
    """How many periodic checkpoints to keep."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    max_nonfinite_steps: int = 10
    """A step whose loss or gradient is not finite is skipped; this many in a row stop the run."""
    max_loss_per_element: float = 1000.0
    """A logged mean loss beyond this many nats per data element (784 for MNIST) stops the run as diverged:
    a fair coin costs 0.69 nats per binary pixel, so no model that is learning gets near (0: no limit)."""
    threads: int = 0
    """CPU threads for torch's kernels. 0: chosen by the work in a training step, counted once at the start:
    1 thread below 1 GFLOP a step (MLPs at batch 100, where a second thread gains little and fights other
    jobs for the cores), one per core above (training/threads.py)."""
    compile: bool = False
    """torch.compile the training objective: the model's forward, densities and loss, and their backward
    (the first steps are slower while it compiles; needs a C compiler on the CPU)."""
    cuda_graphs: bool = False
    """Capture the training step (forward, backward, the non-finite check and fused Adam) as one CUDA graph and
    replay it at every step, after 3 eager warm-up steps (training/captured.py): far fewer kernel launches from
    Python where they, not the arithmetic, bound a step (small batches on a GPU). CUDA only, one process, with
    adam or adamw at a constant learning rate (no lr_schedule or lr_warmup_steps), without train.compile."""
    label: str = ""
    """The run's name in summaries, `vaelab eval` and `compare`: the preset it was made from (gmvae for a
    VAE with a mixture prior), set when a preset is loaded; empty, or a preset of another model, means the model's name."""
    precision: str = "fp32"
    """fp32, or bf16: autocast the networks to bfloat16 (mixed precision, meant for CUDA); densities,
    losses and Adam stay in float32."""
    sample_grids: str = "auto"
    """TensorBoard's grid of samples at each checkpoint and at the end: always, never, or auto: unless sampling the
    model is autoregressive (a PixelCNN likelihood or code prior: a network pass per pixel, minutes on a CPU)."""


def _default_model_config() -> ModelConfig:
    return model_class("vae").Config()


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=_default_model_config)
    """The model's settings: an instance of its own Config class (ModelConfig plus its settings)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    plugins: tuple[str, ...] = ()
    """Plugins (modules, or .py files by absolute path) that define model.name: training a new run records the one
    that registered its model (models.plugins.plugin_of). Reading its config.json imports a recorded module (code
    installed in this environment) when model.name is not registered; a recorded .py file is never run on a run
    directory's word: it must be given again (--plugin FILE or VAELAB_PLUGINS), and the error says so. Empty
    (vaelab's own models) it is left out of config.json."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if not d["plugins"]:  # config.json of vaelab's own models stays as older versions wrote and read it
            del d["plugins"]
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "config", named_by_user: bool = False) -> "RunConfig":
        """The config of a dict (config.json, a preset). `named_by_user`: the dict is a preset the user gave, whose
        plugins are run like --plugin's; a run directory's are imported only as load_recorded_plugins allows."""
        cfg = cls()
        if isinstance(d, dict) and "plugins" in d:  # imported before model.name is read: they may register it
            d = dict(d)
            try:
                set_key(cfg, "plugins", d.pop("plugins"))
            except ConfigError as exc:
                raise ConfigError(f"{source}: {exc}") from None
            name = d.get("model", {}).get("name") if isinstance(d.get("model"), dict) else None
            if isinstance(name, str) and name not in MODELS:
                (load_plugins if named_by_user else load_recorded_plugins)(cfg.plugins, f"{source}: plugins (of model {name!r})")
        apply_dict(cfg, d, source)
        return cfg


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.toml"))


def load_preset(name_or_path: str) -> RunConfig:
    """A preset by name (src/vaelab/presets/NAME.toml) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = PRESET_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            raise ConfigError(f"unknown model or preset {name_or_path!r} (choose from {', '.join(list_presets())}, or give a .toml file)")
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: preset file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    if isinstance(data.get("plugins"), list):  # a plugin file is named relative to the preset file
        data["plugins"] = [absolute(spec, path.parent) if isinstance(spec, str) else spec for spec in data["plugins"]]
    cfg = RunConfig.from_dict(data, source=str(path), named_by_user=True)
    cfg.train.label = cfg.train.label or path.stem
    return cfg


def run_label(cfg: RunConfig) -> str:
    """What to call a run: its label (the preset it came from), else its model's name. A label naming one of
    vaelab's presets of another model is not the run's (`vaelab train vae --set model.name=toy` trains a toy,
    though the label records the preset vae): the model's name is."""
    label = cfg.train.label
    return label if label and _preset_model(label) in (None, cfg.model.name) else cfg.model.name


@functools.lru_cache(maxsize=None)
def _preset_model(name: str) -> str | None:
    """The model of vaelab's preset `name`; None when there is no such preset."""
    path = PRESET_DIR / f"{name}.toml"
    if not path.is_file():
        return None
    return tomllib.loads(path.read_text()).get("model", {}).get("name", ModelConfig.name)


def record_plugin(cfg: RunConfig) -> None:
    """A new run's config names the plugin that registered its model (none for vaelab's own), so that reading its
    config.json in another process imports it again; plugins named already are kept."""
    if not cfg.plugins and plugin_of(cfg.model.name) is not None:
        cfg.plugins = (plugin_of(cfg.model.name),)


def validate(cfg: RunConfig) -> None:
    """Refuse out-of-range settings and settings the model does not support, naming the setting."""
    for key, value in _float_settings(cfg):  # first: inf or nan would otherwise surface as a non-finite loss
        if not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number (got {value!r})")
    m, o = cfg.model, cfg.objective
    cls = model_class(m.name)
    spec = cls.spec
    defaults = ObjectiveConfig()
    checks = [
        (isinstance(m, cls.Config), "model.name", f"settings of type {type(m).__name__} do not belong to this model"),
        (m.z_dim >= 1, "model.z_dim", "must be >= 1"),
        (m.x_dim >= 1, "model.x_dim", "must be >= 1"),
        (len(m.image_shape) in (1, 2, 3) and all(s >= 1 for s in m.image_shape) and math.prod(m.image_shape) == m.x_dim,
         "model.image_shape", f"must be (D,), (H, W) or (C, H, W) with as many entries as model.x_dim = {m.x_dim}"),
        (m.net in NETS, "model.net", f"must be one of {', '.join(NETS)}"),
        (m.net in spec.nets, "model.net", f"model {m.name!r} supports {', '.join(spec.nets)}"),
        (all(h >= 1 for h in m.hidden), "model.hidden", "widths must be >= 1"),
        (len(m.channels) >= 1 and all(c >= 1 for c in m.channels), "model.channels", "must be one or more widths >= 1"),
        (m.net == "conv" or tuple(m.channels) == _model_default(m, "channels"), "model.channels", "applies to net = conv only"),
        (m.net != "conv" or _conv_shape_ok(m), "model.net", f"conv needs images (H, W) or (C, H, W) whose sides divide by "
                                                             f"2^{len(m.channels)} (model.channels has {len(m.channels)} entries)"),
        (m.activation in ACTIVATIONS, "model.activation", f"must be one of {', '.join(ACTIVATIONS)}"),
        (m.likelihood in LIKELIHOODS, "model.likelihood", f"must be one of {', '.join(LIKELIHOODS)}"),
        (m.likelihood in spec.likelihoods, "model.likelihood", f"model {m.name!r} supports {', '.join(spec.likelihoods)}"),
        (DECODER_VARIANCE[0] <= m.decoder_variance <= DECODER_VARIANCE[1], "model.decoder_variance",
         f"must be in [{DECODER_VARIANCE[0]:g}, {DECODER_VARIANCE[1]:g}]"),
        (m.pixel_layers >= 1 and m.pixel_channels >= 1, "model.pixel_layers", "pixel_layers and pixel_channels must be >= 1"),
        (m.likelihood == "pixelcnn" or (m.pixel_layers, m.pixel_channels) == (ModelConfig.pixel_layers, ModelConfig.pixel_channels),
         "model.pixel_layers", "pixel_layers and pixel_channels apply to likelihood = pixelcnn only"),
        (m.mixtures >= 1, "model.mixtures", "must be >= 1"),
        (m.likelihood == "dlogistic" or m.mixtures == ModelConfig.mixtures, "model.mixtures", "applies to likelihood = dlogistic only"),
        (m.likelihood != "pixelcnn" or len(m.image_shape) == 2 or (len(m.image_shape) == 3 and m.image_shape[0] == 1),
         "model.likelihood", f"pixelcnn models single-channel images; this dataset's are {tuple(m.image_shape)}"),
        (o.kind in ("elbo", "iwae"), "objective.kind", "must be elbo or iwae"),
        (o.kind in spec.objectives, "objective.kind", f"model {m.name!r} supports {', '.join(spec.objectives)}"),
        (o.k >= 1, "objective.k", "must be >= 1"),
        (o.kind != "iwae" or o.k >= 2, "objective.k", "the IWAE objective with k = 1 is the ELBO; give k >= 2 (--k 5 or 50 as in Burda et al.)"),
        (o.beta >= 0, "objective.beta", "must be >= 0"),
        (o.kl_warmup_steps >= 0, "objective.kl_warmup_steps", "must be >= 0"),
        (o.free_bits >= 0, "objective.free_bits", "must be >= 0"),
        (o.free_bits_group >= 0, "objective.free_bits_group", "must be >= 0"),
        (o.free_bits == 0 or o.kind == "elbo", "objective.free_bits", "applies to the elbo objective only"),
        *[(getattr(o, f.name) == getattr(defaults, f.name) or f.name in spec.objective_settings, f"objective.{f.name}",
           f"not supported by model {m.name!r}") for f in dataclasses.fields(o) if f.name != "kind"],
        (cfg.data.dataset in REGISTRY or bool(cfg.data.path) or is_path(cfg.data.dataset), "data.dataset",
         f"must be one of {', '.join(REGISTRY)}, or a path to your images"),
        (cfg.data.dataset != "user" or bool(cfg.data.path), "data.path", "data.dataset = user needs the path of your images"),
        (0 < cfg.data.test_fraction < 1, "data.test_fraction", "must lie strictly between 0 and 1"),
        (cfg.data.image_size is None or cfg.data.image_size >= 1, "data.image_size", "must be >= 1"),
        *[(bool(cfg.data.path) or is_path(cfg.data.dataset) or getattr(cfg.data, key) == getattr(DataConfig, key), f"data.{key}",
           "applies to your own images (data.path) only") for key in ("test_path", "test_fraction", "image_size")],
        (cfg.data.labelled in ("cs236", "random"), "data.labelled", "must be cs236 or random"),
        (spec.labels == "subset" or (cfg.data.labelled, cfg.data.labels_per_class) == (DataConfig.labelled, DataConfig.labels_per_class),
         "data.labelled", f"applies to models trained on a labelled subset; {m.name!r} is not"),
        (cfg.data.labelled != "cs236" or cfg.data.dataset == "mnist" or spec.labels != "subset", "data.labelled",
         "cs236 positions exist for mnist only; use random"),
        (cfg.data.labels_per_class >= 1, "data.labels_per_class", "must be >= 1"),
        *cls.settings_checks(m, o),
        (cfg.train.steps >= 1, "train.steps", "must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (0 < cfg.train.lr <= MAX_LR, "train.lr", f"must be > 0 and <= {MAX_LR:g}"),
        (0 <= cfg.train.seed < 2**64, "train.seed", "must be in 0 .. 2^64 - 1"),
        (cfg.train.log_every >= 1, "train.log_every", "must be >= 1"),
        (cfg.train.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1"),
        (cfg.train.checkpoint_seconds >= 0, "train.checkpoint_seconds", "must be >= 0"),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1"),
        (cfg.train.grad_clip >= 0, "train.grad_clip", "must be >= 0"),
        (cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1"),
        (cfg.train.max_loss_per_element >= 0, "train.max_loss_per_element", "must be >= 0"),
        (cfg.train.threads >= 0, "train.threads", "must be >= 0"),
        (cfg.train.precision in ("fp32", "bf16"), "train.precision", "must be fp32 or bf16"),
        (cfg.train.sample_grids in ("auto", "always", "never"), "train.sample_grids", "must be auto, always or never"),
        *protocol_checks(cfg),
        *cuda_graph_checks(cfg.train),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why} (got {_get(cfg, key)!r})")
    parameters = count_parameters(m)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"model: these settings make {parameters:.3g} parameters, over the limit of {MAX_PARAMETERS:.0e} "
                          f"(4 GB of float32); reduce model.hidden, model.channels, model.z_dim or model.prior_components")


OPTIMIZERS = ("adam", "adamw", "adamax")
LR_SCHEDULES = ("constant", "step", "exponential", "multistep", "cosine", "plateau")
# The schedule settings each schedule reads; any other schedule refuses them.
_SCHEDULE_SETTINGS = {"lr_decay": ("step", "exponential", "multistep", "plateau"), "lr_step": ("step", "exponential"),
                      "lr_milestones": ("multistep",), "lr_min": ("cosine",), "lr_plateau_patience": ("plateau",)}


def protocol_checks(cfg: RunConfig) -> list[tuple[bool, str, str]]:
    """The checks of the training protocol's settings: epochs, optimiser, schedule, averaging, validation."""
    t, validating = cfg.train, cfg.train.eval_every > 0
    milestones = list(t.lr_milestones)
    return [
        (t.epochs >= 0, "train.epochs", "must be >= 0"),
        (t.optimizer in OPTIMIZERS, "train.optimizer", f"must be one of {', '.join(OPTIMIZERS)}"),
        (t.weight_decay >= 0, "train.weight_decay", "must be >= 0"),
        (0 < t.eps < 1, "train.eps", "must be in (0, 1)"),
        (t.lr_schedule in LR_SCHEDULES, "train.lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}"),
        (0 < t.lr_decay <= 1, "train.lr_decay", "must be in (0, 1]"),
        (t.lr_step >= 1, "train.lr_step", "must be >= 1"),
        (all(m >= 1 for m in milestones) and milestones == sorted(set(milestones)), "train.lr_milestones",
         "must be increasing steps >= 1"),
        (t.lr_schedule != "multistep" or bool(milestones), "train.lr_milestones", "the multistep schedule needs one or more steps"),
        (not milestones or milestones[0] > t.lr_warmup_steps, "train.lr_milestones", "must come after the warm-up (train.lr_warmup_steps)"),
        (0 <= t.lr_min < t.lr, "train.lr_min", "must be >= 0 and below train.lr"),
        (t.lr_plateau_patience >= 1, "train.lr_plateau_patience", "must be >= 1"),
        *[(t.lr_schedule in schedules or _as_tuple(getattr(t, key)) == _as_tuple(getattr(TrainConfig, key)), f"train.{key}",
           f"applies to the {', '.join(schedules)} schedule{'s' if len(schedules) > 1 else ''} only (train.lr_schedule is {t.lr_schedule})")
          for key, schedules in _SCHEDULE_SETTINGS.items()],
        (t.lr_schedule != "plateau" or validating, "train.lr_schedule", "plateau decays on the validation bound: set data.validation and train.eval_every"),
        (t.lr_warmup_steps >= 0, "train.lr_warmup_steps", "must be >= 0"),
        (0 <= t.ema_decay < 1, "train.ema_decay", "must be in [0, 1)"),
        (t.eval_every >= 0, "train.eval_every", "must be >= 0"),
        (t.eval_unit in ("steps", "epochs"), "train.eval_unit", "must be steps or epochs"),
        (cfg.data.validation >= 0, "data.validation", "must be >= 0"),
        (not validating or cfg.data.validation > 0, "train.eval_every", "validation needs held-out images: set data.validation (e.g. 10000)"),
        (validating or cfg.data.validation == 0, "data.validation", "held-out images are only bounded with train.eval_every > 0: set it too"),
        (t.validation_iw == 0 or t.validation_iw >= 2, "train.validation_iw", "must be 0 (the NELBO) or k >= 2"),
        (t.validation_iw == 0 or validating, "train.validation_iw", "applies when validating (train.eval_every > 0)"),
        (t.patience >= 0, "train.patience", "must be >= 0"),
        (t.patience_from >= 0, "train.patience_from", "must be >= 0"),
        (t.patience_from == 0 or t.patience > 0, "train.patience_from", "applies with early stopping (train.patience > 0)"),
        (t.patience == 0 or validating, "train.patience", "early stopping watches the validation bound: set data.validation and train.eval_every"),
    ]


def cuda_graph_checks(t: TrainConfig) -> list[tuple[bool, str, str]]:
    """What a captured step (train.cuda_graphs, training/captured.py) cannot hold, each refused by the setting that
    conflicts with it; the device is checked when the run starts (captured.check_device)."""
    if not t.cuda_graphs:
        return []
    return [
        (not t.compile, "train.compile", "cannot be combined with train.cuda_graphs (torch.compile captures its own graphs); choose one"),
        (t.optimizer in ("adam", "adamw"), "train.optimizer",
         "train.cuda_graphs needs adam or adamw: their fused kernel skips a non-finite step on the device, inside the graph"),
        (t.lr_schedule == "constant", "train.lr_schedule",
         "train.cuda_graphs captures the learning rate as a constant of the Adam kernel; use constant, or drop train.cuda_graphs"),
        (t.lr_warmup_steps == 0, "train.lr_warmup_steps",
         "train.cuda_graphs captures the learning rate as a constant of the Adam kernel; use 0, or drop train.cuda_graphs"),
    ]


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


# Adam's step is about lr in every weight, so beyond this any network diverges at the first steps.
MAX_LR = 10.0
# A Gaussian decoder's fixed variance per pixel (pixels lie in [0, 1]): far outside this range the loss is
# the variance's scale, not the image (and 1e-300 is 0 in float32: an infinite loss at the first step).
DECODER_VARIANCE = (1e-6, 1e6)


def check_labels(cfg: RunConfig, train_set) -> None:
    """A model that takes labels has room for every label of its training images (your images may have more than 10 classes)."""
    classes = getattr(cfg.model, "classes", None)
    if classes is None or model_class(cfg.model.name).spec.labels == "none" or not len(train_set):
        return
    top = int(train_set.labels.max())
    if top >= classes:
        named = f" ({len(train_set.classes)} classes)" if train_set.classes else ""
        raise ConfigError(f"model.classes: {classes}, but the training images' labels go up to {top}{named}; set model.classes={top + 1}")


def resolve_data_source(cfg: RunConfig) -> None:
    """Your images named by data.dataset (`--dataset PATH`) move to data.path, with data.dataset = user, and their
    paths become absolute, so config.json finds them again from any folder."""
    d = cfg.data
    if not d.path and is_path(d.dataset):
        d.path = d.dataset
    if d.path:
        d.dataset = "user"
        d.path, d.test_path = (str(Path(p).expanduser().absolute()) if p else p for p in (d.path, d.test_path))


def _float_settings(obj, prefix: str = ""):
    """(dotted key, value) of every float setting in every section, the model's own settings included."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _float_settings(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield prefix + f.name, value
        elif isinstance(value, (tuple, list)):
            yield from ((prefix + f.name, v) for v in value if isinstance(v, float))


# The largest model vaelab builds: 1e9 float32 parameters are 4 GB before Adam's two copies.
MAX_PARAMETERS = 10**9


def count_parameters(m: ModelConfig) -> int:
    """The model's parameter count, from a build on the meta device (shapes only, nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(m).parameters())


def _model_default(m: ModelConfig, name: str):
    return tuple(getattr(type(m)(), name))


def _conv_shape_ok(m: ModelConfig) -> bool:
    if len(m.image_shape) < 2:
        return False
    try:
        check_shape(tuple(m.image_shape), tuple(m.channels))
    except ValueError:
        return False
    return True


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def save_json(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_json(path: Path) -> RunConfig:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not a vaelab config (nested too deeply to read)") from None
    return RunConfig.from_dict(migrate_legacy(data), source=str(path))

