"""Densities against closed forms, KL against Monte Carlo, and the bounds against exact log p(x)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import kl_divergence

from vaelab import objectives
from vaelab.evaluation import elbo_terms, iwae_per_image, plan_chunks
from vaelab.models import build_model, model_config
from vaelab.models.base import LatentGroup, Terms
from vaelab.distributions.posteriors import DiagonalGaussian
from vaelab.distributions.priors import StandardNormalPrior

LOG_2PI = math.log(2 * math.pi)


def test_diagonal_gaussian_log_density_matches_closed_form():
    z_dim = 5
    h = torch.randn(7, 2 * z_dim, dtype=torch.float64)
    q = DiagonalGaussian(z_dim)(h)
    mean, pre = h.split(z_dim, -1)
    var = torch.nn.functional.softplus(pre) + 1e-8
    z = torch.randn(3, 7, z_dim, dtype=torch.float64)
    expected = -0.5 * (LOG_2PI + var.log() + (z - mean) ** 2 / var).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)
    torch.testing.assert_close(q.variance, var)


def test_standard_normal_prior_log_density():
    z = torch.randn(4, 6, 3)
    expected = -0.5 * (LOG_2PI + z**2).sum(-1)
    torch.testing.assert_close(StandardNormalPrior(3)().log_prob(z), expected)


def test_bernoulli_decoder_log_likelihood_matches_closed_form():
    model = build_model(model_config(x_dim=12, z_dim=2, hidden=(8,))).double()
    z = torch.randn(3, 4, 2, dtype=torch.float64)
    x = torch.bernoulli(torch.full((4, 12), 0.4, dtype=torch.float64))
    p = torch.sigmoid(model.decoder(z))
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum(-1)
    torch.testing.assert_close(model.likelihood(z).log_prob(x), expected)


def test_independent_bernoulli_matches_torch_bernoulli_values_gradients_and_moments():
    from torch.distributions import Bernoulli, Independent

    from vaelab.distributions.likelihoods import IndependentBernoulli

    torch.manual_seed(0)
    # Extreme logits included: the softplus form must stay exact where exp(h) overflows.
    logits = torch.cat([torch.randn(3, 5, 10, dtype=torch.float64) * 4, torch.full((3, 5, 2), 60.0, dtype=torch.float64),
                        torch.full((3, 5, 2), -60.0, dtype=torch.float64)], -1).requires_grad_()
    x = torch.bernoulli(torch.full((5, 14), 0.5, dtype=torch.float64))  # broadcast against k = 3 samples
    ours, reference = IndependentBernoulli(logits), Independent(Bernoulli(logits=logits), 1)
    assert ours.batch_shape == reference.batch_shape and ours.event_shape == reference.event_shape
    torch.testing.assert_close(ours.log_prob(x), reference.log_prob(x))
    (g_ours,) = torch.autograd.grad(ours.log_prob(x).sum(), logits)
    (g_ref,) = torch.autograd.grad(reference.log_prob(x).sum(), logits)
    torch.testing.assert_close(g_ours, g_ref)
    torch.testing.assert_close(ours.mean, reference.mean)
    torch.testing.assert_close(ours.variance, reference.variance)
    torch.testing.assert_close(ours.entropy(), reference.entropy())
    assert torch.isfinite(ours.log_prob(x)).all()
    assert ours.sample((2,)).shape == (2, 3, 5, 14)
    with pytest.raises(ValueError):
        IndependentBernoulli(logits.detach(), validate_args=True).log_prob(torch.full((5, 14), 0.5, dtype=torch.float64))


def test_analytic_kl_matches_closed_form_and_monte_carlo():
    z_dim = 4
    q = DiagonalGaussian(z_dim)(torch.randn(6, 2 * z_dim, dtype=torch.float64))
    p = StandardNormalPrior(z_dim).double()()
    analytic = kl_divergence(q, p)
    var, mean = q.variance, q.mean
    closed = 0.5 * (var + mean**2 - 1 - var.log()).sum(-1)
    torch.testing.assert_close(analytic, closed)
    z = q.sample((200_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(z.shape[0])
    assert torch.all((mc - analytic).abs() < 5 * se + 1e-6), (mc, analytic, se)


def _terms(k=1, b=5, with_kl=False):
    g = torch.Generator().manual_seed(1)
    t = lambda: torch.randn(k, b, generator=g, dtype=torch.float64) * 3  # noqa: E731
    return Terms.one_group(log_px_z=t() - 80, log_p=t() - 10, log_q=t() - 5, kl=torch.rand(b, dtype=torch.float64) if with_kl else None)


def test_iwae_with_one_sample_equals_the_elbo_estimate_on_the_same_sample():
    terms = _terms(k=1)
    torch.testing.assert_close(objectives.iwae_bound(terms), objectives.elbo(terms))
    # The model path too: same samples, same value.
    model = build_model(model_config(x_dim=20, z_dim=3, hidden=(16,)))
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    t = model({"x": x}, k=1)
    single_sample_elbo = t.log_px_z[0] + t.log_pz[0] - t.log_qz[0]
    torch.testing.assert_close(objectives.iwae_bound(t), single_sample_elbo)
    mc_terms = Terms.one_group(t.log_px_z, t.log_pz, t.log_qz, kl=None)
    torch.testing.assert_close(objectives.elbo(mc_terms), single_sample_elbo)


def test_iwae_is_stable_for_very_negative_log_weights():
    terms = _terms(k=1000)
    terms.log_px_z = terms.log_px_z - 1e5  # exp() of these underflows to 0 in float64
    bound = objectives.iwae_bound(terms)
    assert torch.isfinite(bound).all()
    log_w = objectives.log_weights(terms)
    expected = log_w.max(0).values + (log_w - log_w.max(0).values).exp().mean(0).log()
    torch.testing.assert_close(bound, expected)


def test_loss_beta_weights_only_the_kl_term():
    terms = _terms(k=3, with_kl=True)
    rec = -terms.log_px_z.mean(0)
    for beta in (0.0, 1.0, 4.0):
        out = objectives.loss(terms, "elbo", beta)
        torch.testing.assert_close(out.loss, (rec + beta * terms.latents["z"].kl).mean())
        torch.testing.assert_close(out.nelbo, (rec + terms.latents["z"].kl).mean())  # logged NELBO is the true one
    iw = objectives.loss(terms, "iwae", 1.0)
    torch.testing.assert_close(iw.loss, -objectives.iwae_bound(terms).mean())
    with pytest.raises(ValueError):
        objectives.loss(terms, "nope")


def test_kl_term_uses_monte_carlo_without_analytic_kl():
    terms = _terms(k=4)
    torch.testing.assert_close(objectives.kl_term(terms), (terms.log_qz - terms.log_pz).mean(0))


def _exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log int p(x|z) p(z) dz for a 1-D latent, by dense quadrature."""
    grid = torch.linspace(-12, 12, 48001, dtype=torch.float64).unsqueeze(-1)
    log_joint = model.likelihood(grid.unsqueeze(1)).log_prob(x) + model.prior().log_prob(grid).unsqueeze(1)
    return torch.logsumexp(log_joint, 0) + math.log(float(grid[1] - grid[0]))


