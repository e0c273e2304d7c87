"""Likelihoods over 8-bit pixels: the discretized logistic mixture and the discretized Gaussian, their bits per dimension."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import assert_refused
from vaelab.distributions import build_likelihood
from vaelab.distributions.discretized import DiscretizedGaussian, DiscretizedLogisticMixture

LEVELS = torch.arange(256, dtype=torch.float32)
EXTREME_LOG_SCALES = (-12.0, -7.0, -4.0, -1.0, 0.0, 2.0, 6.0, 12.0)


def random_parameters(k: int, n: int, log_scale: float, dtype=torch.float32):
    """(n, k, 1) mixture logits, means (some beyond [-1, 1]) and log-scales near log_scale: n pixels of one element each."""
    g = torch.Generator().manual_seed(int(1000 + 10 * log_scale) + k)
    logits = 3 * torch.randn(n, k, 1, generator=g, dtype=dtype)
    loc = 1.3 * torch.randn(n, k, 1, generator=g, dtype=dtype)
    scale = log_scale + 0.5 * torch.randn(n, k, 1, generator=g, dtype=dtype)
    return logits, loc, scale


def all_values_log_prob(dist) -> torch.Tensor:
    """log p of each of the 256 values of every pixel, (256, n)."""
    return dist.log_prob((LEVELS / 255).to(dist.loc.dtype).view(256, 1, 1))


@pytest.mark.parametrize("log_scale", EXTREME_LOG_SCALES)
@pytest.mark.parametrize("make", [lambda p: DiscretizedLogisticMixture(*p), lambda p: DiscretizedLogisticMixture(p[0][:, :1], p[1][:, :1], p[2][:, :1]),
                                  lambda p: DiscretizedGaussian(torch.zeros_like(p[0][:, :1]), p[1][:, :1], p[2][:, :1])],
                         ids=["logistic-mixture", "logistic", "gaussian"])
def test_the_256_values_of_a_pixel_have_mass_one(make, log_scale):
    dist = make(random_parameters(5, 200, log_scale))
    lp = all_values_log_prob(dist)
    assert torch.isfinite(lp).all()
    assert torch.logsumexp(lp, 0).abs().max() < 1e-5
    assert (lp <= 1e-6).all()


@pytest.mark.parametrize("log_scale", EXTREME_LOG_SCALES)
@pytest.mark.parametrize("cls", [DiscretizedLogisticMixture, DiscretizedGaussian])
def test_gradients_are_finite(cls, log_scale):
    logits, loc, scale = (t.requires_grad_() for t in random_parameters(3 if cls is DiscretizedLogisticMixture else 1, 300, log_scale))
    x = torch.randint(0, 256, (300, 1), generator=torch.Generator().manual_seed(1)).float() / 255
    x[:20], x[20:40] = 0.0, 1.0  # both edge bins
    cls(logits, loc, scale).log_prob(x).sum().backward()
    for t in (logits, loc, scale):
        assert torch.isfinite(t.grad).all()


def reference_log_mass(v: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor, cdf) -> torch.Tensor:
    """log P(v) in float64 straight from the CDF: bins of width 2/255 on [-1, 1], the edge bins taking the tails."""
    y = 2 * v / 255 - 1
    upper = torch.where(v == 255, torch.ones_like(y), cdf((y + 1 / 255 - loc) / scale))
    lower = torch.where(v == 0, torch.zeros_like(y), cdf((y - 1 / 255 - loc) / scale))
    return torch.log(upper - lower)


def values_near(loc: torch.Tensor, log_scale: torch.Tensor, seed: int) -> torch.Tensor:
    """One 8-bit value per pixel within a few scales of its mean (and the edge bins), as floats (n, 1)."""
    g = torch.Generator().manual_seed(seed)
    y = loc.view(-1) + 3 * log_scale.view(-1).exp() * torch.randn(loc.numel(), generator=g, dtype=loc.dtype)
    v = torch.round((y.clamp(-1, 1) + 1) * 127.5)
    v[:5], v[5:10] = 0, 255
    return v.unsqueeze(-1)


@pytest.mark.parametrize("log_scale", (-5.0, -3.0, 0.0, 3.0))
def test_one_component_mixture_is_the_discretized_logistic(log_scale):
    _, loc, scale = random_parameters(1, 300, log_scale, torch.float64)
    v = values_near(loc, scale, 2)
    expected = reference_log_mass(v.view(-1), loc.view(-1), scale.view(-1).exp(), torch.sigmoid)
    got = DiscretizedLogisticMixture(torch.randn(300, 1, 1), loc.float(), scale.float()).log_prob(v.float() / 255).double()
    keep = expected > -30  # where the float64 difference of CDFs still has digits
    assert keep.sum() > 250
    assert torch.allclose(got[keep], expected[keep], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("log_scale", (-5.0, -2.5, 0.0, 3.0))
def test_discretized_gaussian_matches_the_cdf_difference_in_float64(log_scale):
    _, loc, scale = random_parameters(1, 300, log_scale, torch.float64)
    v = values_near(loc, scale, 3)
    expected = reference_log_mass(v.view(-1), loc.view(-1), scale.view(-1).exp(), torch.special.ndtr)
    got = DiscretizedGaussian(torch.zeros(300, 1, 1), loc.float(), scale.float()).log_prob(v.float() / 255).double()
    keep = expected > -30
    assert keep.sum() > 250
    assert torch.allclose(got[keep], expected[keep], atol=1e-4, rtol=1e-4)


def test_mixture_of_identical_components_is_one_component():
    _, loc, log_scale = random_parameters(1, 50, -3.0)
    x = torch.rand(50, 1)
    one = DiscretizedLogisticMixture(torch.zeros(50, 1, 1), loc, log_scale).log_prob(x)
    three = DiscretizedLogisticMixture(torch.randn(50, 3, 1), loc.expand(50, 3, 1), log_scale.expand(50, 3, 1)).log_prob(x)
    assert torch.allclose(one, three, atol=1e-5)


@pytest.mark.parametrize("cls", [DiscretizedLogisticMixture, DiscretizedGaussian])
def test_mean_and_samples_are_pixels(cls):
    k = 4 if cls is DiscretizedLogisticMixture else 1
    dist = cls(*random_parameters(k, 30, -2.0))
    p = all_values_log_prob(dist).exp()  # (256, n)
    assert torch.allclose(dist.mean.squeeze(-1), (p * LEVELS.view(256, 1) / 255).sum(0), atol=1e-4)
    draws = dist.sample((500,))
    assert draws.shape == (500, 30, 1) and draws.min() >= 0 and draws.max() <= 1
    assert torch.equal(draws * 255, torch.round(draws * 255))


def test_decoder_outputs_are_read_as_parameter_blocks():
    h = torch.randn(2, 7, 3 * 4 * 6)  # (k, B, 3 K D), K = 4, D = 6
    dist = build_likelihood("dlogistic", 6, mixtures=4)(h)
    assert dist.batch_shape == (2, 7) and dist.event_shape == (6,)
    assert torch.equal(dist.loc, h.view(2, 7, 3, 4, 6)[:, :, 1])
    x = torch.randint(0, 256, (7, 6)).float() / 255
    assert dist.log_prob(x).shape == (2, 7)
    dist = build_likelihood("dgaussian", 6)(torch.randn(7, 12))
    assert dist.event_shape == (6,) and dist.mean.shape == (7, 6)


def test_eight_bit_likelihoods_see_the_pixels_not_a_binarization():
    from vaelab.models import ModelConfig

    for name in ("dlogistic", "dgaussian"):
        cfg = ModelConfig(likelihood=name)
        assert not cfg.binary_pixels and cfg.eight_bit_pixels
    assert ModelConfig(likelihood="dlogistic", mixtures=5, image_shape=(3, 8, 8), x_dim=192).decoder_shape == (45, 8, 8)
    assert ModelConfig(likelihood="dgaussian").decoder_shape == (2, 28, 28)
    assert not ModelConfig(likelihood="gaussian").eight_bit_pixels


def test_settings_are_checked():
    assert_refused([("model.mixtures", "5")], "model.mixtures: applies to likelihood = dlogistic only")
    assert_refused([("model.likelihood", "dgaussian"), ("model.mixtures", "3")], "model.mixtures: applies to likelihood = dlogistic only")
    assert_refused([("model.likelihood", "dlogistic"), ("model.mixtures", "0")], "model.mixtures: must be >= 1")
    assert_refused([("model.name", "vqvae"), ("model.net", "conv"), ("model.likelihood", "dlogistic")], "model.likelihood: model 'vqvae' supports")


@pytest.mark.parametrize("args", [["--likelihood", "dlogistic", "--mixtures", "3"], ["--likelihood", "dgaussian", "--net", "conv"]],
                         ids=["dlogistic", "dgaussian-conv"])
def test_trains_and_evaluates_in_bits_per_dimension(cli, tiny_data, tmp_path, args):
    run = tmp_path / "run"
    train = cli("train", "vae", *args, "--steps", "20", "--batch-size", "20", "--hidden", "16", "--z-dim", "3", "--log-every", "10",
                "--data-dir", tiny_data, "--out", run, "--device", "cpu", "--no-progress")
    assert train.returncode == 0, train.stderr
    proc = cli("eval", run, "--iw", "1,10", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert "bits/dim: NELBO" in proc.stdout and "-IWAE-10" in proc.stdout
    result = json.loads((run / "eval-cs236.json").read_text())
    assert result["binarized"] is False
    for key in ("nelbo", "niwae_1", "niwae_10"):
        assert math.isfinite(result[key]) and result[key] > 0
        assert result[f"bpd_{key}"] == pytest.approx(result[key] / (784 * math.log(2)))
    compare = cli("compare", run, "--out", tmp_path / "cmp")
    assert compare.returncode == 0, compare.stderr


def test_binary_likelihoods_report_no_bits_per_dimension(tiny_data, tmp_path):
    from vaelab.evaluation import evaluate_images
    from vaelab.models import build_model, model_config

    model = build_model(model_config("vae", image_shape=(28, 28), hidden=(8,), z_dim=2))
    result = evaluate_images(model, torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8), iws=(1,), repeats=1)
    assert not any(key.startswith("bpd_") for key in result)
    model = build_model(model_config("vae", image_shape=(28, 28), hidden=(8,), z_dim=2, likelihood="dgaussian"))
    result = evaluate_images(model, torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8), iws=(1,), repeats=1)
    assert result["bpd_niwae_1"] == pytest.approx(result["niwae_1"] / (784 * math.log(2)))
