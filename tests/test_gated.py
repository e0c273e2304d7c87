"""Gated layers (model.activation = gated, the VampPrior paper's) in every net and model, and the IWAE paper's
architectures as presets (iwae-1l, iwae-2l, the latter through the hierarchical VAE's chain inference)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vaelab import objectives
from vaelab.cli import main
from vaelab.errors import ConfigError
from vaelab.models import MODELS, build_model, model_config
from vaelab.models.hvae import gaussian_from
from vaelab.nets import ACTIVATIONS, ConvDecoder, ConvEncoder, Gated, GatedDense, mlp
from vaelab.training.config import RunConfig, load_json, load_preset, save_json, set_key, validate
from vaelab.training.loop import training_loss
from conftest import assert_refused


def test_gated_dense_is_the_gated_product_of_its_two_halves():
    torch.manual_seed(0)
    layer = GatedDense(5, 3)
    x = torch.randn(4, 5)
    w, v = layer.layer.weight[:3], layer.layer.weight[3:]
    b, c = layer.layer.bias[:3], layer.layer.bias[3:]
    torch.testing.assert_close(layer(x), (x @ w.T + b) * torch.sigmoid(x @ v.T + c))
    assert (layer.in_features, layer.out_features) == (5, 3)


def test_gated_mlp_has_gated_hidden_layers_and_a_linear_output():
    net = mlp(10, (8, 6), 4, "gated")
    assert [type(m) for m in net] == [GatedDense, GatedDense, nn.Linear]
    assert [(m.in_features, m.out_features) for m in net] == [(10, 8), (8, 6), (6, 4)]
    assert net(torch.randn(7, 10)).shape == (7, 4)
    assert "gated" in ACTIVATIONS


def test_gated_convolutions_gate_twice_the_channels():
    encoder = ConvEncoder((1, 8, 8), 6, channels=(4, 8), activation="gated", hidden=(5,))
    gated = [m for m in encoder.features if isinstance(m, Gated)]
    assert [m.layer.out_channels for m in gated] == [8, 16] and len(encoder.features) == 2  # no element-wise activation
    x = torch.randn(3, 64)
    first = encoder.features[0]
    image = x.view(3, 1, 8, 8)
    value, gate = first.layer(image).chunk(2, 1)
    torch.testing.assert_close(first(image), value * torch.sigmoid(gate))
    assert encoder(x).shape == (3, 6)
    decoder = ConvDecoder(6, (1, 8, 8), channels=(4, 8), activation="gated", hidden=(5,))
    assert decoder(torch.randn(3, 6)).shape == (3, 64)
    assert isinstance(decoder.project[-1], GatedDense) and isinstance(decoder.deconv[-1], nn.ConvTranspose2d)


def _gated_config(name: str, **model_settings) -> RunConfig:
    cfg = RunConfig()
    set_key(cfg, "model.name", name)
    set_key(cfg, "model.activation", "gated")
    spec = MODELS[name].spec
    if "mlp" in spec.nets:
        cfg.model.hidden = (16,)
    else:  # the VQ-VAEs' nets are convolutional
        cfg.model.net, cfg.model.channels = "conv", (4, 8)
    if spec.starts_from is not None:
        cfg.model.source_run = "stage-one"  # never read here: the frozen networks keep their initial weights
    for key, value in model_settings.items():
        setattr(cfg.model, key, value)
    return cfg


def _train_steps(cfg: RunConfig, batch: dict, steps: int = 3) -> list[float]:
    model = build_model(cfg.model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        out = training_loss(model, batch, cfg, beta=1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses


@pytest.mark.parametrize("name, settings", [*((name, {}) for name in sorted(MODELS)), ("hvae", {"inference": "ladder"}),
                                            ("hvae", {"inference": "chain"})], ids=str)
def test_every_model_trains_with_gated_layers(name, settings):
    cfg = _gated_config(name, **settings)
    validate(cfg)
    x = torch.bernoulli(torch.rand(8, 784))
    y = torch.randint(0, 10, (8,))
    batch = {"x": x, "y": y, "x_labelled": x[:3], "y_labelled": y[:3]}
    losses = _train_steps(cfg, batch)
    assert all(torch.isfinite(torch.tensor(losses)))


def test_an_unknown_activation_is_refused_in_one_line_naming_model_activation():
    """No built-in model refuses gated (every net has a gated form); a name outside ACTIVATIONS is refused."""
    assert_refused([("model.activation", "swish")], r"^model\.activation: must be one of elu, relu, tanh, gated \(got 'swish'\)$")
    cfg = RunConfig()
    set_key(cfg, "model.activation", "swish")
    with pytest.raises(ConfigError) as refused:
        validate(cfg)
    assert "\n" not in str(refused.value)


def _linear_sizes(module: nn.Module) -> list[tuple[int, int]]:
    """(in, out) features of every fully connected layer in module order; a gated dense layer counts once, as its own
    (in, out), not as the Linear of 2 x out inside it."""
    inside_gated = {id(m.layer) for m in module.modules() if isinstance(m, GatedDense)}
    return [(m.in_features, m.out_features) for m in module.modules()
            if isinstance(m, (nn.Linear, GatedDense)) and id(m) not in inside_gated]


def test_iwae_presets_have_the_papers_layer_sizes():
    one = build_model(load_preset("iwae-1l").model)
    assert _linear_sizes(one.encoder) == [(784, 200), (200, 200), (200, 2 * 50)]  # mean and variance of each of 50
    assert _linear_sizes(one.decoder) == [(50, 200), (200, 200), (200, 784)]
    assert _linear_sizes(mlp(3, (4,), 2, "gated")) == [(3, 4), (4, 2)]
    two_cfg = load_preset("iwae-2l")
    validate(two_cfg)
    two = build_model(two_cfg.model)
    assert _linear_sizes(two.encoders[0]) == [(784, 200), (200, 200), (200, 2 * 100)]  # q(z_1 | x)
    assert _linear_sizes(two.encoders[1]) == [(100, 100), (100, 100), (100, 2 * 50)]  # q(z_2 | z_1)
    assert _linear_sizes(two.conditional_priors[0]) == [(50, 100), (100, 100), (100, 2 * 100)]  # p(z_1 | z_2)
    assert _linear_sizes(two.decoder) == [(100, 200), (200, 200), (200, 784)]  # p(x | z_1)
    for cfg in (load_preset("iwae-1l"), two_cfg):
        assert (cfg.model.activation, cfg.objective.kind, cfg.objective.k, cfg.train.batch_size, cfg.train.lr) == \
               ("tanh", "iwae", 5, 20, 1e-3)


@pytest.mark.parametrize("preset", ["iwae-1l", "iwae-2l"])
def test_iwae_presets_train_three_steps(preset, tiny_data, tmp_path):
    run = tmp_path / preset
    assert main(["train", preset, "--steps", "3", "--log-every", "1", "--data-dir", str(tiny_data), "--device", "cpu",
                 "--out", str(run), "--no-progress"]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "loss" in line][-1] == 3
    assert all(torch.isfinite(torch.tensor(line["loss"])) for line in lines if "loss" in line)
    assert load_json(run / "config.json").model.activation == "tanh"


def test_chain_inference_log_weights_are_the_hand_computed_ones():
    """log w = log p(x | z_1) + log p(z_1 | z_2) + log p(z_2) - log q(z_1 | x) - log q(z_2 | z_1), z_1 then z_2 drawn."""
    model = build_model(model_config("hvae", x_dim=12, hidden=(8,), upper_hidden=(6, 5), z_dims=(4, 3), inference="chain")).double()
    x = torch.bernoulli(torch.full((5, 12), 0.4, dtype=torch.float64))
    torch.manual_seed(3)
    terms = model({"x": x}, 2)
    torch.manual_seed(3)
    q1 = gaussian_from(model.encoders[0](x))
    z1 = q1.rsample((2,))
    q2 = gaussian_from(model.encoders[1](z1))
    z2 = q2.rsample()
    log_w = (model.likelihood(z1).log_prob(x) + model.conditional_prior(1, z2).log_prob(z1) + model.top_prior().log_prob(z2)
             - q1.log_prob(z1) - q2.log_prob(z2))
    torch.testing.assert_close(objectives.log_weights(terms), log_w)
    assert terms.latents["z1"].kl is None and terms.latents["z2"].kl.shape == (5,)  # below the top: Monte Carlo only
    assert [m.out_features for m in model.encoders[1] if isinstance(m, nn.Linear)] == [6, 5, 2 * 3]


def test_upper_hidden_is_checked_and_survives_config_json(tmp_path):
    hvae = ("model.name", "hvae")
    assert_refused([hvae, ("model.upper_hidden", "100,0")], r"model\.upper_hidden: widths must be >= 1")
    assert_refused([hvae, ("model.z_dims", "10"), ("model.upper_hidden", "100")], r"model\.upper_hidden: sizes the networks between")
    assert_refused([hvae, ("model.inference", "chain"), ("objective.free_bits", "0.5")], r"objective\.free_bits_group: chain")
    for value in ("none", "100,100"):
        cfg = RunConfig()
        set_key(cfg, "model.name", "hvae")
        set_key(cfg, "model.upper_hidden", value)
        validate(cfg)
        save_json(cfg, tmp_path / "config.json")
        assert load_json(tmp_path / "config.json").model.upper_hidden == cfg.model.upper_hidden