def test_bounds_order_and_converge_to_exact_log_likelihood():
    torch.manual_seed(3)
    model = build_model(model_config(x_dim=8, z_dim=1, hidden=(16,))).double()
    x = torch.bernoulli(torch.full((6, 8), 0.5, dtype=torch.float64))
    exact = _exact_log_px(model, x)
    elbo = -torch.tensor(elbo_terms(model, x, repeats=2000)["nelbo"], dtype=torch.float64)
    b10 = iwae_per_image(model, x, 10, repeats=200)
    b100 = iwae_per_image(model, x, 100, repeats=20)
    b5000 = iwae_per_image(model, x, 5000, repeats=4, budget=4096)  # many small chunks
    assert elbo <= b10.mean() <= b100.mean() <= b5000.mean() + 1e-3
    # A bound in expectation: single estimates may overshoot by their Monte Carlo error only.
    assert b5000.mean() <= exact.mean() + 0.01
    torch.testing.assert_close(b5000, exact, atol=0.04, rtol=0)
    assert (exact.mean() - elbo) > 0.05  # the test would be vacuous if q were already exact


def test_chunk_plan_respects_the_budget():
    for n, k, budget in [(10000, 5000, 1 << 24), (100, 100, 1 << 20), (7, 1, 784), (3, 9, 10)]:
        images, samples = plan_chunks(n, k, 784, budget)
        assert 1 <= images <= n and 1 <= samples <= k
        assert images * samples * 784 <= max(budget, 784)


