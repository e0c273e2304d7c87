"""Typed run configuration: dataclasses with documented defaults, TOML presets, checked overrides.

A run is fully described by a RunConfig; its resolved form is saved as `config.json` in the run
directory, which alone rebuilds the model. Overrides use dotted keys (`--set train.steps=500`) and
are checked against the dataclasses: unknown keys and ill-typed values are errors.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class ModelConfig:
    name: str = "vae"
    """Registry key of the generative story (see vaelab.models.MODELS)."""
    x_dim: int = 784
    """Flattened input size; set from the dataset at training time."""
    image_shape: tuple[int, ...] = (28, 28)
    """Shape of one image, (H, W) or (C, H, W); set from the dataset at training time (for figures)."""
    z_dim: int = 10
    """Latent dimensionality."""
    hidden: tuple[int, ...] = (300, 300)
    """Hidden layer widths of encoder and decoder MLPs ("v1": 300, 300)."""
    activation: str = "elu"
    """Hidden activation: elu, relu or tanh."""
    prior: str = "normal"
    """p(z): normal (N(0, I)) or mog (learnable mixture of Gaussians, uniform weights: GMVAE)."""
    prior_components: int = 500
    """Mixture components K when prior = mog (the reference uses 500)."""
    posterior: str = "diagonal"
    """q(z|x): diagonal (N(mu, diag sigma^2)) or full (N(mu, L L^T), Cholesky factor L)."""
    likelihood: str = "bernoulli"
    """p(x|z): bernoulli (binarized data), gaussian (fixed variance), gaussian-learned (learned per-pixel
    variance); the Gaussian ones train and evaluate on continuous pixels in [0, 1], not binarized."""
    decoder_variance: float = 0.1
    """Variance of the gaussian likelihood (the reference FSVAE uses 0.1); initial value for gaussian-learned."""
    classes: int = 10
    """Number of labels y for the conditional (cvae) and semi-supervised (ssvae) models."""


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
    """Latent dimensions per free-bits group (1: per dimension; 0: one group of all dimensions)."""
    gen_weight: float = 1.0
    """ssvae: weight of the unlabelled NELBO (0 trains the classifier alone)."""
    class_weight: float = 100.0
    """ssvae: weight of the labelled cross-entropy."""


@dataclass
class DataConfig:
    dataset: str = "mnist"
    """mnist, fashion-mnist or svhn."""
    data_dir: typing.Optional[str] = None
    """Root holding mnist/ and fashion-mnist/; default $VAELAB_DATA, else ~/.cache/vaelab."""
    download: bool = True
    """Download missing files from the canonical mirrors (checksums verified)."""
    labelled: str = "cs236"
    """ssvae labelled subset: cs236 (the reference's 10 positions per digit; MNIST only) or random."""
    labels_per_class: int = 10
    """ssvae: labelled images per class when labelled = random."""


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
    keep_checkpoints: int = 3
    """How many periodic checkpoints to keep."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value (0: no clipping)."""
    max_nonfinite_steps: int = 10
    """A step whose loss or gradient is not finite is skipped; this many in a row stop the run."""
    threads: int = 0
    """CPU threads for torch's kernels (0: torch's default, one per core)."""
    compile: bool = False
    """torch.compile the training objective: the model's forward, densities and loss, and their backward
    (the first steps are slower while it compiles; needs a C compiler on the CPU)."""
    precision: str = "fp32"
    """fp32, or bf16: autocast the networks to bfloat16 (mixed precision, meant for CUDA); densities,
    losses and Adam stay in float32."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
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
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


def set_key(cfg: RunConfig, key: str, value) -> None:
    """Set a dotted key such as `train.steps`, checking that it exists and converting its type."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
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


def apply_dict(cfg: RunConfig, d: dict, source: str) -> None:
    """Apply a nested dict (from a preset or config.json); unknown keys are errors naming `source`."""
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a section of settings")
        for key, value in values.items():
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
    return RunConfig.from_dict(data, source=str(path))


def validate(cfg: RunConfig) -> None:
    """Refuse out-of-range settings, naming the setting."""
    checks = [
        (cfg.model.z_dim >= 1, "model.z_dim", "must be >= 1"),
        (cfg.model.x_dim >= 1, "model.x_dim", "must be >= 1"),
        (all(h >= 1 for h in cfg.model.hidden), "model.hidden", "widths must be >= 1"),
        (cfg.model.activation in ("elu", "relu", "tanh"), "model.activation", "must be elu, relu or tanh"),
        (cfg.objective.kind in ("elbo", "iwae"), "objective.kind", "must be elbo or iwae"),
        (cfg.objective.k >= 1, "objective.k", "must be >= 1"),
        (cfg.objective.beta >= 0, "objective.beta", "must be >= 0"),
        (cfg.model.prior in ("normal", "mog"), "model.prior", "must be normal or mog"),
        (cfg.model.prior_components >= 1, "model.prior_components", "must be >= 1"),
        (cfg.model.posterior in ("diagonal", "full"), "model.posterior", "must be diagonal or full"),
        (cfg.model.likelihood in ("bernoulli", "gaussian", "gaussian-learned"), "model.likelihood",
         "must be bernoulli, gaussian or gaussian-learned"),
        (cfg.model.decoder_variance > 0, "model.decoder_variance", "must be > 0"),
        (cfg.model.classes >= 2, "model.classes", "must be >= 2"),
        (cfg.objective.gen_weight >= 0, "objective.gen_weight", "must be >= 0"),
        (cfg.objective.class_weight >= 0, "objective.class_weight", "must be >= 0"),
        (cfg.data.dataset in ("mnist", "fashion-mnist", "svhn"), "data.dataset", "must be mnist, fashion-mnist or svhn"),
        (cfg.data.labelled in ("cs236", "random"), "data.labelled", "must be cs236 or random"),
        (cfg.data.labelled != "cs236" or cfg.data.dataset == "mnist" or cfg.model.name != "ssvae", "data.labelled",
         "cs236 positions exist for mnist only; use random"),
        (cfg.data.labels_per_class >= 1, "data.labels_per_class", "must be >= 1"),
        (cfg.objective.kl_warmup_steps >= 0, "objective.kl_warmup_steps", "must be >= 0"),
        (cfg.objective.free_bits >= 0, "objective.free_bits", "must be >= 0"),
        (cfg.objective.free_bits_group >= 0, "objective.free_bits_group", "must be >= 0"),
        (cfg.objective.free_bits == 0 or cfg.objective.kind == "elbo", "objective.free_bits", "applies to the elbo objective only"),
        (cfg.objective.free_bits == 0 or cfg.objective.free_bits_group == 0
         or (cfg.model.posterior == "diagonal" and cfg.model.prior == "normal"), "objective.free_bits_group",
         "must be 0 (one group) unless the posterior is diagonal and the prior normal (per-dimension KL)"),
        (cfg.train.steps >= 1, "train.steps", "must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size", "must be >= 1"),
        (cfg.train.lr > 0, "train.lr", "must be > 0"),
        (cfg.train.seed >= 0, "train.seed", "must be >= 0"),
        (cfg.train.log_every >= 1, "train.log_every", "must be >= 1"),
        (cfg.train.checkpoint_every >= 1, "train.checkpoint_every", "must be >= 1"),
        (cfg.train.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1"),
        (cfg.train.grad_clip >= 0, "train.grad_clip", "must be >= 0"),
        (cfg.train.max_nonfinite_steps >= 1, "train.max_nonfinite_steps", "must be >= 1"),
        (cfg.train.threads >= 0, "train.threads", "must be >= 0"),
        (cfg.train.precision in ("fp32", "bf16"), "train.precision", "must be fp32 or bf16"),
        (cfg.model.name in _model_names(), "model.name", f"must be one of {', '.join(_model_names())}"),
    ]
    for ok, key, why in checks:
        if not ok:
            raise ConfigError(f"{key}: {why} (got {_get(cfg, key)!r})")


def _model_names() -> list[str]:
    from .models import MODELS

    return sorted(MODELS)


def _get(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def save_json(cfg: RunConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def load_json(path: Path) -> RunConfig:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    return RunConfig.from_dict(data, source=str(path))
