"""Shared fixtures: a tiny MNIST-shaped IDX dataset written by the tests, and the real data if present."""

from __future__ import annotations

import os
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.data import write_idx

REPO = Path(__file__).resolve().parents[1]
# The cs236 test subset reaches position 1094 among the test images of digit 1, so the tiny test
# split holds 1,100 images per digit; the training split is small.
TINY_TEST_PER_DIGIT = 1100
TINY_TRAIN = 600


def _digit_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images: a bright bar whose position encodes the label, plus noise."""
    n = len(labels)
    images = (rng.random((n, 28, 28)) < 0.05).astype(np.uint8) * 255
    for digit in range(10):
        rows = labels == digit
        images[rows, 2 + 2 * digit : 4 + 2 * digit, 4:24] = 230
    return images


def write_tiny_mnist(root: Path, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    folder = root / "mnist"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    train_labels = rng.integers(0, 10, TINY_TRAIN).astype(np.uint8)
    test_labels = np.repeat(np.arange(10, dtype=np.uint8), TINY_TEST_PER_DIGIT)
    rng.shuffle(test_labels)
    write_idx(folder / f"train-images-idx3-ubyte{suffix}", _digit_images(train_labels, rng))
    write_idx(folder / f"train-labels-idx1-ubyte{suffix}", train_labels)
    write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", _digit_images(test_labels, rng))
    write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", test_labels)
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root with mnist/ holding a small synthetic dataset in raw IDX files."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny-data"))


# A run small enough to train in seconds, with checkpoints at steps 80, 100 and 120 (the last three kept).
RESUMABLE_TRAIN = ["--steps", "120", "--batch-size", "20", "--hidden", "16", "--z-dim", "3", "--log-every", "7",
                   "--checkpoint-every", "20", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="session")
def uninterrupted(tiny_data, tmp_path_factory) -> Path:
    """RESUMABLE_TRAIN run once without interruption: the weights every resumed run must end with."""
    from vaelab.cli import main

    run = tmp_path_factory.mktemp("ref") / "run"
    assert main(["train", "vae", *RESUMABLE_TRAIN, "--data-dir", str(tiny_data), "--out", str(run)]) == 0
    return run


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real MNIST root ($VAELAB_DATA or ../shared/data); tests using it skip when it is absent."""
    for candidate in (os.environ.get("VAELAB_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").is_dir():
            return Path(candidate)
    pytest.skip("real MNIST not available (set VAELAB_DATA)")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """Every test caches (dSprites, decoded images) under its own tmp_path/cache/vaelab, the folder that
    XDG_CACHE_HOME=tmp_path/cache names too, never in the user's cache."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache" / "vaelab"))


def assert_refused(settings: list[tuple[str, str]], message: str) -> None:
    """A default RunConfig with `settings` applied in order (`--set KEY=VALUE`) fails validation with `message`."""
    from vaelab.errors import ConfigError
    from vaelab.training.config import RunConfig, set_key, validate

    cfg = RunConfig()
    for key, value in settings:
        set_key(cfg, key, value)
    with pytest.raises(ConfigError, match=message):
        validate(cfg)


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures vaelab.report.figures and grids would save, kept instead of written to files."""
    from vaelab.report import figures, grids

    figs = []
    for module in (figures, grids):
        monkeypatch.setattr(module, "save_figure", lambda fig, path: figs.append(fig) or path)
    return figs


@pytest.fixture
def cli(capsys):
    """Run the CLI in-process (no interpreter start-up per call); returns its exit code, stdout and stderr."""
    from vaelab.cli import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
        out, err = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=out, stderr=err)

    return run


@pytest.fixture
def tiny_factors(monkeypatch):
    """dSprites (and colour dSprites) of 128 images (every factor has 2 or 4 values), 28 of them the test split."""
    from vaelab.data import dsprites

    sizes = (2, 2, 2, 4, 4)
    monkeypatch.setattr(dsprites, "FACTOR_SIZES", sizes)
    monkeypatch.setattr(dsprites.Factors, "factor_sizes", sizes)
    monkeypatch.setattr(dsprites, "IMAGES", 128)
    monkeypatch.setattr(dsprites, "TEST_IMAGES", 28)
    monkeypatch.setattr(dsprites, "generate", lambda: np.packbits(dsprites.render(dsprites.factors_of(np.arange(128))).reshape(128, -1) > 0, axis=1))


def killed_copy(uninterrupted: Path, folder: Path) -> Path:
    """A copy of the reference run as a kill -9 after its final checkpoint leaves it: no weights, no summary."""
    import shutil

    run = folder / "run"
    shutil.copytree(uninterrupted, run)
    for name in ("model.safetensors", "summary.json"):
        (run / name).unlink()
    return run


def rewrite_checkpoint(path, tensors=None, metadata=None) -> None:
    """Rewrite a safetensors file in place with its tensors and metadata passed through the given edits (tests of
    what a damaged checkpoint is; the manifest is not updated)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    old = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors(old) if tensors else old, str(path), metadata=metadata(meta) if metadata else meta)
