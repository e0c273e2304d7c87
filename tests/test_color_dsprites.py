"""Colour dSprites (`color-dsprites`): dSprites' masks in a per-image colour on black, made a batch at a time from the
packed masks and (N, 3) colours, deterministic, trainable with a likelihood of 8-bit pixels, and scored by the
disentanglement metrics on dSprites' five factors."""

from __future__ import annotations

import json

import numpy as np
import torch

from vaelab import data
from vaelab.data import dsprites


def test_images_are_coloured_sprites_on_black(tiny_factors, tmp_path):
    test = data.load("color-dsprites", "test", tmp_path)
    plain = data.load("dsprites", "test", tmp_path)
    assert data.lookup("color-dsprites").image_shape == test.image_shape == (3, 64, 64) and test.x_dim == 3 * 64 * 64
    assert test.classes == dsprites.SHAPES and torch.equal(test.factors, plain.factors) and torch.equal(test.labels, plain.labels)
    images = test.uint8(torch.arange(len(test)))
    assert images.shape == (28, 3, 64, 64) and images.dtype == torch.uint8
    mask = plain.uint8() > 0
    assert mask.any() and not images.permute(1, 0, 2, 3)[:, ~mask].any()  # black wherever dSprites is off
    on = images.permute(1, 0, 2, 3)[:, mask]
    assert on.min() >= 128 and on.max() <= 255  # every channel of the sprite in 128..255, [0.5, 1] at 8 bits
    # one colour per image, the same on all its pixels, and it is the image's colours_of
    colours = torch.from_numpy(dsprites.colours_of(dsprites.split_indices("test")))
    assert torch.equal(images, mask.unsqueeze(1) * colours[:, :, None, None])
    assert len({tuple(c) for c in colours.tolist()}) > 20  # colours differ between images
    pixels = test.pixels(torch.tensor([3, 0]))
    assert pixels.shape == (2, 3 * 64 * 64) and pixels.dtype == torch.float32 and 0 <= pixels.min() and pixels.max() <= 1
    assert torch.equal(pixels, images[[3, 0]].reshape(2, -1).float() / 255)


def test_the_same_image_has_the_same_colour_everywhere(tiny_factors, tmp_path):
    index = np.array([0, 5, 77, 127])
    assert np.array_equal(dsprites.colours_of(index), dsprites.colours_of(index))
    assert np.array_equal(dsprites.colours_of(index)[2:], dsprites.colours_of(index[2:]))  # a function of the index alone
    full = dsprites.colours_of(np.arange(50_000))
    assert full.dtype == np.uint8 and full.min() == 128 and full.max() == 255
    assert abs(full.mean() - 191.5) < 1 and abs(np.corrcoef(full.T.astype(float))[0, 1]) < 0.02  # uniform, channels independent
    train, again = data.load("color-dsprites", "train", tmp_path), data.load("color-dsprites", "train", tmp_path)
    batch = torch.tensor([4, 1, 4])
    assert torch.equal(train.uint8(batch), again.uint8(batch)) and torch.equal(train.uint8(batch)[0], train.uint8(batch)[2])
    # the metrics' factor data draws an image exactly as its split does
    factors = data.factor_data("color-dsprites", tmp_path)
    assert np.array_equal(factors.observations(train.factors[[4, 1]].numpy()), train.uint8(torch.tensor([4, 1])).numpy())


def test_memory_held_is_the_packed_masks_plus_colours(tiny_factors, tmp_path):
    train = data.load("color-dsprites", "train", tmp_path)
    n = len(train)
    assert train.images.shape == (n, 512) and train.images.dtype == torch.uint8 and train.images.nbytes == n * 64 * 64 // 8
    assert train.colours.shape == (n, 3) and train.colours.dtype == torch.uint8 and train.colours.nbytes == n * 3
    assert train.images.nbytes + train.colours.nbytes == n * (512 + 3)  # against n * 12,288 bytes unpacked
    moved = train.to("cpu")
    assert torch.equal(moved.colours, train.colours) and moved.image_shape == (3, 64, 64)


def test_binarized_for_a_binary_likelihood_not_taken_as_binary(tiny_factors, tmp_path):
    test = data.load("color-dsprites", "test", tmp_path)
    x = data.binarized_test_set(test)
    assert set(torch.unique(x).tolist()) <= {0.0, 1.0} and x.shape == (28, 3 * 64 * 64)


def test_a_conv_vae_trains_and_is_scored_by_the_disentanglement_metrics(tiny_factors, tmp_path, capsys):
    from vaelab.cli import main

    run = tmp_path / "run"
    assert main(["train", "vae", "--dataset", "color-dsprites", "--data-dir", str(tmp_path), "--steps", "3", "--batch-size", "8",
                 "--z-dim", "3", "--likelihood", "dlogistic", "--net", "conv", "--set", "model.channels=4,4,8,8",
                 "--set", "model.hidden=16", "--device", "cpu", "--no-progress", "--out", str(run),
                 "--threads", "1", "--set", "train.sample_grids=never"]) == 0  # no thread probe, no grid: not what is tested
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dataset"] == "color-dsprites" and config["model"]["image_shape"] == [3, 64, 64]
    assert (run / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(run), "--disentanglement", "--metric-points", "20", "--device", "cpu"]) == 0
    assert "beta-VAE metric" in capsys.readouterr().out
    result = json.loads((run / "eval-disentanglement.json").read_text())
    assert result["dataset"] == "color-dsprites" and result["factors"] == list(dsprites.FACTOR_NAMES)
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert 0 <= result[key] <= 1, key
