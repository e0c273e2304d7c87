"""Likelihoods of 8-bit pixels: a discretized logistic mixture (Salimans et al. 2017, PixelCNN++, as NVAE and
VDVAE use it) and a discretized Gaussian.

A pixel value v in 0..255 is scaled to y = 2 v / 255 - 1 in [-1, 1]; its bin is [y - 1/255, y + 1/255] (width 2/255),
except the edge bins, which take the whole tail: v = 0 gets CDF(-1 + 1/255), v = 255 gets 1 - CDF(1 - 1/255), so the
256 masses sum to 1. Each pixel and channel is independent given z (no autoregressive coupling of channels, unlike
PixelCNN++'s RGB mixture): the decoder gives each element its own parameters. Inputs are pixels / 255, as the data
give them; x * 255 is rounded to the bin, so 8-bit values are exact.

Masses are computed in log space: log(CDF(b) - CDF(a)) = log CDF(b) + log(1 - exp(log CDF(a) - log CDF(b))), with
the bin reflected to the lower tail first, where log CDF keeps its precision (PixelCNN++ subtracts two sigmoids and
falls back to the mid-bin density when the difference is under 1e-5, because float32 loses it in the tails). The
mid-bin density times the bin width is used where the bin is narrow against the scale (under 1e-3 scales), where the
difference of two nearly equal log CDFs cancels.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

from .common import full_precision

LOG_BIN = math.log(2.0 / 255.0)
MIN_LOG_SCALE = -7.0  # as PixelCNN++: below this a bin is many scales wide and the scale gets no gradient
NARROW_BIN = 1e-3  # bin width in scales under which the mid-bin density is the more precise mass
LEVELS = 256


def _log1mexp(d: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(d)) for d <= 0; the clamp keeps a 0 (an unused branch of a where) from sending a NaN gradient."""
    return torch.log((-torch.expm1(d)).clamp_min(torch.finfo(d.dtype).tiny))


