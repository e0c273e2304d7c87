"""Model registry: adding a model is one file in this folder (a vaelab.models.base.Model subclass)
plus one entry here, or a call to register_model from your own code: a plugin, which the `vaelab` command
imports (--plugin, VAELAB_PLUGINS, the `vaelab.models` entry points; plugins.py)."""

from __future__ import annotations

import math

from ..errors import ConfigError
from .base import Auxiliary, LatentGroup, Model, ModelConfig, ModelSpec, Terms
from .cvae import ConditionalVAE
from .hvae import HierarchicalVAE
from .ssvae import SSVAE
from .vae import VAE
from .vqvae import VQVAE
from .vqvae_prior import VQVAEPrior

MODELS: dict[str, type[Model]] = {
    "vae": VAE,
    "cvae": ConditionalVAE,
    "ssvae": SSVAE,
    "hvae": HierarchicalVAE,
    "vqvae": VQVAE,
    "vqvae-prior": VQVAEPrior,
}


def register_model(name: str, cls: type[Model]) -> None:
    """Make `cls` available as model.name = `name` (to presets, --set, the CLI and run directories)."""
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"{cls!r} is not a vaelab.models.base.Model subclass")
    MODELS[name] = cls


def model_class(name: str) -> type[Model]:
    """The class of model `name`; a name not registered yet is looked for in the installed `vaelab.models` entry points."""
    if name not in MODELS:
        from .plugins import available_models

        known = available_models()
        if name not in MODELS:
            raise ConfigError(f"model.name: unknown model {name!r} (choose from {', '.join(known)}; a model of your own: "
                              f"import the module that registers it, or name it as a plugin, docs/api.md)")
    return MODELS[name]


def model_config(name: str = "vae", **settings) -> ModelConfig:
    """The settings of model `name` (its Config class) with `settings` applied. Given only x_dim, the
    inputs are flat vectors, image_shape (x_dim,); given only image_shape, x_dim is its size."""
    if "image_shape" in settings:
        settings.setdefault("x_dim", math.prod(settings["image_shape"]))
    elif "x_dim" in settings:
        settings["image_shape"] = (settings["x_dim"],)
    return model_class(name).Config(name=name, **settings)


def build_model(cfg: ModelConfig) -> Model:
    """Build the model named by `cfg.name` from its settings (a ModelConfig of that model's Config class)."""
    cls = model_class(cfg.name)
    if not isinstance(cfg, cls.Config):
        raise ConfigError(f"model.name: settings of type {type(cfg).__name__} given for model {cfg.name!r}, "
                          f"which takes {cls.Config.__name__}")
    return cls(cfg)


__all__ = ["MODELS", "register_model", "model_class", "build_model", "model_config", "Model", "ModelConfig", "ModelSpec", "Terms",
           "LatentGroup", "Auxiliary"]
