"""VQ-VAE stage two: a learned autoregressive prior over the frozen stage-one model's code grids.

Generative story: k ~ p_psi(k) = prod_i p_psi(k_i | k_<i) (a PixelCNN over the h x w grid), x | k ~ p(x | g(e_k)).
Inference:        q(k | x) = a point mass at the stage-one encoder's nearest codes (frozen, as the decoder).
So log p(x) >= log p(x | e_k) + log p_psi(k), and training it maximises log p_psi(k) on the training set's codes:
`vaelab train vqvae-prior --from RUN` (RUN a finished vqvae run). The run's weights hold the frozen stage-one
networks too, so its directory alone rebuilds the model; config.source_run says where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..distributions.pixelcnn import CodePrior
from .base import LatentGroup, Model, ModelSpec, Terms
from .vqvae import VQVAE, VQVAEConfig


@dataclass
class VQVAEPriorConfig(VQVAEConfig):
    source_run: str = ""
    """The finished vqvae run this model starts from (set by --from RUN, with its model settings)."""
    prior_layers: int = 8
    """Gated layers of the PixelCNN over codes (kernel 3: with 7 x 7 grids, 7 layers see every earlier row)."""
    prior_channels: int = 32
    """Channels of each of its layers (and of the code embedding); 32 trains at about 5 steps/s on one CPU thread, 64
    at about 2."""


class VQVAEPrior(Model):
    """p(k) = PixelCNN over code grids, p(x | k) the frozen stage-one decoder; q(k | x) the frozen stage-one encoder's
    nearest codes (a point mass)."""

    Config = VQVAEPriorConfig
    spec = ModelSpec(objectives=("elbo",), objective_settings=(), likelihoods=VQVAE.spec.likelihoods, nets=("conv",),
                     deterministic_posterior=True, codebook=True, starts_from="vqvae")

    def __init__(self, cfg: VQVAEPriorConfig):
        super().__init__(cfg)
        self.vqvae = VQVAE(cfg)
        self.vqvae.requires_grad_(False)
        self.prior = CodePrior(cfg.codebook_size, self.vqvae.grid, cfg.prior_layers, cfg.prior_channels)
        self.train()

    @classmethod
    def settings_checks(cls, cfg: VQVAEPriorConfig, objective) -> list[tuple[bool, str, str]]:
        return [*VQVAE.settings_checks(cfg, objective),
                (cfg.source_run != "", "model.source_run", "vqvae-prior starts from a finished vqvae run: give --from RUN"),
                (cfg.prior_layers >= 1 and cfg.prior_channels >= 1, "model.prior_layers", "prior_layers and prior_channels must be >= 1")]

    def train(self, mode: bool = True) -> "VQVAEPrior":
        super().train(mode)
        self.vqvae.eval()  # frozen: no EMA codebook updates or code restarts in stage two
        return self

    def start_from(self, source: Model) -> None:
        self.vqvae.load_state_dict(source.state_dict())

    @property
    def elements_per_sample(self) -> int:
        return max(self.vqvae.elements_per_sample, 2 * self.config.prior_channels * self.vqvae.positions)

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """One deterministic code grid per input, repeated for the k draws; one latent group "codes" whose KL is
        KL(point mass || p_psi) = -log p_psi(k)."""
        x = batch["x"]
        with torch.no_grad():
            q = self.vqvae.quantise(x)
            log_px_z = self.vqvae.likelihood(q.z_q).log_prob(x)
        log_p = self.prior.log_prob(q.indices)
        zeros = torch.zeros_like(log_p)
        return Terms(log_px_z.expand(k, -1), {"codes": LatentGroup(log_p.expand(k, -1), zeros.expand(k, -1), -log_p)})

    def code_counts(self, batch: dict) -> torch.Tensor:
        return self.vqvae.code_counts(batch)

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        return self.vqvae.encode(batch)

    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.vqvae.decode(codes)

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        """Code grids drawn from the learned prior, position by position."""
        return self.vqvae.grid_vectors(self.prior.sample(n))
