"""The hierarchical VAE: per-layer terms that add up, one layer equal to the VAE, both inference settings
(bottom-up, ladder), the VampPrior on top, convolutional networks, and the Ladder VAE's merge."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab import objectives
from vaelab.evaluation import elbo_terms, iwae_per_image
from vaelab.models import build_model, model_config
from vaelab.models.hvae import precision_weighted
from conftest import assert_refused

SETTINGS = [dict(), dict(inference="ladder"), dict(prior="vamp", prior_components=6), dict(z_dims=(4, 3, 2)),
            dict(inference="ladder", z_dims=(4, 3, 2))]


def _model(**settings):
    settings.setdefault("z_dims", (4, 3))
    return build_model(model_config("hvae", x_dim=30, hidden=(16,), **settings))


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
@pytest.mark.parametrize("objective", [dict(kind="elbo"), dict(kind="iwae", k=4), dict(kind="elbo", free_bits=0.5, free_bits_group=0),
                                       dict(kind="elbo", warmup=4)], ids=str)
def test_every_inference_setting_trains_with_finite_loss(setting, objective):
    torch.manual_seed(0)
    model = _model(**setting)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.bernoulli(torch.full((16, 30), 0.4))
    for step in range(5):
        beta = objectives.annealed_beta(step, 1.0, objective.get("warmup", 0))
        out = objectives.loss(model({"x": x}, objective.get("k", 1)), objective["kind"], beta, objective.get("free_bits", 0.0),
                              objective.get("free_bits_group", 1))
        assert torch.isfinite(out.loss)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    layers = len(setting.get("z_dims", (4, 3)))
    assert set(out.extras) == {f"kl_z{l}" for l in range(1, layers + 1)}
    assert torch.isfinite(iwae_per_image(model, x[:3], 8)).all()
    assert model.sample(3).shape == (3, 30)
    codes = model.encode({"x": x[:3]})
    assert list(codes) == [f"z{l}" for l in range(1, layers + 1)] and codes["z1"].shape == (3, 4)


@pytest.mark.parametrize("setting", SETTINGS, ids=str)
def test_per_layer_kls_sum_to_the_total_and_iwae_with_one_draw_is_the_elbo(setting):
    torch.manual_seed(1)
    model = _model(**setting).double()
    x = torch.bernoulli(torch.full((6, 30), 0.4, dtype=torch.float64))
    terms = model({"x": x}, 1)
    per_layer = {name: objectives.group_kl(terms, group) for name, group in terms.latents.items()}
    torch.testing.assert_close(sum(per_layer.values()), objectives.kl_term(terms))
    # With one draw each layer's analytic KL given the layer above and log q - log p estimate the same KL;
    # the bound built from log-weights is the ELBO built from the same points.
    torch.testing.assert_close(objectives.iwae_bound(terms), objectives.expectation(terms, objectives.log_weights(terms)))
    result = elbo_terms(model, x, repeats=3)
    assert result["kl"] == pytest.approx(sum(v for k, v in result.items() if k.startswith("kl_")))


def test_one_layer_reproduces_the_one_layer_vae():
    """L = 1 with bottom-up inference is the VAE: with the VAE's weights, the same terms on the same draws."""
    torch.manual_seed(2)
    vae = build_model(model_config("vae", x_dim=30, z_dim=4, hidden=(16,))).double()
    hvae = _model(z_dims=(4,)).double()
    state = {key.replace("encoder.", "encoders.0.", 1) if key.startswith("encoder.") else key: value for key, value in vae.state_dict().items()}
    missing, unexpected = hvae.load_state_dict(state, strict=False)
    assert not unexpected and all(not key.startswith(("encoders", "decoder")) for key in missing)
    x = torch.bernoulli(torch.full((5, 30), 0.4, dtype=torch.float64))
    torch.manual_seed(3)
    a = vae({"x": x}, 3)
    torch.manual_seed(3)
    b = hvae({"x": x}, 3)
    torch.testing.assert_close(a.log_px_z, b.log_px_z)
    torch.testing.assert_close(a.latents["z"].kl, b.latents["z1"].kl)
    torch.testing.assert_close(a.latents["z"].log_q, b.latents["z1"].log_q)
    torch.testing.assert_close(a.latents["z"].log_p, b.latents["z1"].log_p)


def test_ladder_merge_is_the_normalised_product_of_the_two_gaussians():
    up = Independent(Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 2.0])), 1)
    down = Independent(Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])), 1)
    merged = precision_weighted(up, down)
    z = torch.linspace(-8, 8, 40001)
    for d in range(2):
        product = (Normal(up.base_dist.loc[d], up.base_dist.scale[d]).log_prob(z) + Normal(down.base_dist.loc[d], down.base_dist.scale[d]).log_prob(z)).exp()
        product = product / product.sum()
        mean = (product * z).sum()
        variance = (product * (z - mean) ** 2).sum()
        assert float(merged.base_dist.loc[d]) == pytest.approx(float(mean), abs=1e-4)
        assert float(merged.base_dist.scale[d] ** 2) == pytest.approx(float(variance), rel=1e-3)


def test_convolutional_hvae_trains():
    torch.manual_seed(0)
    model = build_model(model_config("hvae", image_shape=(28, 28), hidden=(16,), channels=(4, 8), z_dims=(4, 3), net="conv"))
    out = objectives.loss(model({"x": torch.bernoulli(torch.full((4, 784), 0.3))}, 2))
    out.loss.backward()
    assert torch.isfinite(out.loss)


def test_bad_hvae_settings_are_refused_by_name():
    hvae = ("model.name", "hvae")
    assert_refused([hvae, ("model.inference", "sideways")], "model.inference: must be one of bottom-up, ladder")
    assert_refused([hvae, ("model.z_dims", "[]")], "model.z_dims: must be one or more sizes")
    assert_refused([hvae, ("model.prior", "mog")], "model.prior: must be normal or vamp")
    assert_refused([hvae, ("model.inference", "ladder"), ("model.prior", "vamp")], "model.prior: vamp needs the top layer's q")


def test_conditional_prior_variance_has_its_floor():
    """p(z_l | z_{l+1}) never narrows below model.prior_variance_floor, whatever its network says (a narrower one made
    a two-layer MNIST run's KL overflow at step 3,500)."""
    model = _model(prior_variance_floor=0.01)
    with torch.no_grad():
        model.conditional_priors[0][-1].bias.fill_(-1e4)  # softplus(pre-variance) underflows to 0
    p = model.conditional_prior(1, torch.randn(5, 3))
    torch.testing.assert_close(p.base_dist.scale.pow(2), torch.full((5, 4), 0.01))
    assert_refused([("model.name", "hvae"), ("model.prior_variance_floor", "0")], "model.prior_variance_floor: must be > 0")
