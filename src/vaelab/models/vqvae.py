"""VQ-VAE (van den Oord et al. 2017), stage one: discrete codes on a grid, a uniform prior while training.

Generative story: k ~ Uniform{0..K-1}^(h x w),  x | k ~ p(x | g_theta(e_k)),  e the K x D codebook.
Inference:        q(k | x) = 1 at k_i = argmin_j ||f_phi(x)_i - e_j||, a point mass (deterministic).
So KL(q || p) = h w log K and log p(x) >= log p(x | e_k) - h w log K; stage two (models/vqvae_prior.py)
replaces the uniform prior by a learned one. Training adds the codebook loss ||sg(z_e) - e||^2 (or EMA
codebook updates) and beta ||z_e - sg(e)||^2, beta = commitment_weight (0.25 in the paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.distributions import Distribution

from ..distributions import build_likelihood
from ..nets.conv import channels_and_size
from ..nets.quantize import GridDecoder, GridEncoder, Quantised, VectorQuantizer, perplexity
from .base import Auxiliary, LatentGroup, Model, ModelConfig, ModelSpec, Terms

CODEBOOK_UPDATES = ("loss", "ema")


@dataclass
class VQVAEConfig(ModelConfig):
    codebook_size: int = 128
    """Codes K in the codebook."""
    code_dim: int = 16
    """Dimension D of each code vector."""
    codebook_update: str = "loss"
    """How the codebook learns: loss (the codebook loss ||sg(z_e) - e||^2 by gradient) or ema (exponential moving
    averages of the encoder outputs assigned to each code, the paper's appendix)."""
    commitment_weight: float = 0.25
    """beta of the commitment loss beta ||z_e - sg(e)||^2 (the paper's 0.25)."""
    ema_decay: float = 0.99
    """Decay of the EMA codebook updates and of the codes' moving-average use."""
    restart_threshold: float = 1.0
    """Restart codes whose moving-average use is below this many assignments per batch at encoder outputs of the
    batch (0: never restart)."""
    residual_blocks: int = 2
    """Residual blocks after the encoder's and before the decoder's stride-2 convolutions."""


def vq_checks(cfg: VQVAEConfig) -> list[tuple[bool, str, str]]:
    return [
        (cfg.codebook_size >= 2, "model.codebook_size", "must be >= 2"),
        (cfg.code_dim >= 1, "model.code_dim", "must be >= 1"),
        (cfg.codebook_update in CODEBOOK_UPDATES, "model.codebook_update", f"must be one of {', '.join(CODEBOOK_UPDATES)}"),
        (cfg.commitment_weight >= 0, "model.commitment_weight", "must be >= 0"),
        (0 <= cfg.ema_decay < 1, "model.ema_decay", "must be in [0, 1)"),
        (cfg.restart_threshold >= 0, "model.restart_threshold", "must be >= 0"),
        (cfg.residual_blocks >= 0, "model.residual_blocks", "must be >= 0"),
    ]


class VQVAE(Model):
    """p(k) = Uniform over K^(h w) code grids, p(x | k) = Bernoulli or Gaussian(decoder(e_k)); q(k | x) = a point mass at
    the nearest codes of the encoder's grid."""

    Config = VQVAEConfig
    spec = ModelSpec(objectives=("elbo",), objective_settings=(), likelihoods=("bernoulli", "gaussian", "gaussian-learned"),
                     nets=("conv",), deterministic_posterior=True, codebook=True)

    def __init__(self, cfg: VQVAEConfig):
        super().__init__(cfg)
        image = channels_and_size(tuple(cfg.image_shape))
        self.grid = (image[1] >> len(cfg.channels), image[2] >> len(cfg.channels))
        self.encoder = GridEncoder(image, tuple(cfg.channels), cfg.code_dim, cfg.residual_blocks, cfg.activation)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.codebook_update, cfg.ema_decay, cfg.restart_threshold)
        self.decoder = GridDecoder(image, tuple(cfg.channels), cfg.code_dim, cfg.residual_blocks, cfg.activation)
        self.observation = build_likelihood(cfg.likelihood, cfg.x_dim, **cfg.likelihood_options())

    @classmethod
    def settings_checks(cls, cfg: VQVAEConfig, objective) -> list[tuple[bool, str, str]]:
        return vq_checks(cfg)

    @property
    def positions(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def elements_per_sample(self) -> int:
        return max(self.decoder.activation_elements, self.observation.elements_per_sample())

    def quantise(self, x: torch.Tensor) -> Quantised:
        """The encoder's grid for images x (B, D_x), snapped to the codebook."""
        return self.quantizer(self.encoder(x))

    def likelihood(self, z_q: torch.Tensor) -> Distribution:
        """p(x | z_q) for code-vector grids z_q (N, D, h, w)."""
        return self.observation(self.decoder(z_q))

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """One deterministic code grid per input, repeated for the k draws; one latent group "codes"."""
        x = batch["x"]
        q = self.quantise(x)
        log_px_z = self.likelihood(q.z_q).log_prob(x)
        kl = log_px_z.new_full(log_px_z.shape, self.positions * math.log(self.quantizer.codes))
        zeros = torch.zeros_like(kl)
        aux = {"commitment": Auxiliary(q.commitment_loss.mean(), self.config.commitment_weight)}
        if self.config.codebook_update == "loss":
            aux["codebook"] = Auxiliary(q.codebook_loss.mean())
        statistics = {"perplexity": perplexity(q.counts.float()), "codes_used": (q.counts > 0).float().mean()}
        return Terms(log_px_z.expand(k, -1), {"codes": LatentGroup(lambda: (-kl).expand(k, -1), lambda: zeros.expand(k, -1), kl)},
                     aux_losses=aux, statistics=statistics)

    def code_counts(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return self.quantise(batch["x"]).counts

    @torch.no_grad()
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """The chosen code vectors, flattened: (B, D * h * w)."""
        return {"codes": self.quantise(batch["x"]).z_q.flatten(1)}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        z = codes["codes"]
        return self.likelihood(z.reshape(-1, self.config.code_dim, *self.grid)).mean.view(*z.shape[:-1], -1)

    def grid_vectors(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        """Codes as encode returns them for code indices (n, h * w)."""
        return {"codes": self.quantizer.lookup(indices, self.grid).flatten(1)}

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        """Uniform codes: what the prior of stage one is (stage two learns a better one)."""
        device = self.quantizer.codebook.device
        return self.grid_vectors(torch.randint(self.quantizer.codes, (n, self.positions), device=device))
