"""Priors, posteriors and objective settings: densities against direct computations, schedules,
free bits, active units, and a few training steps for every setting."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

from vaelab import objectives
from vaelab.training.config import RunConfig, set_key, validate
from vaelab.errors import ConfigError
from vaelab.evaluation import active_units, iwae_per_image
from vaelab.models import build_model, model_config
from vaelab.models.base import LatentGroup, ModelSpec, Terms
from vaelab.distributions.posteriors import FullCovarianceGaussian
from torch.distributions import MixtureSameFamily

from conftest import assert_refused
from vaelab.distributions.priors import MixtureOfGaussiansPrior, StandardNormalPrior

LOG_2PI = math.log(2 * math.pi)


def test_mixture_prior_layout_and_initialisation():
    prior = MixtureOfGaussiansPrior(z_dim=10, components=500)
    assert prior.z_pre.shape == (1, 1000, 10)
    assert abs(prior.z_pre.std().item() - 1 / math.sqrt(500 * 10)) < 0.05 / math.sqrt(5000)
    dist = prior()
    assert dist.mixture_distribution.probs.allclose(torch.full((500,), 1 / 500))
    torch.testing.assert_close(dist.component_distribution.mean, prior.z_pre[0, :500])


def test_mixture_log_density_matches_direct_computation():
    prior = MixtureOfGaussiansPrior(z_dim=3, components=7).double()
    with torch.no_grad():
        prior.z_pre.normal_()
    z = torch.randn(4, 5, 3, dtype=torch.float64) * 2
    means, pre = prior.z_pre[0, :7], prior.z_pre[0, 7:]
    var = torch.nn.functional.softplus(pre) + 1e-8
    direct = torch.zeros(4, 5, dtype=torch.float64)
    for k in range(7):  # log (1/K) sum_k N(z; m_k, diag v_k), one component at a time
        log_n = -0.5 * (LOG_2PI + var[k].log() + (z - means[k]) ** 2 / var[k]).sum(-1)
        direct += log_n.exp() / 7
    torch.testing.assert_close(prior().log_prob(z), direct.log())
    # The matmul expansion equals MixtureSameFamily's own log-density, in float64 and in float32.
    dist = prior()
    torch.testing.assert_close(prior().log_prob(z), MixtureSameFamily.log_prob(dist, z))
    z32, dist32 = z.float(), prior.float()()
    torch.testing.assert_close(dist32.log_prob(z32), MixtureSameFamily.log_prob(dist32, z32), rtol=1e-5, atol=1e-4)
    prior.double()
    # Far from every component the direct sum underflows; logsumexp does not.
    assert torch.isfinite(prior().log_prob(torch.full((1, 3), 60.0, dtype=torch.float64))).all()


def _full_cov(z_dim=4, batch=6):
    family = FullCovarianceGaussian(z_dim).double()
    h = torch.randn(batch, family.n_params, dtype=torch.float64)
    return family, h, family(h)


def test_full_covariance_log_q_matches_torch_and_change_of_variables():
    z_dim = 4
    family, h, q = _full_cov(z_dim)
    L = q.scale_tril
    assert torch.equal(L, L.tril()) and (L.diagonal(dim1=-2, dim2=-1) > 0).all()
    mean, pre = h[:, :z_dim], h[:, z_dim : 2 * z_dim]
    torch.testing.assert_close(L.diagonal(dim1=-2, dim2=-1) ** 2, torch.nn.functional.softplus(pre) + 1e-8)
    reference = MultivariateNormal(mean, covariance_matrix=L @ L.transpose(-1, -2))
    eps = torch.randn(3, 6, z_dim, dtype=torch.float64)
    z = mean + (L @ eps.unsqueeze(-1)).squeeze(-1)  # z = mu + L eps
    torch.testing.assert_close(q.log_prob(z), reference.log_prob(z))
    # log q(z) = log N(eps; 0, I) - sum_i log |L_ii|
    change_of_variables = Normal(0.0, 1.0).log_prob(eps).sum(-1) - L.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
    torch.testing.assert_close(q.log_prob(z), change_of_variables)


def test_full_covariance_kl_to_standard_normal_is_analytic_and_correct():
    _, _, q = _full_cov(3, batch=5)
    p = StandardNormalPrior(3).double()()
    analytic = kl_divergence(q, p)
    mvn_p = MultivariateNormal(torch.zeros(3, dtype=torch.float64), scale_tril=torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(analytic, kl_divergence(q, mvn_p))
    z = q.sample((100_000,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    assert ((log_ratio.mean(0) - analytic).abs() < 5 * log_ratio.std(0) / math.sqrt(1e5)).all()
    shifted = Independent(Normal(torch.full((3,), 0.5, dtype=torch.float64), torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)), 1)
    mvn_shifted = MultivariateNormal(shifted.mean, scale_tril=torch.diag(shifted.stddev))
    torch.testing.assert_close(kl_divergence(q, shifted), kl_divergence(q, mvn_shifted))


def test_kl_annealing_schedule():
    assert objectives.annealed_beta(0, 1.0, 100) == 0.0
    assert objectives.annealed_beta(25, 1.0, 100) == 0.25
    assert objectives.annealed_beta(100, 1.0, 100) == 1.0
    assert objectives.annealed_beta(5000, 2.0, 100) == 2.0
    assert objectives.annealed_beta(0, 3.0, 0) == 3.0  # warm-up off


def _terms_with_kl_dims(kl_dims):
    b = kl_dims.shape[0]
    zeros = torch.zeros(1, b)
    return Terms.one_group(log_px_z=zeros - 50, log_p=zeros, log_q=zeros, kl=kl_dims.sum(-1), kl_dims=kl_dims)


def test_free_bits_clamp_per_dimension_and_group():
    kl_dims = torch.tensor([[0.1, 2.0, 0.3, 0.0], [0.3, 4.0, 0.1, 0.2]], requires_grad=True)
    terms = _terms_with_kl_dims(kl_dims)
    # batch means per dim: 0.2, 3.0, 0.2, 0.1 -> max(0.5, .) per dim = 0.5 + 3.0 + 0.5 + 0.5
    fb = objectives.free_bits_kl(terms, 0.5, group_size=1)
    assert fb.item() == pytest.approx(4.5)
    fb.backward()
    # Dimensions under lambda get no gradient: they are free; the active one gets 1/B per sample.
    assert torch.equal(kl_dims.grad, torch.tensor([[0.0, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.0]]))
    # Groups of two: (0.2 + 3.0) and (0.2 + 0.1) -> 3.2 + max(0.5, 0.3)
    assert objectives.free_bits_kl(terms, 0.5, group_size=2).item() == pytest.approx(3.7)
    # One group of all dims: max(0.5, 3.5)
    assert objectives.free_bits_kl(terms, 0.5, group_size=0).item() == pytest.approx(3.5)
    # With lambda below every group's KL, free bits is the plain KL.
    out = objectives.loss(terms, "elbo", 1.0, free_bits=0.01, free_bits_group=2)
    torch.testing.assert_close(out.loss, objectives.loss(terms).loss)
    # Logged NELBO is the true one, not the free-bits loss.
    assert objectives.loss(terms, free_bits=0.5).nelbo.item() == pytest.approx(50 + 3.5)


def test_free_bits_groups_need_per_dimension_kl():
    terms = Terms.one_group(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3))
    # A group without per-dimension KL is one free-bits block whatever the block size ...
    assert objectives.free_bits_kl(terms, 0.5, group_size=1).item() == 1.0
    assert objectives.free_bits_kl(terms, 0.5, group_size=0).item() == 1.0
    assert objectives.free_bits_kl(terms, 1.5, group_size=1).item() == 1.5
    # ... and a model whose posterior and prior do not factorise refuses a block size it cannot honour.
    cfg = RunConfig()
    for key, value in [("model.posterior", "full"), ("objective.free_bits", "0.5")]:
        set_key(cfg, key, value)
    with pytest.raises(ConfigError, match="objective.free_bits_group"):
        validate(cfg)
    set_key(cfg, "objective.free_bits_group", "0")
    validate(cfg)
    set_key(cfg, "objective.kind", "iwae")
    set_key(cfg, "objective.k", "5")
    with pytest.raises(ConfigError, match="objective.free_bits"):
        validate(cfg)


SETTINGS = [
    dict(prior="normal", posterior="diagonal"),
    dict(prior="mog", posterior="diagonal", prior_components=20),
    dict(prior="normal", posterior="full"),
    dict(prior="mog", posterior="full", prior_components=20),
    dict(prior="vamp", posterior="diagonal", prior_components=20),
    dict(prior="vamp", posterior="full", prior_components=20),
    dict(prior="normal", posterior="iaf", flow_steps=2, flow_hidden=(16,)),
    dict(prior="af", posterior="diagonal", flow_steps=2, flow_hidden=(16,)),
    dict(prior="vamp", posterior="iaf", prior_components=20, flow_steps=2, flow_hidden=(16,)),
]
OBJECTIVES = [
    dict(kind="elbo"),
    dict(kind="iwae", k=5),
    dict(kind="elbo", beta=4.0),
    dict(kind="elbo", warmup=10),
    dict(kind="elbo", free_bits=0.25, free_bits_group=0),
]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s['prior']}-{s['posterior']}")
@pytest.mark.parametrize("objective", OBJECTIVES, ids=lambda o: "-".join(f"{k}{v}" for k, v in o.items()))
def test_every_setting_trains_with_finite_loss(setting, objective):
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=64, z_dim=4, hidden=(32,), **setting))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.bernoulli(torch.rand(32, 64))
    k = objective.get("k", 1)
    for step in range(6):
        beta = objectives.annealed_beta(step, objective.get("beta", 1.0), objective.get("warmup", 0))
        terms = model({"x": x}, k)
        assert terms.log_px_z.shape == terms.log_pz.shape == terms.log_qz.shape == (k, 32)
        out = objectives.loss(terms, objective["kind"], beta, objective.get("free_bits", 0.0), objective.get("free_bits_group", 1))
        assert torch.isfinite(out.loss) and torch.isfinite(out.nelbo)
        opt.zero_grad()
        out.loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
    assert torch.isfinite(iwae_per_image(model, x[:4], 10)).all()
    assert model.sample(3).shape == (3, 64)


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: f"{s['prior']}-{s['posterior']}")
def test_iwae_with_one_draw_equals_the_elbo_for_every_setting(setting):
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=30, z_dim=3, hidden=(16,), **setting)).double()
    terms = model({"x": torch.bernoulli(torch.full((5, 30), 0.4, dtype=torch.float64))}, 1)
    torch.testing.assert_close(objectives.iwae_bound(terms), objectives.expectation(terms, objectives.log_weights(terms)))


def test_mixture_prior_parameters_are_learned():
    model = build_model(model_config(x_dim=64, z_dim=4, hidden=(32,), prior="mog", prior_components=10))
    before = model.prior.z_pre.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    out = objectives.loss(model({"x": torch.bernoulli(torch.rand(16, 64))}))
    out.loss.backward()
    opt.step()
    assert not torch.equal(before, model.prior.z_pre)


@pytest.mark.parametrize("posterior", ["diagonal", "full"])
def test_vamp_prior_density_is_the_mixture_of_posteriors_at_the_pseudo_inputs(posterior):
    """log p(z) = log (1/K) sum_k q(z | u_k), computed directly from the model's posterior at the
    pseudo-inputs, which lie in [0, 1]; the prior's gradient reaches the pseudo-inputs and the encoder."""
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=64, z_dim=4, hidden=(32,), prior="vamp", prior_components=7, posterior=posterior)).double()
    with torch.no_grad():  # spread the pseudo-inputs over [0, 1] (and past it, where hardtanh clips)
        model.prior.pseudo_weights.uniform_(-0.2, 1.2)
    u = model.prior.pseudo_inputs()
    assert u.shape == (7, 64) and u.min() >= 0 and u.max() <= 1
    z = torch.randn(11, 3, 4, dtype=torch.float64)
    q = model.posterior(u)
    direct = torch.logsumexp(q.log_prob(z.unsqueeze(-2)), dim=-1) - math.log(7)
    prior = model.prior(model.posterior)
    torch.testing.assert_close(prior.log_prob(z), direct)
    prior.log_prob(z).sum().backward()
    assert model.prior.pseudo_weights.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.encoder.parameters())
    assert prior.sample((5,)).shape == (5, 4)


