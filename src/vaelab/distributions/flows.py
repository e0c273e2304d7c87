"""Autoregressive flows as torch.distributions Transforms: the IAF posterior (Kingma et al. 2016) and the
autoregressive-flow prior of VLAE (Chen et al. 2017) are the same map used in opposite directions.

AutoregressiveAffine maps x -> y = sigma * x + (1 - sigma) * m with (m, s) = MADE(x [, context]) and
sigma = sigmoid(s + forget_bias), IAF's gated update: y_i depends on x_<=i, so x -> y is one network pass
and log|det dy/dx| = sum_i log sigma_i; y -> x needs D passes (x_i from y_i once x_<i is known).

- IAF posterior: z_0 ~ N(mu(x), diag sigma_0(x)^2), z_t = step_t(z_{t-1}; h(x)): sampling and log q in one
  pass per step; log q(z_T | x) = log N(z_0) - sum_t log|det|. The transforms cache their last input, so
  log_prob of a sample just drawn reuses the pass that drew it.
- AF prior: epsilon = f(z) = step_T(... step_1(z)), p(z) = N(f(z); 0, I) |det df/dz|: density in one pass
  per step, sampling by inverting f (D passes per step).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution, constraints
from torch.distributions.transforms import Transform

from .made import MADE
from .common import diagonal_gaussian, full_precision

FORGET_BIAS = 2.0
"""Added to s before the sigmoid, so a new flow starts near the identity (sigma ~ 0.88), as IAF advises."""


class AutoregressiveAffine(Transform):
    """x -> sigma(x) * x + (1 - sigma(x)) * m(x), autoregressive through `made`, with an optional context
    tensor broadcast against x's leading dimensions."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = +1

    def __init__(self, made: MADE, context: torch.Tensor | None = None, cache_size: int = 1):
        super().__init__(cache_size=cache_size)
        self.made, self.context = made, context
        self._last_log_sigma = None  # (x, log sigma) of the last forward pass

    def _gate(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, s = self.made(x, self.context).chunk(2, dim=-1)
        return m, s + FORGET_BIAS

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        m, s = self._gate(x)
        sigma = torch.sigmoid(s)
        self._last_log_sigma = (x, nn.functional.logsigmoid(s))
        return sigma * x + (1 - sigma) * m

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        x = torch.zeros_like(y)
        degrees = self.made.input_degrees
        for t in range(1, y.shape[-1] + 1):
            m, s = self._gate(x)
            new = (y - m) * torch.exp(-nn.functional.logsigmoid(s)) + m  # = (y - (1 - sigma) m) / sigma
            # After pass t the entries of degree <= t are exact; the others stay 0 rather than take values
            # computed from wrong inputs, which can overflow, and 0 * inf in a masked weight is nan.
            x = torch.where(degrees <= t, new, x)
        return x

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self._last_log_sigma is not None and self._last_log_sigma[0] is x:
            log_sigma = self._last_log_sigma[1]
        else:
            log_sigma = nn.functional.logsigmoid(self._gate(x)[1])
        return log_sigma.sum(-1)


def flow_steps(z_dim: int, steps: int, hidden: tuple[int, ...], context_features: int = 0) -> nn.ModuleList:
    """`steps` MADEs whose orders alternate (natural, reversed, ...), so every dimension can depend on every other."""
    return nn.ModuleList(MADE(z_dim, hidden, 2, context_features, reverse=t % 2 == 1) for t in range(steps))


class FlowDistribution(TransformedDistribution):
    """A TransformedDistribution whose `mean` is the flow's image of the base mean (what `encode` reports as
    the code; the true mean of a flow has no closed form)."""

    @property
    def mean(self) -> torch.Tensor:
        x = self.base_dist.mean
        for transform in self.transforms:
            x = transform(x)
        return x


class IAFPosterior(nn.Module):
    """q(z|x): N(mu, diag sigma^2) followed by T autoregressive steps conditioned on a context h(x). The
    encoder's output is [mu, pre-variance, h], h of size z_dim."""

    def __init__(self, z_dim: int, steps: int = 2, hidden: tuple[int, ...] = (300, 300)):
        super().__init__()
        self.z_dim = z_dim
        self.steps = flow_steps(z_dim, steps, hidden, context_features=z_dim)

    @property
    def n_params(self) -> int:
        return 3 * self.z_dim

    def forward(self, h: torch.Tensor) -> Distribution:
        mean, pre, context = full_precision(h).split(self.z_dim, dim=-1)
        return FlowDistribution(diagonal_gaussian(mean, pre), [AutoregressiveAffine(made, context) for made in self.steps], validate_args=False)


class AutoregressiveFlowPrior(nn.Module):
    """p(z) = N(f(z); 0, I) |det df/dz| with f = step_T o ... o step_1 (VLAE's AF prior)."""

    needs_posterior = False

    def __init__(self, z_dim: int, steps: int = 2, hidden: tuple[int, ...] = (300, 300)):
        super().__init__()
        self.steps = flow_steps(z_dim, steps, hidden)
        self.register_buffer("loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("scale", torch.ones(z_dim), persistent=False)

    def f(self) -> list[AutoregressiveAffine]:
        """The steps of f, z -> epsilon, in order."""
        return [AutoregressiveAffine(made) for made in self.steps]

    def forward(self, posterior=None) -> Distribution:
        base = Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)
        # TransformedDistribution maps base -> z, i.e. f^-1 = step_1^-1 o ... o step_T^-1; its log_prob runs f.
        return TransformedDistribution(base, [step.inv for step in reversed(self.f())], validate_args=False)

    def elements_per_sample(self) -> int:
        return max(self.steps[0].hidden_layers[0].out_features, self.loc.shape[0])
