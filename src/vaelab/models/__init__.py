"""Model registry: adding a model is one file in this folder plus one entry here."""

from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .cvae import ConditionalVAE
from .ssvae import SSVAE
from .vae import VAE

MODELS: dict[str, type[nn.Module]] = {
    "vae": VAE,
    "cvae": ConditionalVAE,
    "ssvae": SSVAE,
}


def build_model(cfg) -> nn.Module:
    """Build the model named by `cfg.name` (a ModelConfig) from its settings."""
    if cfg.name not in MODELS:
        raise ConfigError(f"model.name: unknown model {cfg.name!r} (choose from {', '.join(sorted(MODELS))})")
    return MODELS[cfg.name].from_config(cfg)
