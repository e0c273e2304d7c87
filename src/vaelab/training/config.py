"""Typed run configuration: dataclasses with documented defaults, TOML presets, checked overrides.

A run is fully described by a RunConfig; its resolved form is saved as `config.json` in the run
directory, which alone rebuilds the model. Overrides use dotted keys (`--set train.steps=500`) and
are checked against the dataclasses: unknown keys and ill-typed values are errors.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data import DATASET_NAMES
from ..distributions import LIKELIHOODS
from ..errors import ConfigError
from ..models import MODELS, ModelConfig, build_model, model_class
from ..nets import ACTIVATIONS, NETS, check_shape
from .files import atomic_write_text
from .legacy import migrate_legacy

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
    """mnist, fashion-mnist, svhn, or dsprites (generated on first use: data/dsprites.py)."""
    data_dir: typing.Optional[str] = None
    """Root holding mnist/ and fashion-mnist/; default $VAELAB_DATA, else ~/.cache/vaelab."""
    download: bool = True
    """Download missing files from the canonical mirrors (checksums verified)."""
    labelled: str = "cs236"
    """Labelled subset of models trained on one (ssvae): cs236 (the reference's 10 positions per digit;
    MNIST only) or random."""
    labels_per_class: int = 10
    """Labelled images per class when labelled = random."""


@dataclass
class TrainConfig:
    steps: int = 20000
    """Optimiser steps (the reference trains 20,000)."""
    batch_size: int = 100
    """Images per step."""
    lr: float = 1e-3
    """Adam learning rate (constant)."""
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
    label: str = ""
    """The run's name in summaries, `vaelab eval` and `compare`: the preset it was made from (gmvae for a
    VAE with a mixture prior), set when a preset is loaded; empty means the model's name."""
    precision: str = "fp32"
    """fp32, or bf16: autocast the networks to bfloat16 (mixed precision, meant for CUDA); densities,
    losses and Adam stay in float32."""


def _default_model_config() -> ModelConfig:
    return model_class("vae").Config()


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=_default_model_config)
    """The model's settings: an instance of its own Config class (ModelConfig plus its settings)."""
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "RunConfig":
        cfg = cls()
        apply_dict(cfg, d, source)
        return cfg


def _field_types(obj) -> dict:
    return typing.get_type_hints(type(obj))


def _coerce(value, tp, key: str):
    """Convert `value` (from TOML, JSON or a --set string) to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        if isinstance(value, str) and value.strip() in ("", "[]"):
            if not value.strip():  # `--set model.hidden=` is more likely a slip than a request for no layers
                raise ConfigError(f"{key}: empty value; write {key}=[] for an empty list")
            return ()
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], key) for v in items if v != "")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


def set_key(cfg: RunConfig, key: str, value) -> None:
    """Set a dotted key such as `train.steps`, checking that it exists and converting its type.

    `model.name` switches the model section to that model's Config class, keeping the shared settings;
    a setting of another model (`model.prior` for a model without a prior) is refused by name."""
    parts = key.split(".")
    if parts == ["model", "name"]:
        _switch_model(cfg, _coerce(value, str, key))
        return
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            if i == 1 and parts[0] == "model" and len(parts) == 2 and any(part in _field_names(m.Config) for m in MODELS.values()):
                raise ConfigError(f"{key}: not a setting of model {cfg.model.name!r} (its settings: "
                                  f"{', '.join(sorted(_field_names(type(cfg.model)) - {'name', 'x_dim', 'image_shape'}))})")
            known = ", ".join(sorted(_all_keys(cfg)))
            raise ConfigError(f"unknown setting {key!r} (known: {known})")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(getattr(obj, part))[0].name}")
            setattr(obj, part, _coerce(value, _field_types(obj)[part], key))
        else:
            obj = getattr(obj, part)


def _all_keys(obj, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _switch_model(cfg: RunConfig, name: str) -> None:
    """Make cfg.model the Config of model `name`, carrying over every setting both classes have; a
    setting the new model lacks may only be carried over at its default value."""
    new_cls = model_class(name).Config
    old = cfg.model
    if type(old) is new_cls:
        old.name = name
        return
    shared = _field_names(new_cls) & _field_names(type(old))
    defaults = type(old)()
    for f in dataclasses.fields(old):
        if f.name not in shared and getattr(old, f.name) != getattr(defaults, f.name):
            raise ConfigError(f"model.{f.name}: not a setting of model {name!r} (set model.name before model settings)")
    cfg.model = new_cls(**{field: getattr(old, field) for field in shared if field != "name"}, name=name)


def apply_dict(cfg: RunConfig, d: dict, source: str) -> None:
    """Apply a nested dict (from a preset or config.json); unknown keys are errors naming `source`.
    model.name is applied first, since it decides which model settings exist."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected sections of settings, got {type(d).__name__}")
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a section of settings")
    items = [(section, key, value) for section, values in d.items() for key, value in values.items()]
    items.sort(key=lambda item: (item[0], item[1]) != ("model", "name"))
    for section, key, value in items:
        try:
            set_key(cfg, f"{section}.{key}", value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.steps=500")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


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
    cfg = RunConfig.from_dict(data, source=str(path))
    cfg.train.label = cfg.train.label or path.stem
    return cfg


def run_label(cfg: RunConfig) -> str:
    """What to call a run: its label (the preset it came from), else its model's name."""
    return cfg.train.label or cfg.model.name


def validate(cfg: RunConfig) -> None:
    """Refuse out-of-range settings and settings the model does not support, naming the setting."""
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
        (m.decoder_variance > 0, "model.decoder_variance", "must be > 0"),
        (m.pixel_layers >= 1 and m.pixel_channels >= 1, "model.pixel_layers", "pixel_layers and pixel_channels must be >= 1"),
        (m.likelihood == "pixelcnn" or (m.pixel_layers, m.pixel_channels) == (ModelConfig.pixel_layers, ModelConfig.pixel_channels),
         "model.pixel_layers", "pixel_layers and pixel_channels apply to likelihood = pixelcnn only"),
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
        (cfg.data.dataset in DATASET_NAMES, "data.dataset", f"must be one of {', '.join(DATASET_NAMES)}"),
        (cfg.data.labelled in ("cs236", "random"), "data.labelled", "must be cs236 or random"),
        (spec.labels == "subset" or (cfg.data.labelled, cfg.data.labels_per_class) == (DataConfig.labelled, DataConfig.labels_per_class),
         "data.labelled", f"applies to models trained on a labelled subset; {m.name!r} is not"),
        (cfg.data.labelled != "cs236" or cfg.data.dataset == "mnist" or spec.labels != "subset", "data.labelled",
         "cs236 positions exist for mnist only; use random"),
        (cfg.data.labels_per_class >= 1, "data.labels_per_class", "must be >= 1"),
        *cls.settings_checks(m, o),
        (cfg.train.steps >= 1, "train.steps", "must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (cfg.train.lr > 0, "train.lr", "must be > 0"),
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
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why} (got {_get(cfg, key)!r})")
    parameters = count_parameters(m)
    if parameters > MAX_PARAMETERS:
        raise ConfigError(f"model: these settings make {parameters:.3g} parameters, over the limit of {MAX_PARAMETERS:.0e} "
                          f"(4 GB of float32); reduce model.hidden, model.channels, model.z_dim or model.prior_components")


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