def test_vamp_prior_is_refused_where_the_posterior_sees_a_label():
    for name in ("cvae", "ssvae"):
        assert_refused([("model.name", name), ("model.prior", "vamp")],
                       f"model.prior: vamp needs a posterior q\\(z \\| x\\) of the image alone; '{name}'")


def test_active_units_counts_dimensions_whose_posterior_mean_varies():
    class Fixed(torch.nn.Module):
        spec = ModelSpec()

        def encode(self, batch):
            x = batch["x"]
            return {"z": torch.stack([x[:, 0] * 3, x[:, 1] * 0.01, torch.zeros_like(x[:, 0])], -1), "u": x[:, :1] * 0.05,
                    "label": torch.zeros(x.shape[0], dtype=torch.long)}

    x = torch.randn(5000, 2)
    variances = active_units(Fixed(), x)
    assert set(variances) == {"z", "u"}  # integer label codes are not latent dimensions
    assert int((variances["z"] > 0.01).sum()) == 1 and int((variances["u"] > 0.01).sum()) == 0
    z = variances["z"]
    assert z[0] == pytest.approx(9, rel=0.1) and z[1] < 0.01 and z[2] == 0


def test_free_bits_apply_per_latent_group():
    """Two groups with per-dimension KL and one without: each is clamped on its own."""
    b = 4
    zeros = torch.zeros(1, b)
    a_dims = torch.tensor([[0.1, 2.0]] * b)  # block sums with size 1: 0.1 -> 0.5, 2.0 stays
    c_dims = torch.tensor([[0.2, 0.2, 0.2]] * b)
    terms = Terms(zeros - 50, {"a": LatentGroup(zeros, zeros, a_dims.sum(-1), a_dims),
                               "c": LatentGroup(zeros, zeros, c_dims.sum(-1), c_dims),
                               "label": LatentGroup(zeros, zeros + 0.3, None)})  # MC KL 0.3, no dimensions
    assert objectives.free_bits_kl(terms, 0.5, group_size=1).item() == pytest.approx((0.5 + 2.0) + 3 * 0.5 + 0.5)
    assert objectives.free_bits_kl(terms, 0.5, group_size=2).item() == pytest.approx(2.1 + (0.5 + 0.5) + 0.5)
    assert objectives.free_bits_kl(terms, 0.5, group_size=0).item() == pytest.approx(2.1 + 0.6 + 0.5)
    out = objectives.loss(terms)
    assert out.kl.item() == pytest.approx(2.1 + 0.6 + 0.3)
    assert {k: round(v.item(), 4) for k, v in out.extras.items()} == {"kl_a": 2.1, "kl_c": 0.6, "kl_label": 0.3}


