"""Observation models p(x | decoder output): Bernoulli for binary pixels, Gaussian for continuous ones,
the autoregressive PixelCNN over binary pixels (pixelcnn.py), and the discretized logistic mixture and
discretized Gaussian over 8-bit pixels (discretized.py).
A likelihood is a setting of a model (model.likelihood); each maps the decoder's output to a
torch distribution with event shape (x_dim,)."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.nn import functional as F

from .common import full_precision
from .discretized import DiscretizedLikelihood, parameters_per_pixel
from .pixelcnn import PixelCNNLikelihood

LIKELIHOODS = ("bernoulli", "gaussian", "gaussian-learned", "pixelcnn", "dlogistic", "dgaussian")
# Likelihoods of binary pixels: their models train on dynamically binarized images and are evaluated
# on a fixed binarization; the others see pixels in [0, 1].
BINARY_LIKELIHOODS = ("bernoulli", "pixelcnn")
# Likelihoods of 8-bit pixels (values / 255, not binarized): their bounds are also reported in bits per dimension.
EIGHT_BIT_LIKELIHOODS = ("dlogistic", "dgaussian")


def outputs_per_pixel(name: str, mixtures: int = 1) -> int:
    """How many decoder outputs the likelihood takes per pixel (the decoder gives this many blocks of D)."""
    return parameters_per_pixel(name, mixtures) if name in EIGHT_BIT_LIKELIHOODS else 1


class IndependentBernoulli(Distribution):
    """Independent Bernoulli pixels on logits h, event shape (D,): the density of
    Independent(Bernoulli(logits=h), 1), with a faster log_prob.

    log p(x | h) = sum_j [x_j h_j - softplus(h_j)]: one product-sum and one softplus-sum over h,
    where binary_cross_entropy_with_logits makes about six elementwise passes. For IWAE evaluation h
    has k x B x 784 entries, so these passes are most of the time outside the decoder's matmuls
    (docs/performance.md). torch.distributions lacks this, so vaelab adds it."""

    arg_constraints = {"logits": constraints.independent(constraints.real, 1)}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, validate_args: bool | None = False):
        self.logits = logits
        super().__init__(batch_shape=logits.shape[:-1], event_shape=logits.shape[-1:], validate_args=validate_args)

    @property
    def probs(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    @property
    def mean(self) -> torch.Tensor:
        return self.probs

    @property
    def mode(self) -> torch.Tensor:
        return (self.logits > 0).to(self.logits.dtype)

    @property
    def variance(self) -> torch.Tensor:
        p = self.probs
        return p * (1 - p)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            return torch.bernoulli(self.probs.expand(self._extended_shape(sample_shape)))

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # value broadcasts against the logits, e.g. x of shape (B, D) against h of shape (k, B, D).
        return (self.logits * value).sum(-1) - F.softplus(self.logits).sum(-1)

    def entropy(self) -> torch.Tensor:
        return (F.softplus(self.logits) - self.logits * self.probs).sum(-1)


class BernoulliLikelihood(nn.Module):
    """x_j ~ Bernoulli(sigmoid(h_j)), h the decoder's logits. For binary (binarized) data."""

    def elements_per_sample(self) -> int:
        return 0  # nothing beyond the decoder's output

    continuous = False

    def forward(self, h: torch.Tensor) -> Distribution:
        return IndependentBernoulli(full_precision(h))


class GaussianLikelihood(nn.Module):
    """x_j ~ N(h_j, v): fixed variance v (the reference FSVAE uses 0.1), or with learned=True a
    learned per-pixel variance v_j = softplus(s_j) + floor, shared across inputs (a network-predicted
    variance lets pixels that are always 0 drive it to zero and the likelihood to infinity)."""

    continuous = True

    def __init__(self, x_dim: int, variance: float = 0.1, learned: bool = False, floor: float = 1e-3):
        super().__init__()
        self.floor = floor
        if learned:
            start = math.log(math.expm1(max(variance - floor, 1e-6)))  # softplus^-1, so v starts at `variance`
            self.raw_variance = nn.Parameter(torch.full((x_dim,), start))
        else:
            self.register_buffer("fixed_variance", torch.tensor(variance), persistent=False)
            self.raw_variance = None

    def variance(self) -> torch.Tensor:
        if self.raw_variance is None:
            return self.fixed_variance
        return nn.functional.softplus(self.raw_variance) + self.floor

    def elements_per_sample(self) -> int:
        return 0  # nothing beyond the decoder's output

    def forward(self, h: torch.Tensor) -> Distribution:
        h = full_precision(h)
        scale = self.variance().sqrt().expand_as(h)
        return Independent(Normal(h, scale, validate_args=False), 1, validate_args=False)


def build_likelihood(name: str, x_dim: int, variance: float = 0.1, image_shape: tuple[int, ...] | None = None,
                     pixel_layers: int = 3, pixel_channels: int = 32, mixtures: int = 10) -> nn.Module:
    """The likelihood named by model.likelihood; pixelcnn needs the image shape and its layer settings,
    dlogistic its number of mixture components."""
    if name in EIGHT_BIT_LIKELIHOODS:
        return DiscretizedLikelihood(x_dim, name, mixtures)
    if name == "pixelcnn":
        return PixelCNNLikelihood(image_shape, pixel_layers, pixel_channels)
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(x_dim, variance, learned=False)
    if name == "gaussian-learned":
        return GaussianLikelihood(x_dim, variance, learned=True)
    raise ValueError(f"unknown likelihood {name!r}")
