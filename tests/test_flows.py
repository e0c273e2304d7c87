"""Autoregressive flows: MADE's masks, the affine step's log-determinant and inverse, the IAF posterior,
the autoregressive-flow prior, and seed 003's theorem that an AF prior is an IAF posterior in disguise."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, TransformedDistribution

from vaelab.distributions.flows import AutoregressiveAffine, AutoregressiveFlowPrior, IAFPosterior
from vaelab.models import build_model, model_config
from vaelab.distributions.made import MADE

D = 5


def _jacobian(f, x: torch.Tensor) -> torch.Tensor:
    return torch.autograd.functional.jacobian(f, x)


@pytest.mark.parametrize("reverse", [False, True])
def test_made_outputs_depend_only_on_earlier_inputs(reverse):
    """d out_i / d in_j = 0 unless j comes before i in the MADE's order, for both output blocks, and the
    dependence on earlier inputs is really there (the masks do not cut everything)."""
    torch.manual_seed(0)
    made = MADE(D, (16, 16), outputs_per_input=2, reverse=reverse).double()
    x = torch.randn(D, dtype=torch.float64)
    jac = _jacobian(lambda v: made(v), x)  # (2D, D)
    order = list(range(D))[::-1] if reverse else list(range(D))
    position = {dim: k for k, dim in enumerate(order)}
    for block in range(2):
        for i in range(D):
            for j in range(D):
                entry = jac[block * D + i, j]
                if position[j] >= position[i]:
                    assert entry == 0, (block, i, j)
        # the last output in the order may see every earlier input
        last = order[-1]
        assert all(jac[block * D + last, j] != 0 for j in order[:-1])


def test_made_context_reaches_every_output():
    torch.manual_seed(0)
    made = MADE(D, (16,), context_features=3).double()
    x, c = torch.randn(D, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    jac = _jacobian(lambda v: made(x, v), c)
    assert (jac.abs().sum(-1) > 0).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_affine_step_log_det_matches_autograd_and_inverse_undoes_it(reverse):
    torch.manual_seed(1)
    made = MADE(D, (16,), reverse=reverse).double()
    with torch.no_grad():  # away from the near-identity start, so the check means something
        for p in made.parameters():
            p.mul_(3)
    step = AutoregressiveAffine(made, cache_size=0)
    x = torch.randn(D, dtype=torch.float64)
    jac = _jacobian(step, x)
    assert torch.allclose(jac.triu(1) if not reverse else jac.tril(-1), torch.zeros_like(jac))  # triangular
    torch.testing.assert_close(step.log_abs_det_jacobian(x, step(x)), torch.linalg.slogdet(jac)[1])
    y = step(torch.randn(7, D, dtype=torch.float64))
    torch.testing.assert_close(step(step.inv(y)), y)


def test_iaf_posterior_density_is_the_change_of_variables_and_cached_equals_recomputed():
    """log q(z_T|x) = log N(z_0; mu, sigma) - sum_t log|det dz_t/dz_{t-1}|, from autograd; the log_prob of a
    sample just drawn (cached pass) equals the one computed by inverting the flow."""
    torch.manual_seed(2)
    family = IAFPosterior(D, steps=3, hidden=(16,)).double()
    h = torch.randn(1, 3 * D, dtype=torch.float64)
    q = family(h)
    z = q.rsample((4,))  # (4, 1, D)
    cached = q.log_prob(z)
    recomputed = family(h).log_prob(z.clone())
    torch.testing.assert_close(cached, recomputed)
    mean, pre, context = h.split(D, dim=-1)
    base = Independent(Normal(mean, (torch.nn.functional.softplus(pre) + 1e-8).sqrt()), 1)
    steps = [AutoregressiveAffine(made, context, cache_size=0) for made in family.steps]

    def flow(v):
        for step in steps:
            v = step(v)
        return v

    z0 = z[0].clone()
    for step in reversed(steps):
        z0 = step.inv(z0)
    jac = _jacobian(lambda v: flow(v.unsqueeze(0)).squeeze(0), z0.squeeze(0))
    expected = base.log_prob(z0) - torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(cached[0], expected)


def test_af_prior_density_sampling_and_normalisation():
    """log p(z) = log N(f(z)) + log|det df/dz| (autograd), samples invert f, and the density integrates to 1
    in one dimension (a grid sum)."""
    torch.manual_seed(3)
    prior = AutoregressiveFlowPrior(D, steps=2, hidden=(16,)).double()
    with torch.no_grad():
        for p in prior.parameters():
            p.mul_(2)
    p_z = prior()
    z = torch.randn(D, dtype=torch.float64)
    steps = [AutoregressiveAffine(made, cache_size=0) for made in prior.steps]

    def f(v):
        for step in steps:
            v = step(v)
        return v

    expected = Normal(0.0, 1.0).log_prob(f(z)).sum() + torch.linalg.slogdet(_jacobian(f, z))[1]
    torch.testing.assert_close(p_z.log_prob(z), expected)
    draws = p_z.sample((6,))
    torch.testing.assert_close(p_z.log_prob(draws), p_z.log_prob(draws.clone()))
    one = AutoregressiveFlowPrior(1, steps=2, hidden=(8,)).double()
    grid = torch.linspace(-12, 12, 20001, dtype=torch.float64).unsqueeze(-1)
    with torch.no_grad():
        mass = one().log_prob(grid).exp().sum() * (grid[1, 0] - grid[0, 0])
    assert abs(mass.item() - 1) < 1e-4


def test_af_prior_elbo_equals_iaf_posterior_elbo_over_epsilon():
    """Seed 003: a VAE with AF prior p(z) = N(f(z)) |det df/dz| has the same ELBO as the model over
    epsilon = f(z) with prior N(0, I), posterior q(z|x) pushed through f (an inverse-autoregressive flow on
    q) and decoder p(x | f^-1(epsilon)), on the same samples."""
    torch.manual_seed(4)
    model = build_model(model_config(x_dim=12, z_dim=D, hidden=(16,), prior="af", flow_steps=2, flow_hidden=(16,))).double()
    x = torch.bernoulli(torch.full((3, 12), 0.4, dtype=torch.float64))
    q = model.posterior(x)
    z = q.rsample((4,))
    elbo_af = model.likelihood(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
    f = model.prior.f()
    q_eps = TransformedDistribution(q, f)  # the IAF posterior over epsilon
    eps = z
    for step in f:
        eps = step(eps)
    z_back = eps
    for step in reversed(f):
        z_back = step.inv(z_back.clone())
    torch.testing.assert_close(z_back, z)
    standard = Independent(Normal(torch.zeros(D, dtype=torch.float64), torch.ones(D, dtype=torch.float64)), 1)
    elbo_iaf = model.likelihood(z_back).log_prob(x) + standard.log_prob(eps) - q_eps.log_prob(eps.clone())
    torch.testing.assert_close(elbo_af, elbo_iaf)
    assert math.isfinite(elbo_af.detach().mean().item())
