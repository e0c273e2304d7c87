"""Vector quantisation (VQ-VAE, van den Oord et al. 2017): convolutional networks between images and a grid
of code vectors, and the codebook that snaps each vector to its nearest entry.

Encoder: stride-2 convolutions (`channels`), residual blocks (ReLU, 3x3, ReLU, 1x1, as the paper's), a 1x1
convolution to code_dim: x (N, C, H, W) -> z_e (N, code_dim, H / 2^n, W / 2^n). Decoder: the mirror image,
from the quantised grid z_q back to the likelihood's parameters per pixel.

Codebook (K x D): z_q = e_k with k = argmin_j ||z_e - e_j||^2 at every grid position; the decoder's gradient
is copied to z_e (straight-through). The codebook learns either from the codebook loss ||sg(z_e) - e_k||^2
(update = "loss") or by exponential moving averages of the vectors assigned to each code (update = "ema",
the paper's appendix): N_k <- g N_k + (1 - g) n_k, m_k <- g m_k + (1 - g) sum of the z_e assigned to k,
e_k = m_k / N'_k with N' the counts Laplace-smoothed by epsilon. Codes whose moving-average use falls below
`restart_threshold` assignments per batch are restarted at encoder outputs of the current batch (Dhariwal
et al. 2020), which also initialises the codebook from data at the first step. All of it stays on the
device: no value is read back to the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from .conv import downsampling, feature_activation, upsampling
from .mlp import gate_factor


class ResidualBlock(nn.Module):
    """h + conv1x1(relu(conv3x3(relu(h)))), the VQ-VAE paper's block."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, channels, 1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.body(h)


