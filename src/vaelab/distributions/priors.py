"""Priors p(z). Each is an nn.Module whose forward() returns a torch.distributions object with
event shape (z_dim,), so KL(q || p) is analytic wherever torch registers the pair and Monte Carlo
otherwise. A prior is a setting of a model (model.prior), not a model of its own.

forward() takes the model's posterior q(. | x) as a function of x: the VampPrior is built from it
(`needs_posterior`); the other priors ignore it."""

from __future__ import annotations

import contextlib
import functools
import math

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from .common import VARIANCE_FLOOR, diagonal_gaussian
from .flows import AutoregressiveFlowPrior
from .kl import factorised_normal


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I)."""

    def __init__(self, z_dim: int):
        super().__init__()
        # Buffers follow the module to its device; nothing here assumes CUDA.
        self.register_buffer("loc", torch.zeros(z_dim), persistent=False)
        self.register_buffer("scale", torch.ones(z_dim), persistent=False)

    needs_posterior = False

    def forward(self, posterior=None) -> Distribution:
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1, validate_args=False)

    def elements_per_sample(self) -> int:
        return self.loc.shape[0]


# exp() of a float32 below about -87 (a subnormal or zero result) takes a path 10 to 35 times slower on
# x86 CPUs, and a growing share of a mixture's (points, K) component densities lie that far below the largest
# as the prior trains (a VampPrior on MNIST: 31 % after 320 steps, 41 % after 1,000). Such a term adds at most
# K e^-80 to a sum of at least 1 after the shift: nothing, in float32 or float64.
_NEGLIGIBLE_NATS = 80.0
# Points x components per block of a mixture's density: 2 MB of float32 stay in cache from the matmul through
# the logsumexp's passes, and each block is overwritten in place without gradient (fresh 10 MB temporaries
# per chunk cost page faults): a third to a half of the time of one (points, K) tensor worked out of place,
# at K = 500 on the CPU.
_BLOCK_ELEMENTS = 1 << 19


def logsumexp_last(a: torch.Tensor, overwrite: bool = False) -> torch.Tensor:
    """torch.logsumexp(a, -1) to float rounding, with every term more than 80 nats below the largest raised to
    80 nats below it before exp, with its gradient. overwrite: a is a temporary without gradient, worked in."""
    top = a.detach().amax(-1, keepdim=True)
    shift = torch.where(top.isfinite(), top, 0.0)  # as torch.logsumexp: an infinite largest term is left to exp
    terms = a.sub_(shift).clamp_min_(-_NEGLIGIBLE_NATS).exp_() if overwrite else (a - shift).clamp_min(-_NEGLIGIBLE_NATS).exp()
    total = terms.sum(-1).log() + shift.squeeze(-1)
    return torch.where(top.squeeze(-1) == -math.inf, -math.inf, total)  # all terms -inf: the clamp would lift them


class DiagonalGaussianMixture(MixtureSameFamily):
    """A mixture of diagonal Gaussians, sum_k pi_k N(z; m_k, diag v_k), whose log_prob expands the
    square instead of materialising z - m_k for every component:

        log pi_k N(z; m_k, diag v_k) = [z^2, z] . [-1/2 (1/v_k), m_k / v_k]
                                       + log pi_k - 1/2 [sum_d m_kd^2 / v_kd + sum_d log v_kd + D log 2 pi]

    i.e. one (points, 2D) x (2D, K) matmul with the constant as its bias, where MixtureSameFamily builds a
    (..., K, D) tensor: K = 500 components cost the GMVAE and the VampPrior a fraction of the time and memory in
    IWAE evaluation. The weights and bias are computed once per distribution (so once per evaluation for a
    frozen VampPrior). Sampling, mean and the rest are MixtureSameFamily's; the density equals it to float
    rounding (tests/test_settings.py)."""

    def __init__(self, logits: torch.Tensor, means: torch.Tensor, variances: torch.Tensor):
        components = Independent(Normal(means, variances.sqrt(), validate_args=False), 1, validate_args=False)
        super().__init__(Categorical(logits=logits, validate_args=False), components, validate_args=False)
        self.means, self.variances = means, variances

    @functools.cached_property
    def _affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (2D, K), bias (K,)) of the component log-densities as a function of [z^2, z]."""
        precision = self.variances.reciprocal()  # (K, D)
        weights = torch.cat([-0.5 * precision, self.means * precision], -1).T
        constant = (self.means.pow(2) * precision + self.variances.log()).sum(-1) + self.means.shape[-1] * math.log(2 * math.pi)
        return weights, self.mixture_distribution.logits - 0.5 * constant

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        weights, bias = self._affine
        points = z.reshape(-1, z.shape[-1])
        features = torch.cat([points.pow(2), points], -1)
        overwrite = not (torch.is_grad_enabled() and (features.requires_grad or weights.requires_grad or bias.requires_grad))
        rows = max(1, _BLOCK_ELEMENTS // weights.shape[-1])
        # Each block's (rows, K) component log-densities, reduced over K while in cache.
        blocks = [logsumexp_last(torch.addmm(bias, block, weights), overwrite) for block in features.split(rows)]
        return torch.cat(blocks).reshape(z.shape[:-1])


class MixtureOfGaussiansPrior(nn.Module):
    """p(z) = (1/K) sum_k N(z; m_k, diag v_k) with learnable m_k, v_k (the cs236 GMVAE prior).

    Parameter layout as the reference: one tensor z_pre of shape (1, 2K, z_dim) initialised as
    N(0, I) / sqrt(K * z_dim); rows 0..K-1 are the means, rows K..2K-1 give v = softplus(.) + 1e-8.
    Mixture weights are uniform and fixed."""

    def __init__(self, z_dim: int, components: int = 500):
        super().__init__()
        self.components = components
        self.z_pre = nn.Parameter(torch.randn(1, 2 * components, z_dim) / math.sqrt(components * z_dim))
        self.register_buffer("logits", torch.zeros(components), persistent=False)

    needs_posterior = False

    def forward(self, posterior=None) -> Distribution:
        means, pre = self.z_pre[0].split(self.components, dim=0)
        variances = nn.functional.softplus(pre) + VARIANCE_FLOOR
        return DiagonalGaussianMixture(self.logits, means, variances)

    def elements_per_sample(self) -> int:
        # log p(z) makes a (K,) row of component densities per sample: the evaluator sizes its chunks by this.
        return self.components


class VampPrior(nn.Module):
    """p(z) = (1/K) sum_k q(z | u_k): the aggregate posterior of K learnable pseudo-inputs u_k
    (Tomczak & Welling 2018), the prior that ELBO surgery says maximises the ELBO, approximated.

    As the paper: u = `hardtanh_[0,1](W)`, W of shape (K, x_dim) initialised N(0.05, 0.01^2) (their linear
    layer applied to the K x K identity). q(z | u_k) is the model's own posterior, so the prior moves with
    the encoder; with a diagonal posterior the mixture's density is DiagonalGaussianMixture's matmul form.

    Each call passes the K pseudo-inputs through the encoder once: a model calls it once per forward,
    whatever its number of draws. Within `frozen()` (an evaluation) the mixture is built once and reused."""

    needs_posterior = True

    def __init__(self, x_dim: int, components: int = 500, init_mean: float = 0.05, init_std: float = 0.01):
        super().__init__()
        self.components = components
        self.pseudo_weights = nn.Parameter(torch.randn(components, x_dim) * init_std + init_mean)
        self.register_buffer("logits", torch.zeros(components), persistent=False)
        self._frozen_depth = 0
        self._frozen_mixture: tuple | None = None  # (posterior, p(z)) built within frozen()

    def pseudo_inputs(self) -> torch.Tensor:
        """u_k, (K, x_dim), in [0, 1]."""
        return nn.functional.hardtanh(self.pseudo_weights, 0.0, 1.0)

    @contextlib.contextmanager
    def frozen(self):
        """Within the block, p(z) is built on its first call without gradient and that same distribution is
        returned by the next ones: while the weights stay fixed (an evaluation) the pseudo-inputs' posterior
        does not change, so every chunk of an evaluation shares one encoder pass over them. The caller
        promises not to change the weights within the block. A call with gradient enabled (training) always
        builds p(z) afresh, so gradients reach the pseudo-inputs and no step reads a stale mixture; the
        mixture is dropped when the outermost block exits."""
        self._frozen_depth += 1
        try:
            yield self
        finally:
            self._frozen_depth -= 1
            if not self._frozen_depth:
                self._frozen_mixture = None

    def forward(self, posterior=None) -> Distribution:
        if posterior is None:
            raise ValueError("the VampPrior is built from the model's posterior q(z | u): pass it")
        # Under torch.compile a Python-side cache would only add guards and recompiles: built afresh there, and
        # tested first so that the compiled graph never reads the cache's state.
        if torch.compiler.is_compiling() or not self._frozen_depth or torch.is_grad_enabled():
            return self._mixture(posterior)
        # A bound method is a new object at each access, but equal (==) to the same method of the same model.
        if self._frozen_mixture is None or self._frozen_mixture[0] != posterior:
            self._frozen_mixture = (posterior, self._mixture(posterior))
        return self._frozen_mixture[1]

    def _mixture(self, posterior) -> Distribution:
        q = posterior(self.pseudo_inputs())  # batch shape (K,)
        if factorised_normal(q):
            return DiagonalGaussianMixture(self.logits, q.base_dist.loc, q.base_dist.scale.pow(2))
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), q, validate_args=False)

    def elements_per_sample(self) -> int:
        return self.components


