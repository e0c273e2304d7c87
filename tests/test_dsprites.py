"""The generated dSprites-style dataset: factors and indices agree, the renderer draws what each factor says, and the
cache is written once, read back and refused when damaged."""

from __future__ import annotations

import numpy as np
import pytest

from vaelab import data
from vaelab.data import dsprites
from vaelab.errors import DataError


def test_factors_and_indices_round_trip():
    assert dsprites.IMAGES == 737_280 == np.prod(dsprites.FACTOR_SIZES)
    index = np.array([0, 1, 31, 32, 1023, 1024, 737_279])
    factors = dsprites.factors_of(index)
    assert factors[-1].tolist() == [2, 5, 39, 31, 31] and factors[1].tolist() == [0, 0, 0, 0, 1]  # position y fastest
    assert np.array_equal(dsprites.index_of(factors), index)


def _image(shape=0, scale=5, orientation=0, x=16, y=16):
    return dsprites.render(np.array([[shape, scale, orientation, x, y]]))[0]


def test_the_renderer_draws_each_factor():
    square = _image()
    assert set(np.unique(square)) == {0, 255} and square.shape == (64, 64)
    assert (square > 0).sum() == pytest.approx(400, abs=45)  # a 20-pixel square
    assert (_image(scale=0) > 0).sum() < (_image(scale=3) > 0).sum() < (square > 0).sum()  # area grows with scale
    # a square turned by a quarter (10 of 40 steps) covers the same pixels, up to rounding at its edges; 5 steps do not
    assert (_image(orientation=0) != _image(orientation=10)).mean() < 0.005
    assert (_image(orientation=0) != _image(orientation=5)).mean() > 0.01
    centroid = lambda im: np.argwhere(im > 0).mean(0)  # noqa: E731  (row, column)
    columns = [centroid(_image(x=x))[1] for x in (0, 10, 20, 31)]
    assert np.all(np.diff(columns) > 0) and centroid(_image(y=31))[0] > centroid(_image(y=0))[0]
    assert len({_image(shape=s).tobytes() for s in range(3)}) == 3
    corners = dsprites.render(dsprites.factors_of(dsprites.index_of(
        np.array([[0, 5, o, x, y] for o in (0, 5) for x in (0, 31) for y in (0, 31)]))))
    assert corners[:, [0, -1], :].max() == 0 and corners[:, :, [0, -1]].max() == 0  # a shape never leaves the frame


@pytest.fixture
def small(monkeypatch):
    """The first 100 images instead of all 737,280 (10 of them the test split)."""
    monkeypatch.setattr(dsprites, "IMAGES", 100)
    monkeypatch.setattr(dsprites, "TEST_IMAGES", 10)
    monkeypatch.setattr(dsprites, "generate", lambda: np.packbits(dsprites.render(dsprites.factors_of(np.arange(100))).reshape(100, -1) > 0, axis=1))


def test_the_cache_is_written_once_read_back_and_checked(small, tmp_path):
    test = data.load("dsprites", "test", tmp_path)
    train = data.load("dsprites", "train", tmp_path)
    assert len(test) == 10 and len(train) == 90 and test.image_shape == (64, 64)
    assert test.factors.shape == (10, 5) and np.array_equal(test.labels.numpy(), test.factors[:, 0].numpy())
    expected = dsprites.render(test.factors.numpy())
    assert np.array_equal(test.uint8().numpy(), expected)  # what was cached is what the factors draw
    cache = dsprites.cache_folder() / dsprites.CACHE_NAME  # in the cache folder, not the data folder
    assert cache.is_file() and not (tmp_path / "dsprites").exists()
    raw = bytearray(cache.read_bytes())
    raw[-1] ^= 1
    cache.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=f"{cache}: does not match {dsprites.CACHE_NAME}.sha256"):
        data.load("dsprites", "test", tmp_path)
    with pytest.raises(DataError, match="unknown split 'extra' of dsprites"):
        data.load("dsprites", "extra", tmp_path)
    with pytest.raises(DataError, match="data directory .* does not exist"):
        data.load("dsprites", "test", tmp_path / "missing")


def test_disentanglement_of_a_trained_run_and_its_labelled_traversal(tiny_factors, tmp_path, capsys, captured):
    import json

    from vaelab.cli import main

    run = tmp_path / "run"
    assert main(["train", "vae", "--dataset", "dsprites", "--data-dir", str(tmp_path), "--steps", "20", "--batch-size", "20",
                 "--hidden", "16", "--z-dim", "3", "--device", "cpu", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--disentanglement", "--metric-points", "60", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "beta-VAE metric" in printed and "MIG per factor: shape" in printed
    result = json.loads((run / "eval-disentanglement.json").read_text())
    assert result["factors"] == list(dsprites.FACTOR_NAMES) and result["metric_points"] == 60
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert 0 <= result[key] <= 1, key
    assert np.array(result["code_factor_information"]).shape == (3, 5)
    assert main(["plot", str(run), "--kind", "traversal", "--device", "cpu"]) == 0
    rows = [t.get_text() for t in captured[0].axes[0].get_yticklabels()]
    assert len(rows) == 3 and all("(KL " in row and any(name in row for name in (*dsprites.FACTOR_NAMES, "inactive")) for row in rows)


def test_settings_are_checked_against_the_datasets_image_shape(tiny_factors, tmp_path, capsys):
    """Four stride-2 convolutions fit 64 x 64 dSprites (64 divides by 2^4) though not MNIST's 28 x 28: the check before
    the files are read must use the dataset's shape."""
    from vaelab.cli import main

    common = ["--data-dir", str(tmp_path), "--steps", "2", "--batch-size", "8", "--z-dim", "2", "--device", "cpu", "--no-progress",
              "--net", "conv", "--set", "model.channels=4,4,8,8", "--set", "model.hidden=16"]
    assert main(["train", "vae", "--dataset", "dsprites", *common, "--out", str(tmp_path / "conv-dsprites")]) == 0
    assert (tmp_path / "conv-dsprites" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["train", "vae", "--dataset", "mnist", *common, "--out", str(tmp_path / "conv-mnist")]) != 0
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "model.net" in err and "2^4" in err
    assert not (tmp_path / "conv-mnist").exists()


def test_disentanglement_needs_data_with_known_factors(tiny_data, tmp_path, capsys):
    from vaelab.cli import main

    run = tmp_path / "mnist"
    assert main(["train", "vae", "--data-dir", str(tiny_data), "--steps", "2", "--batch-size", "20", "--hidden", "8", "--z-dim", "2",
                 "--device", "cpu", "--no-progress", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--disentanglement", "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and "mnist has no known generative factors" in err
    assert not (run / "eval-disentanglement.json").exists()