class DiscretizedPixels(Distribution):
    """Independent 8-bit pixels, each a mixture of K discretized continuous components on [-1, 1], event shape (D,).

    log_weights, loc, log_scale: (..., K, D). Subclasses give the component's log CDF and log density of a
    standardised value."""

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}
    support = constraints.independent(constraints.unit_interval, 1)

    def __init__(self, log_weights: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, validate_args: bool | None = False):
        self.log_weights = torch.log_softmax(log_weights, -2)
        self.loc = loc
        self.log_scale = log_scale.clamp_min(MIN_LOG_SCALE)
        super().__init__(batch_shape=loc.shape[:-2], event_shape=loc.shape[-1:], validate_args=validate_args)

    @staticmethod
    def log_cdf(u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def log_density(u: torch.Tensor) -> torch.Tensor:
        """log of the standardised component's density at u."""
        raise NotImplementedError

    def component_log_mass(self, v: torch.Tensor) -> torch.Tensor:
        """log P(value = v) under each component, v integers 0..255 as floats broadcasting against (..., K, D)."""
        inv_scale = torch.exp(-self.log_scale)

        def standardised(level):  # the same expression for an edge shared by two bins, so adjacent masses telescope
            return (level * (2.0 / 255.0) - 1.0 - self.loc) * inv_scale

        centre, upper, lower = standardised(v), standardised(v + 0.5), standardised(v - 0.5)
        # Reflect bins above the centre to the lower tail: CDF(b) - CDF(a) = CDF(-a) - CDF(-b) for symmetric components.
        # The edge bins are one log CDF each: CDF(upper) for v = 0, 1 - CDF(lower) = CDF(-lower) for v = 255.
        low_edge, high_edge = v < 0.5, v > 254.5
        flip = high_edge | ((centre > 0) & ~low_edge)
        log_hi = self.log_cdf(torch.where(flip, -lower, upper))
        inner = log_hi + _log1mexp(self.log_cdf(torch.where(flip, -upper, lower)) - log_hi)
        narrow = self.log_density(centre) - self.log_scale + LOG_BIN
        inner = torch.where(upper - lower < NARROW_BIN, narrow, inner)
        return torch.where(low_edge | high_edge, log_hi, inner)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        v = torch.round(value * 255.0).unsqueeze(-2)  # value broadcasts against the parameters, e.g. (B, D) with (k, B, K, D)
        return torch.logsumexp(self.log_weights + self.component_log_mass(v), -2).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """E[v] / 255 in [0, 1] (sample grids, reconstructions): sum over v = 1..255 of P(value >= v), one level at a time."""
        with torch.no_grad():
            total = torch.zeros_like(self.loc)
            inv_scale = torch.exp(-self.log_scale)
            for v in range(1, LEVELS):  # P(value >= v) = 1 - CDF(lower edge of v) = CDF(-(edge - loc) / scale)
                total += torch.exp(self.log_cdf((self.loc - ((v - 0.5) * (2.0 / 255.0) - 1.0)) * inv_scale))
            return (self.log_weights.exp() * total).sum(-2) / 255.0

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        """8-bit values / 255: a component per pixel, a continuous draw from it, clamped to [-1, 1] and rounded to its bin."""
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            weights = self.log_weights.expand(*sample_shape, *self.log_weights.shape)
            pick = torch.distributions.Categorical(logits=weights.movedim(-2, -1)).sample().unsqueeze(-2)
            loc = torch.gather(self.loc.expand_as(weights), -2, pick).squeeze(-2)
            scale = torch.gather(self.log_scale.expand_as(weights), -2, pick).squeeze(-2).exp()
            y = (loc + scale * self.standard_sample(shape, loc)).clamp(-1.0, 1.0)
            return torch.round((y + 1.0) * 127.5) / 255.0

    @staticmethod
    def standard_sample(shape, like: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DiscretizedLogisticMixture(DiscretizedPixels):
    """Each 8-bit pixel a mixture of K discretized logistics (PixelCNN++): CDF(u) = sigmoid(u)."""

    @staticmethod
    def log_cdf(u: torch.Tensor) -> torch.Tensor:
        return F.logsigmoid(u)

    @staticmethod
    def log_density(u: torch.Tensor) -> torch.Tensor:
        return -F.softplus(u) - F.softplus(-u)

    @staticmethod
    def standard_sample(shape, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(shape, dtype=like.dtype, device=like.device).clamp_(1e-5, 1.0 - 1e-5)
        return torch.log(u) - torch.log1p(-u)


class DiscretizedGaussian(DiscretizedPixels):
    """Each 8-bit pixel a discretized Gaussian N(loc, scale^2) (K = 1): CDF(u) = Phi(u)."""

    @staticmethod
    def log_cdf(u: torch.Tensor) -> torch.Tensor:
        return torch.special.log_ndtr(u)

    @staticmethod
    def log_density(u: torch.Tensor) -> torch.Tensor:
        return -0.5 * u * u - 0.5 * math.log(2 * math.pi)

    @staticmethod
    def standard_sample(shape, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)


def parameters_per_pixel(kind: str, mixtures: int) -> int:
    """Decoder outputs per pixel: K logits, K means, K log-scales (dlogistic); mean and log-scale (dgaussian)."""
    return 3 * mixtures if kind == "dlogistic" else 2


class DiscretizedLikelihood(nn.Module):
    """p(x | z) over 8-bit pixels from decoder outputs (..., P * D), P parameters per pixel laid out as P blocks of D:
    dlogistic: K mixture logits, K means, K log-scales (P = 3K); dgaussian: mean, log-scale (P = 2).
    Means are in pixel units scaled to [-1, 1]."""

    continuous = False

    def __init__(self, x_dim: int, kind: str = "dlogistic", mixtures: int = 10):
        super().__init__()
        self.x_dim, self.kind = x_dim, kind
        self.mixtures = mixtures if kind == "dlogistic" else 1

    @property
    def outputs_per_pixel(self) -> int:
        return parameters_per_pixel(self.kind, self.mixtures)

    def elements_per_sample(self) -> int:
        # log_prob holds about eight (K, D) intermediates per draw at its peak
        return 8 * self.mixtures * self.x_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        h = full_precision(h).unflatten(-1, (self.outputs_per_pixel, self.x_dim))
        if self.kind == "dgaussian":
            loc, log_scale = h.split(1, -2)
            return DiscretizedGaussian(torch.zeros_like(loc), loc, log_scale)
        logits, loc, log_scale = h.split(self.mixtures, -2)
        return DiscretizedLogisticMixture(logits, loc, log_scale)
