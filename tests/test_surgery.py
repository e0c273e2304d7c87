"""ELBO surgery (Hoffman & Johnson 2016): the average KL split into the index-code mutual information and the
marginal KL, checked on posteriors whose answers are known, against a direct mixture computation, and as
every evaluation and `vaelab plot --kind kl` report it."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab.evaluation import elbo_surgery, evaluate
from vaelab.models import build_model, model_config
from vaelab.models.base import ModelSpec
from vaelab.report import figures


class GaussianEncoder(torch.nn.Module):
    """q(z | x) = N(scale * x, sigma^2 I), p(z) = N(0, I): the posterior sees x as much as `scale` says."""

    spec = ModelSpec(aggregate_posterior=True)

    def __init__(self, scale: float, sigma: float):
        super().__init__()
        self.scale, self.sigma = scale, sigma

    def posteriors(self, batch):
        x = batch["x"]
        return {"z": Independent(Normal(self.scale * x, torch.full_like(x, self.sigma)), 1)}

    def priors(self):
        return {"z": Independent(Normal(torch.zeros(2), torch.ones(2)), 1)}


def test_a_posterior_that_ignores_x_has_no_mutual_information_and_no_kl():
    torch.manual_seed(0)
    parts = elbo_surgery(GaussianEncoder(scale=0.0, sigma=1.0), torch.randn(400, 2))["z"]
    assert abs(parts["mutual_information"]) < 1e-6 and abs(parts["marginal_kl"]) < 1e-6 and abs(parts["kl"]) < 1e-6


def test_posteriors_far_apart_reach_the_log_n_ceiling():
    torch.manual_seed(0)
    parts = elbo_surgery(GaussianEncoder(scale=100.0, sigma=0.01), torch.randn(300, 2))["z"]
    assert parts["mutual_information"] == pytest.approx(math.log(300), abs=1e-3)
    assert parts["kl"] == pytest.approx(parts["mutual_information"] + parts["marginal_kl"], rel=1e-6)


def test_the_aggregate_posterior_is_the_mixture_of_every_posterior():
    """With one draw per input, log q(z_n) must be logsumexp_m log N(z_n; mu_m, sigma_m) - log N, computed here
    term by term; so must the mutual information and the marginal KL built from it."""
    torch.manual_seed(1)
    model = GaussianEncoder(scale=1.5, sigma=0.7)
    x = torch.randn(50, 2)
    torch.manual_seed(2)
    parts = elbo_surgery(model, x, chunk=7)["z"]
    torch.manual_seed(2)
    q = model.posteriors({"x": x})["z"]
    z = q.sample()
    table = torch.stack([torch.stack([Normal(1.5 * x[m], 0.7).log_prob(z[n]).sum() for m in range(50)]) for n in range(50)])
    log_aggregate = torch.logsumexp(table, 1) - math.log(50)
    log_p = Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert parts["mutual_information"] == pytest.approx(float((table.diagonal() - log_aggregate).mean()), abs=1e-4)
    assert parts["marginal_kl"] == pytest.approx(float((log_aggregate - log_p).mean()), abs=1e-4)


@pytest.mark.parametrize("setting", [dict(), dict(prior="vamp", prior_components=5), dict(posterior="iaf", flow_hidden=(8,))])
def test_every_evaluation_reports_surgery_active_units_and_kl_per_dimension(setting, tiny_data):
    from vaelab import data

    torch.manual_seed(0)
    model = build_model(model_config(x_dim=784, image_shape=(28, 28), z_dim=3, hidden=(16,), **setting)).eval()
    result = evaluate(model, data.load("mnist", "test", tiny_data), "full", iws=(1,))
    assert 0 <= result["mutual_information"] <= math.log(result["surgery_images"]) + 1e-3
    assert result["marginal_kl"] > -0.5  # a KL, up to its Monte Carlo error
    assert result["z_dim"] == 3 and 0 <= result["active_units"] <= 3
    assert ("per_dimension_kl" in result) == (setting == {})  # analytic per dimension only when q and p factorise


def test_kl_plot_shows_activity_where_kl_does_not_split_and_the_surgery_panel(captured):
    surgery = {"mutual_information": 2.0, "marginal_kl": 1.5, "kl": 3.5, "images": 100, "log_images": math.log(100)}
    figures.kl_diagnostics_figure(torch.tensor([0.5, 0.001, 2.0]), False, surgery, "unused.png", title="run (vae)")
    left, right = captured[0].axes
    assert left.get_ylabel() == "Var_x E[z_j | x]" and "2 active units" in left.get_title()
    assert right.get_title() == "ELBO surgery, N = 100 images"
    assert [t.get_text() for t in right.get_legend().get_texts()] == ["log N = 4.61", "I(x; z) = 2.00", "KL(q(z) || p(z)) = 1.50"]


def test_kl_plot_names_each_latent_group_of_a_hierarchy(captured):
    figures.kl_diagnostics_figure(torch.tensor([0.5, 0.2, 1.0]), True, None, "unused.png", groups=[("z1", 2), ("z2", 1)])
    (ax,) = captured[0].axes
    assert [t.get_text() for t in ax.texts] == ["z1", "z2"] and [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "0"]
    assert ax.get_xlabel() == "latent dimension within each group" and ax.get_title().startswith("KL per dimension: total 1.70 nats")


def test_pairs_whose_density_underflows_count_as_zero_mass_and_are_reported():
    """A flow posterior may not be able to evaluate another input's draw (its inverse overflows): those pairs
    add nothing to the aggregate posterior, so with every foreign pair lost the information is log N."""

    class Overflowing(GaussianEncoder):
        def posteriors(self, batch):
            q = super().posteriors(batch)["z"]
            real = q.log_prob

            class Q:
                def sample(self_inner):
                    return q.sample()

                def log_prob(self_inner, z):
                    out = real(z)
                    if out.dim() == 2:  # the cross table: lose every pair but the draw's own
                        eye = torch.eye(out.shape[1], dtype=torch.bool)[: out.shape[0]]
                        out = torch.where(eye, out, torch.full_like(out, float("nan")))
                    return out

            return {"z": Q()}

    torch.manual_seed(0)
    parts = elbo_surgery(Overflowing(scale=1.0, sigma=1.0), torch.randn(20, 2), chunk=20)["z"]
    assert parts["mutual_information"] == pytest.approx(math.log(20), abs=1e-5)
    assert parts["underflowed_pairs"] == 20 * 19
