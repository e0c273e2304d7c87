"""What the VampPrior costs: one encoder pass over its K pseudo-inputs per training forward whatever the number
of draws, one per evaluation call whatever its chunks and repeats (VampPrior.frozen), with the same bounds
as without the frozen mixture, gradients to the pseudo-inputs in training and no stale mixture after a step."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from vaelab import objectives
from vaelab.distributions.priors import DiagonalGaussianMixture, logsumexp_last
from vaelab.evaluation import bounds, elbo_terms, iwae_per_image, plan_chunks
from vaelab.models import build_model, model_config

COMPONENTS, IMAGES = 7, 10
# The VAE, and the hierarchical VAE whose top layer's posterior the VampPrior mixes.
MODELS = {"vae": dict(name="vae", z_dim=4), "hvae": dict(name="hvae", z_dims=(4, 3))}


def _model(name: str):
    settings = dict(MODELS[name])
    model = build_model(model_config(settings.pop("name"), x_dim=30, hidden=(16,), prior="vamp", prior_components=COMPONENTS, **settings))
    with torch.no_grad():  # pseudo-inputs spread over [0, 1], so their posteriors differ
        model.prior.pseudo_weights.uniform_(0.0, 1.0)
    return model


def _encoder_of_pseudo_inputs(model) -> torch.nn.Module:
    return model.encoders[-1] if hasattr(model, "encoders") else model.encoder


class PseudoPasses:
    """Counts the encoder's calls on the pseudo-inputs (K rows equal to u_k)."""

    def __init__(self, model):
        self.count, self.prior = 0, model.prior
        _encoder_of_pseudo_inputs(model).register_forward_hook(self._hook)

    @torch.no_grad()
    def _hook(self, module, inputs, output):
        rows = inputs[0]
        if rows.shape[0] == self.prior.components and torch.equal(rows, self.prior.pseudo_inputs()):
            self.count += 1


def _images(n: int = IMAGES) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, 30), 0.4))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind, k", [("elbo", 1), ("iwae", 5)])
def test_a_training_forward_passes_the_pseudo_inputs_once_and_their_gradient_flows(name, kind, k):
    model = _model(name)
    passes = PseudoPasses(model)
    out = objectives.loss(model({"x": _images()}, k), kind)
    out.loss.backward()
    assert passes.count == 1
    assert model.prior.pseudo_weights.grad.abs().sum() > 0
    encoder = _encoder_of_pseudo_inputs(model)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


@pytest.mark.parametrize("name", MODELS)
def test_an_evaluation_call_passes_the_pseudo_inputs_once_whatever_its_chunks(name):
    model = _model(name).eval()
    passes = PseudoPasses(model)
    x = _images()
    budget = 4 * model.elements_per_sample  # a few images and draws per chunk: many chunks
    assert plan_chunks(IMAGES, 6, model.elements_per_sample, budget) != (IMAGES, 6)
    elbo_terms(model, x, repeats=6, budget=budget)
    assert passes.count == 1
    iwae_per_image(model, x, 5, repeats=3, budget=budget)
    assert passes.count == 2
    # Left frozen nowhere: the next call without gradient builds the mixture afresh.
    with torch.no_grad():
        model({"x": x}, 1)
    assert passes.count == 3


@pytest.mark.parametrize("name", MODELS)
def test_bounds_are_those_computed_with_a_mixture_per_chunk(name, monkeypatch):
    model = _model(name).eval()
    x = _images()
    budget = 4 * model.elements_per_sample

    def both():
        torch.manual_seed(1)
        nelbo = elbo_terms(model, x, repeats=6, budget=budget)
        torch.manual_seed(2)
        return nelbo, iwae_per_image(model, x, 5, repeats=3, budget=budget)

    passes = PseudoPasses(model)
    frozen_nelbo, frozen_iwae = both()
    assert passes.count == 2
    monkeypatch.setattr(bounds, "frozen_priors", lambda model: contextlib.nullcontext())
    per_chunk_nelbo, per_chunk_iwae = both()
    assert passes.count > 2 + 2  # the mixture built again for every chunk
    assert frozen_nelbo.keys() == per_chunk_nelbo.keys()
    for key in frozen_nelbo:
        assert frozen_nelbo[key] == pytest.approx(per_chunk_nelbo[key], rel=1e-5, abs=1e-6)
    torch.testing.assert_close(frozen_iwae, per_chunk_iwae, rtol=1e-5, atol=1e-6)


def test_frozen_never_serves_a_forward_with_gradient_nor_a_stale_mixture_after_a_step():
    model = _model("vae")
    passes = PseudoPasses(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    x = _images()
    with model.prior.frozen():
        with torch.no_grad():
            held = model.prior(model.posterior)
            assert model.prior(model.posterior) is held  # built once within the block
        assert passes.count == 1
        # Training inside the block still builds the mixture afresh, with its gradient.
        for step in range(2):
            loss = objectives.loss(model({"x": x}, 5), "iwae").loss
            optimizer.zero_grad()
            loss.backward()
            assert model.prior.pseudo_weights.grad.abs().sum() > 0
            optimizer.step()
        assert passes.count == 3
    # After the steps every forward, and the next evaluation, is built from the new pseudo-inputs and encoder.
    with torch.no_grad():
        fresh = model.posterior(model.prior.pseudo_inputs())
        assert not torch.allclose(fresh.mean, held.means)
        torch.testing.assert_close(model.prior(model.posterior).means, fresh.mean)
        with model.prior.frozen():
            torch.testing.assert_close(model.prior(model.posterior).means, fresh.mean)


def test_the_mixture_density_equals_torch_in_float32_where_components_lie_far_apart():
    """In blocks of points, worked in place without gradient; in one graph with it. The expanded square
    rounds float32 to about 2e-6 relative here (as its form before the blocks did)."""
    torch.manual_seed(0)
    components, dims = 500, 10
    means, variances = torch.randn(components, dims) * 3, torch.rand(components, dims) + 0.05
    z = torch.randn(3, 400, dims) * 2  # 1,200 points: two blocks (of 1,048 at K = 500)
    reference = MixtureSameFamily(Categorical(logits=torch.zeros(components, dtype=torch.float64)),
                                  Independent(Normal(means.double(), variances.double().sqrt()), 1)).log_prob(z.double())
    with torch.no_grad():
        density = DiagonalGaussianMixture(torch.zeros(components), means, variances).log_prob(z)
    assert density.shape == (3, 400)
    torch.testing.assert_close(density.double(), reference, rtol=1e-5, atol=0)
    means.requires_grad_()
    with_gradient = DiagonalGaussianMixture(torch.zeros(components), means, variances).log_prob(z)
    torch.testing.assert_close(with_gradient.double(), reference, rtol=1e-5, atol=0)
    with_gradient.sum().backward()
    assert means.grad.abs().sum() > 0


def test_logsumexp_last_is_torch_logsumexp_with_its_gradient():
    a = torch.tensor([[0.0, -1000.0, 3.0], [-math.inf, -math.inf, -math.inf], [math.inf, 0.0, 1.0], [-math.inf, 2.0, -500.0]])
    torch.testing.assert_close(logsumexp_last(a), torch.logsumexp(a, -1))
    spread = (torch.randn(40, 300, dtype=torch.float64) * 60).requires_grad_()
    ours = logsumexp_last(spread)
    ours.sum().backward()
    ours_grad, spread.grad = spread.grad, None
    theirs = torch.logsumexp(spread, -1)
    theirs.sum().backward()
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours_grad, spread.grad)