@contextlib.contextmanager
def frozen_priors(model):
    """Every VampPrior in `model` frozen (VampPrior.frozen) for the block: for an evaluation, whose weights are fixed."""
    with contextlib.ExitStack() as stack:
        for module in model.modules() if isinstance(model, nn.Module) else ():
            if isinstance(module, VampPrior):
                stack.enter_context(module.frozen())
        yield model


class LabelConditionalPrior(nn.Module):
    """p(z | y) = N(m_y, diag v_y): a learnable Gaussian per label (the conditional prior of the CVAE objective
    E_q[log p(x | z, y)] - KL(q(z | x, y) || p(z | y)) in seed 002). Starts at N(0, I) for every label."""

    needs_posterior = False

    def __init__(self, z_dim: int, classes: int):
        super().__init__()
        self.means = nn.Parameter(torch.zeros(classes, z_dim))
        self.raw_variances = nn.Parameter(torch.full((classes, z_dim), math.log(math.expm1(1.0 - VARIANCE_FLOOR))))

    def forward(self, y: torch.Tensor) -> Distribution:
        """p(z | y) for integer labels y (B,): batch shape (B,)."""
        return diagonal_gaussian(self.means[y], self.raw_variances[y])


PRIORS = ("normal", "mog", "vamp", "af")


def build_prior(name: str, z_dim: int, components: int, x_dim: int | None = None, flow_steps: int = 2,
                flow_hidden: tuple[int, ...] = (300, 300)) -> nn.Module:
    """The prior named by model.prior: normal (N(0, I)), mog (mixture of `components` Gaussians), vamp
    (VampPrior over `components` pseudo-inputs of size x_dim) or af (autoregressive flow of `flow_steps`
    MADEs of `flow_hidden` widths on N(0, I))."""
    if name == "af":
        return AutoregressiveFlowPrior(z_dim, flow_steps, tuple(flow_hidden))
    if name == "mog":
        return MixtureOfGaussiansPrior(z_dim, components)
    if name == "normal":
        return StandardNormalPrior(z_dim)
    if name == "vamp":
        return VampPrior(x_dim, components)
    raise ValueError(f"unknown prior {name!r}")