def test_cvae_conditional_prior_is_learned_per_label_with_analytic_kl():
    """p(z | y) = N(m_y, diag v_y): the KL in the terms is the closed form against the label's own Gaussian,
    prior samples follow the labels asked for, and M2 refuses the setting."""
    torch.manual_seed(0)
    model = build_model(model_config("cvae", x_dim=30, z_dim=3, hidden=(16,), classes=4, conditional_prior=True)).double()
    with torch.no_grad():
        model.label_prior.means.copy_(torch.arange(12, dtype=torch.float64).view(4, 3))
    x = torch.bernoulli(torch.full((6, 30), 0.4, dtype=torch.float64))
    y = torch.tensor([0, 1, 2, 3, 1, 2])
    terms = model({"x": x, "y": y}, 2)
    q = model.posterior(x, y)
    p = Independent(Normal(model.label_prior.means[y], (torch.nn.functional.softplus(model.label_prior.raw_variances[y]) + 1e-8).sqrt()), 1)
    torch.testing.assert_close(terms.latents["z"].kl, kl_divergence(q, p))
    z = model.label_prior(torch.full((2000,), 3)).sample()
    torch.testing.assert_close(z.mean(0), torch.tensor([9.0, 10.0, 11.0], dtype=torch.float64), atol=0.1, rtol=0)
    assert model.sample(4, labels=torch.tensor([0, 1, 2, 3])).shape == (4, 30)
    assert model.label_grid(2).shape == (2, 4, 30)
    out = objectives.loss(terms)
    out.loss.backward()
    assert model.label_prior.means.grad.abs().sum() > 0
    assert_refused([("model.name", "ssvae"), ("model.conditional_prior", "true")], "model.conditional_prior: applies to cvae")
    assert_refused([("model.name", "cvae"), ("model.conditional_prior", "true"), ("model.prior", "mog")],
                   "model.conditional_prior: replaces p\\(z\\): it needs model.prior = normal")