def test_lazy_densities_are_computed_once_and_only_when_a_loss_reads_them():
    eager = _terms(k=3, with_kl=True)
    calls = []

    def later(value):
        return lambda: calls.append(1) or value

    lazy = Terms.one_group(eager.log_px_z, later(eager.log_pz), later(eager.log_qz), kl=eager.latents["z"].kl)
    elbo_loss = objectives.loss(lazy, "elbo")
    assert calls == []  # the ELBO with an analytic KL needs neither log p(z) nor log q(z|x)
    torch.testing.assert_close(elbo_loss.loss, objectives.loss(eager, "elbo").loss)
    torch.testing.assert_close(objectives.loss(lazy, "iwae").loss, objectives.loss(eager, "iwae").loss)
    objectives.iwae_bound(lazy)
    assert calls == [1, 1]  # each computed once, then kept
    # The VAE hands its densities over lazily; reading them gives the distributions' log-densities
    # at the same samples z (redrawn here from the same seed).
    model = build_model(model_config(x_dim=20, z_dim=3, hidden=(16,)))
    x = torch.bernoulli(torch.full((8, 20), 0.3))
    torch.manual_seed(3)
    terms = model({"x": x}, k=4)
    torch.manual_seed(3)
    q = model.posterior(x)
    z = q.rsample((4,))
    assert terms.log_pz.shape == terms.log_qz.shape == (4, 8)
    torch.testing.assert_close(terms.log_qz, q.log_prob(z))
    torch.testing.assert_close(terms.log_pz, model.prior().log_prob(z))


def test_iwae_streams_chunks_into_a_running_logsumexp_per_repeat():
    """Chunks of draws that straddle repeats are folded into each repeat's running logsumexp: the result
    equals one logsumexp over all of a repeat's log-weights, while no call sees more than one chunk."""

    class Recorded(torch.nn.Module):
        """Log-weights drawn at random, kept so the whole set can be combined at once afterwards."""

        spec, elements_per_sample = build_model(model_config(x_dim=4)).spec, 4

        def __init__(self):
            super().__init__()
            self.calls, self.draws = [], []

        def forward(self, batch, k):
            log_w = torch.randn(k, batch["x"].shape[0], dtype=torch.float64) * 5 - 100
            self.calls.append((k, batch["x"].shape[0]))
            self.draws.append(log_w)
            return Terms.one_group(log_w, torch.zeros_like(log_w), torch.zeros_like(log_w))

    x = torch.zeros(3, 4)
    for m, repeats, budget in [(7, 5, 4 * 3 * 4), (10, 3, 4 * 3 * 10), (1, 9, 4 * 3 * 2), (50, 2, 4 * 3 * 50 * 2)]:
        model = Recorded()
        bound = iwae_per_image(model, x, m, repeats, budget)
        assert max(k * b for k, b in model.calls) * 4 <= budget
        # Draws come image chunk by image chunk; within one, repeat after repeat.
        expected, at = [], 0
        while at < len(model.draws):
            images, drawn = model.calls[at][1], 0
            chunk = []
            while drawn < m * repeats:
                chunk.append(model.draws[at])
                drawn += model.calls[at][0]
                at += 1
            log_w = torch.cat(chunk).view(repeats, m, images)
            expected.append((torch.logsumexp(log_w, 1) - math.log(m)).mean(0))
        torch.testing.assert_close(bound, torch.cat(expected))
