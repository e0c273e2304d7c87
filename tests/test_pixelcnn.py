"""The PixelCNN likelihood: causal (pixel i's probability depends on pixels before i only), no blind spot,
one-pass density equal to the pixel-by-pixel sampler's, and every network trains with it."""

from __future__ import annotations

import pytest
import torch

from vaelab import objectives
from vaelab.distributions.pixelcnn import PixelCNN, PixelCNNDistribution
from vaelab.models import build_model, model_config
from conftest import assert_refused

H = W = 6


def _network(layers: int = 3) -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(layers, channels=8, kernel=3).double()


@pytest.mark.parametrize("layers", [1, 3])
def test_changing_pixel_i_changes_no_probability_of_pixels_up_to_i(layers):
    net = _network(layers)
    image = torch.bernoulli(torch.full((1, 1, H, W), 0.5, dtype=torch.float64))
    condition = torch.randn(1, 1, H, W, dtype=torch.float64)
    base = net(image, condition).flatten()
    reached_later = 0
    for i in range(H * W):
        flipped = image.clone()
        flipped.view(-1)[i] = 1 - flipped.view(-1)[i]
        change = (net(flipped, condition).flatten() - base).abs()
        assert change[: i + 1].max() == 0, f"pixel {i} reaches a pixel at or before it"
        reached_later += bool(change[i + 1 :].max() > 0) if i + 1 < H * W else 0
    assert reached_later >= H * W - 2  # and every pixel but the last few influences something after it


def test_no_blind_spot_the_pixel_above_and_to_the_right_is_seen():
    """Masked-convolution PixelCNNs cannot see (r - 1, c + 1) from (r, c); the two stacks of Gated PixelCNN can."""
    net = _network(1)
    image = torch.zeros(1, 1, H, W, dtype=torch.float64)
    condition = torch.zeros(1, 1, H, W, dtype=torch.float64)
    flipped = image.clone()
    flipped[0, 0, 2, 4] = 1
    assert (net(flipped, condition) - net(image, condition))[0, 0, 3, 3].abs() > 0


def test_pixel_by_pixel_sampling_gives_the_one_pass_log_probability():
    net = _network(2)
    condition = torch.randn(3, H * W, dtype=torch.float64)
    p = PixelCNNDistribution(net, condition, (H, W))
    torch.manual_seed(1)
    x, probs = p._autoregress()
    sequential = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    torch.testing.assert_close(p.log_prob(x), sequential)
    assert set(x.unique().tolist()) <= {0.0, 1.0} and x.shape == (3, H * W)


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_a_vae_with_a_pixelcnn_decoder_trains_and_samples(net):
    torch.manual_seed(0)
    model = build_model(model_config("vae", image_shape=(8, 8), z_dim=3, hidden=(16,), net=net, channels=(4, 8),
                                     likelihood="pixelcnn", pixel_layers=2, pixel_channels=8))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.bernoulli(torch.full((8, 64), 0.3))
    losses = []
    for _ in range(8):
        out = objectives.loss(model({"x": x}, 2), "iwae")
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    terms = model({"x": x}, 1)
    torch.testing.assert_close(objectives.iwae_bound(terms), objectives.expectation(terms, objectives.log_weights(terms)))
    samples = model.sample(3)
    assert samples.shape == (3, 64) and ((samples >= 0) & (samples <= 1)).all()


def test_pixelcnn_settings_are_checked():
    assert_refused([("model.likelihood", "pixelcnn"), ("model.image_shape", "784")], "model.likelihood: pixelcnn models single-channel images")
    assert_refused([("model.pixel_layers", "5")], "model.pixel_layers: pixel_layers and pixel_channels apply to likelihood = pixelcnn only")
    assert_refused([("model.likelihood", "pixelcnn"), ("model.pixel_layers", "0")], "model.pixel_layers: pixel_layers and pixel_channels must be >= 1")


def test_lossy_code_figure_redraws_what_the_code_leaves_out(captured):
    """Decodings of one code differ under a PixelCNN decoder (it draws pixels) and coincide under a factorised one;
    the figure names its input column and draws."""
    from vaelab.report import figures

    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((3, 64), 0.4))
    pixel = build_model(model_config("vae", image_shape=(8, 8), z_dim=3, hidden=(16,), likelihood="pixelcnn", pixel_layers=2,
                                     pixel_channels=8)).eval()
    grid = figures.lossy_codes(pixel, x, images=3, redraws=4)
    assert grid.shape == (3, 5, 64) and torch.equal(grid[:, 0], x)
    assert not torch.allclose(grid[:, 1], grid[:, 2])
    factorised = build_model(model_config("vae", image_shape=(8, 8), z_dim=3, hidden=(16,))).eval()
    grid = figures.lossy_codes(factorised, x, images=3, redraws=4)
    assert torch.equal(grid[:, 1], grid[:, 4])
    figures.lossy_codes_figure(pixel, x, "lossy.png", "run: what the code keeps", images=2, redraws=3)
    ax = captured[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "draw 1", "draw 2", "draw 3"]
    assert ax.get_title() == "run: what the code keeps"