class GridEncoder(nn.Module):
    """Flat pixels (..., C*H*W) -> a grid of code vectors (N, code_dim, h, w), N the flattened leading shape."""

    def __init__(self, image: tuple[int, int, int], channels: tuple[int, ...], code_dim: int, residual_blocks: int, activation: str):
        super().__init__()
        self.image = image
        width = channels[-1]
        self.net = nn.Sequential(downsampling(image[0], channels, activation), nn.Conv2d(width, width, 3, padding=1),
                                 *[ResidualBlock(width, width // 2) for _ in range(residual_blocks)], nn.ReLU(),
                                 nn.Conv2d(width, code_dim, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(-1, *self.image))


class GridDecoder(nn.Module):
    """A grid of code vectors (N, code_dim, h, w) -> (N, C*H*W), the likelihood's parameters per pixel. The activation
    after the residual blocks has no layer of its own before it (a block ends in a sum): with activation = gated it is
    a gated 1x1 convolution (nets.conv.feature_activation)."""

    def __init__(self, image: tuple[int, int, int], channels: tuple[int, ...], code_dim: int, residual_blocks: int, activation: str):
        super().__init__()
        width = channels[-1]
        self.net = nn.Sequential(nn.Conv2d(code_dim, width, 3, padding=1),
                                 *[ResidualBlock(width, width // 2) for _ in range(residual_blocks)],
                                 feature_activation(width, activation), upsampling(channels, image[0], activation))
        # The largest per-sample activation (the first upsampled map): evaluation sizes its chunks by it.
        h, w = image[1] >> (len(channels) - 1), image[2] >> (len(channels) - 1)
        gate = gate_factor(activation)  # a gated layer computes twice the channels it passes on
        self.activation_elements = max(gate * width * (image[1] >> len(channels)) * (image[2] >> len(channels)),
                                       (gate * channels[-2] if len(channels) > 1 else image[0]) * h * w, math.prod(image))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).flatten(1)


@dataclass
class Quantised:
    """What the codebook makes of a grid z_e (N, D, h, w)."""

    indices: torch.Tensor
    """The code at each position, (N, h * w), raster order."""
    z_q: torch.Tensor
    """The chosen code vectors with the straight-through gradient to z_e, (N, D, h, w)."""
    codebook_loss: torch.Tensor
    """||sg(z_e) - e||^2 summed over the grid per input, (N,); zero under EMA updates (no gradient to give)."""
    commitment_loss: torch.Tensor
    """||z_e - sg(e)||^2 summed over the grid per input, (N,)."""
    counts: torch.Tensor
    """How many positions chose each code, (K,) int64, on this process."""


def ema_update(count: torch.Tensor, total: torch.Tensor, assigned: torch.Tensor, assigned_sum: torch.Tensor, decay: float,
               epsilon: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One EMA step of the codebook: counts N (K,) and sums m (K, D) updated by the batch's assignments n (K,) and
    sums of assigned vectors s (K, D); returns (N, m, codebook) with codebook_k = m_k / N'_k, where
    N'_k = (N_k + eps) / (sum N + K eps) * sum N (Laplace smoothing: no division by zero for unused codes)."""
    count = decay * count + (1 - decay) * assigned
    total = decay * total + (1 - decay) * assigned_sum
    n = count.sum()
    smoothed = (count + epsilon) / (n + count.shape[0] * epsilon) * n
    return count, total, total / smoothed.unsqueeze(-1)


class VectorQuantizer(nn.Module):
    """A K x D codebook; see the module docstring. Updates (EMA, restarts) happen in training mode only."""

    def __init__(self, codes: int, dim: int, update: str = "loss", decay: float = 0.99, restart_threshold: float = 1.0,
                 epsilon: float = 1e-5):
        super().__init__()
        if update not in ("loss", "ema"):
            raise ValueError(f"unknown codebook update {update!r}")
        self.update, self.decay, self.restart_threshold, self.epsilon = update, decay, restart_threshold, epsilon
        init = torch.empty(codes, dim).uniform_(-1 / codes, 1 / codes)
        if update == "ema":
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.zeros(codes))
            self.register_buffer("ema_sum", torch.zeros(codes, dim))
        else:
            self.codebook = nn.Parameter(init)
        # Moving-average assignments per batch of each code; starts at 0, so the first step restarts every code
        # at the batch's encoder outputs (a data-dependent initialisation) when restarts are on.
        self.register_buffer("usage", torch.zeros(codes))

    @property
    def codes(self) -> int:
        return self.codebook.shape[0]

    def nearest(self, flat: torch.Tensor) -> torch.Tensor:
        """The index of the nearest code for each row of flat (M, D)."""
        with torch.no_grad():
            distances = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ self.codebook.t() + self.codebook.pow(2).sum(1)
            return distances.argmin(1)

    def lookup(self, indices: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Code vectors of indices (N, h * w) as a grid (N, D, h, w)."""
        return F.embedding(indices, self.codebook).view(indices.shape[0], *grid, -1).permute(0, 3, 1, 2)

    def forward(self, z_e: torch.Tensor) -> Quantised:
        n, d, h, w = z_e.shape
        flat = z_e.permute(0, 2, 3, 1).reshape(-1, d)
        if self.training and self.restart_threshold > 0:
            self._restart(flat.detach())
        indices = self.nearest(flat)
        e = F.embedding(indices, self.codebook)
        counts = code_counts(indices, self.codes)
        if self.training:
            assigned = _all_reduce(counts.to(flat.dtype))  # a new tensor: counts stays this process's
            self.usage.mul_(self.decay).add_(assigned, alpha=1 - self.decay)
            if self.update == "ema":
                with torch.no_grad():
                    sums = _all_reduce(flat.new_zeros(self.codebook.shape).index_add_(0, indices, flat.detach()))
                    count, total, codebook = ema_update(self.ema_count, self.ema_sum, assigned, sums, self.decay, self.epsilon)
                    self.ema_count.copy_(count)
                    self.ema_sum.copy_(total)
                    self.codebook.copy_(codebook)
        commitment = (flat - e.detach()).pow(2).sum(1).view(n, -1).sum(1)
        codebook_loss = (flat.detach() - e).pow(2).sum(1).view(n, -1).sum(1) if self.update == "loss" else commitment.new_zeros(n)
        z_q = flat + (e - flat).detach()  # straight-through: forward e, gradient to z_e
        return Quantised(indices.view(n, h * w), z_q.view(n, h, w, d).permute(0, 3, 1, 2), codebook_loss, commitment, counts)

    @torch.no_grad()
    def _restart(self, flat: torch.Tensor) -> None:
        """Codes used less than restart_threshold times per batch (moving average) move to random encoder outputs of
        this batch (the same ones on every process), their use reset to twice the threshold (so a restarted code that
        stays unused is tried again after about log(2) / (1 - decay) steps)."""
        dead = self.usage < self.restart_threshold
        candidates = flat[torch.randint(flat.shape[0], (self.codes,), device=flat.device)]
        if dist.is_available() and dist.is_initialized():
            dist.broadcast(candidates, 0)
        self.codebook.copy_(torch.where(dead.unsqueeze(1), candidates, self.codebook))
        self.usage.copy_(torch.where(dead, torch.full_like(self.usage, 2 * self.restart_threshold), self.usage))
        if self.update == "ema":
            self.ema_sum.copy_(torch.where(dead.unsqueeze(1), candidates, self.ema_sum))
            self.ema_count.copy_(torch.where(dead, torch.ones_like(self.ema_count), self.ema_count))


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """The sum over processes under DistributedDataParallel (every process then updates its codebook alike)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


def code_counts(indices: torch.Tensor, codes: int) -> torch.Tensor:
    """How often each of `codes` codes occurs in indices, (codes,) int64. Unlike torch.bincount, its size does not
    depend on the values, so CUDA needs no synchronisation to allocate it."""
    flat = indices.flatten()
    return torch.zeros(codes, dtype=torch.long, device=flat.device).index_add_(0, flat, torch.ones_like(flat))


def perplexity(counts: torch.Tensor) -> torch.Tensor:
    """exp(entropy) of the code frequencies counts (K,): K when all codes are used equally, 1 when one is."""
    p = counts / counts.sum().clamp_min(1)
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
