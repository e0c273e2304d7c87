"""Networks as a setting: the MLP and convolutional encoders and decoders, their shapes for any
leading dimensions, the context path, and the checks on the image shape and on settings of the other net."""

from __future__ import annotations

import pytest
import torch

from vaelab.cli import main
from vaelab.errors import ConfigError
from vaelab.models import build_model, model_config
from vaelab.nets import ConvDecoder, ConvEncoder, build_decoder, build_encoder
from vaelab.training.config import RunConfig, set_key, validate


@pytest.mark.parametrize("shape", [(28, 28), (3, 32, 32), (1, 16, 8)])
def test_conv_shapes_for_any_leading_dimensions(shape):
    d = 1
    for s in shape:
        d *= s
    encoder = ConvEncoder(shape, 6, channels=(4, 8), context_features=3)
    decoder = ConvDecoder(5, shape, channels=(4, 8))
    x = torch.rand(7, d)
    assert encoder(x, torch.zeros(7, 3)).shape == (7, 6)
    assert ConvEncoder(shape, 6, channels=(4, 8))(torch.rand(2, 7, d)).shape == (2, 7, 6)
    assert decoder(torch.randn(2, 7, 5)).shape == (2, 7, d)
    # A context per label (C, B, c) broadcasts against features computed once per image, and equals
    # running the encoder on the images repeated for every label.
    context = torch.eye(3).unsqueeze(1).expand(3, 7, 3)
    torch.testing.assert_close(encoder(x, context), encoder(x.expand(3, 7, d), context))
    assert decoder.activation_elements == max(8 * (shape[-2] // 4) * (shape[-1] // 4), 4 * (shape[-2] // 2) * (shape[-1] // 2), d)
    wide = ConvDecoder(5, shape, channels=(4, 8), hidden=(5000, 7))
    assert wide.activation_elements == 5000 and wide(torch.randn(3, 5)).shape == (3, d)
    assert ConvEncoder(shape, 6, channels=(4, 8), hidden=(11,))(x).shape == (7, 6)


def test_conv_decoder_output_is_in_the_image_layout():
    """Pixel (c, h, w) of the flat output is the transposed convolution's output at (c, h, w),
    whatever memory layout the convolutions use inside."""
    decoder = ConvDecoder(4, (3, 8, 8), channels=(2,))
    z = torch.randn(5, 4)
    flat = decoder(z)
    start = decoder.project(z).view(-1, *decoder.start)
    reference = torch.nn.functional.conv_transpose2d(start.contiguous(), decoder.deconv[0].weight.contiguous(),
                                                     decoder.deconv[0].bias, stride=2, padding=1)
    torch.testing.assert_close(flat, reference.reshape(5, -1))


def test_mlp_nets_keep_the_plain_mlp_parameter_names():
    """Run directories written before nets/ existed name parameters encoder.0.weight, ...; they must load."""
    names = [n for n, _ in build_model(model_config(hidden=(20,))).named_parameters()]
    assert names == ["encoder.0.weight", "encoder.0.bias", "encoder.2.weight", "encoder.2.bias",
                     "decoder.0.weight", "decoder.0.bias", "decoder.2.weight", "decoder.2.bias"]


def test_unknown_net_is_refused():
    with pytest.raises(ValueError, match="unknown net"):
        build_encoder("rnn", (28, 28), 4, hidden=(), channels=(), activation="elu")
    with pytest.raises(ValueError, match="unknown net"):
        build_decoder("rnn", 4, (28, 28), hidden=(), channels=(), activation="elu")


def test_conv_settings_are_checked():
    cfg = RunConfig()
    set_key(cfg, "model.net", "conv")
    validate(cfg)
    set_key(cfg, "model.hidden", "64")  # the fully connected layers between feature maps and code
    validate(cfg)
    cfg = RunConfig()
    set_key(cfg, "model.channels", "8,8")
    with pytest.raises(ConfigError, match="model.channels: applies to net = conv only"):
        validate(cfg)
    cfg = RunConfig()
    set_key(cfg, "model.net", "conv")
    set_key(cfg, "model.channels", "4,4,4")  # 28 does not halve three times
    with pytest.raises(ConfigError, match="model.net: conv needs images"):
        validate(cfg)
    cfg = RunConfig()
    set_key(cfg, "model.net", "conv")
    cfg.model.x_dim, cfg.model.image_shape = 30, (30,)  # vectors, not images
    with pytest.raises(ConfigError, match="model.net"):
        validate(cfg)


def test_conv_vae_trains_and_evaluates_through_the_cli(tiny_data, tmp_path, capsys):
    run = tmp_path / "conv"
    common = ["--data-dir", str(tiny_data), "--device", "cpu"]
    assert main(["train", "vae", "--net", "conv", "--channels", "4,8", "--steps", "6", "--log-every", "3", "--out", str(run),
                 "--no-progress", *common]) == 0
    assert main(["eval", str(run), "--iw", "1,10", "--json", *common]) == 0
    import json

    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["niwae_10"] < result["nelbo"] + 1 and result["kl_z"] == pytest.approx(result["kl"])
    assert main(["train", "vae", "--channels", "4,8", "--steps", "2", "--out", str(tmp_path / "bad"), *common]) == 1
    assert "model.channels" in capsys.readouterr().err and not (tmp_path / "bad").exists()
