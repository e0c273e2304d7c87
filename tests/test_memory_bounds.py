"""Memory stays bounded whatever the options: sample grids over the stated limits are refused in one line before an
image is drawn (and within them decoded in chunks); a training step too large for the machine is refused before the
run directory is made; a traversal shows at most MAX_TRAVERSAL_ROWS rows and none for discrete codes; dSprites is held
packed, 8 pixels a byte, and unpacked a batch at a time."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.cli import main
from vaelab.data import dsprites
from vaelab.errors import ConfigError, DataError, VaelabError
from vaelab.models import Model, build_model, model_config
from vaelab.report import figures, grids
from vaelab.training import memory
from vaelab.training.batches import Batches
from vaelab.training.config import load_preset, set_key




def one_line(proc, *needles, code: int = 1) -> str:
    """Exit `code`, no traceback, and one error line (argparse's usage lines before it aside) holding every needle."""
    errors = [line for line in proc.stderr.splitlines() if ": error: " in line]
    assert proc.returncode == code and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr
    for needle in needles:
        assert str(needle) in errors[0], (needle, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae", "--steps", "5", "--batch-size", "20", "--hidden", "16", "--z-dim", "2", "--data-dir",
                 str(tiny_data), "--out", str(path), "--device", "cpu", "--no-progress"]) == 0
    return path


# ---------------------------------------------------------------- vaelab sample
def test_sample_grids_over_the_limits_are_refused_in_one_line_before_an_image_is_drawn(run, tiny_data, tmp_path, cli, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("an image was drawn before the grid's size was checked")

    monkeypatch.setattr(Model, "sample", never)
    monkeypatch.setattr(Model, "reconstruct", never)
    out = tmp_path / "s.png"
    common = ["--out", out, "--recon-out", tmp_path / "r.png", "--data-dir", tiny_data, "--device", "cpu"]
    one_line(cli("sample", run, "--n", "1000000", *common), "--n", "1,000,000", f"{grids.MAX_GRID_IMAGES:,}")
    one_line(cli("sample", run, "--n", "10", "--ncol", "20", *common), "--ncol", "more than the 10 images")
    one_line(cli("sample", run, "--n", "10000", "--ncol", "1", *common), "--ncol", f"{grids.MAX_IMAGE_SIDE:,} a side",
             "use --ncol from 19 to 546")
    for bad in ("0", "-3"):
        one_line(cli("sample", run, "--ncol", bad, *common), "--ncol", code=2)
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_label_grid_over_the_limits_is_refused_before_it_is_drawn(tmp_path, monkeypatch):
    cfg = load_preset("cvae")
    cfg.model.x_dim, cfg.model.image_shape, cfg.model.hidden = 784, (28, 28), (8,)
    model = build_model(cfg.model).eval()
    monkeypatch.setattr(Model, "label_grid", lambda *a: pytest.fail("drawn before the check"))
    fit = grids.labelled_grid_rows(10, (28, 28))
    assert 0 < fit * 10 <= grids.MAX_GRID_IMAGES and max(grids.labelled_grid_pixels(fit, 10, (28, 28))) <= grids.MAX_IMAGE_SIDE
    with pytest.raises(VaelabError, match=f"--n {fit * 10:,} at most"):
        grids.write_sample_grids(model, cfg, None, tmp_path / "s.png", tmp_path / "r.png", n=100_000)
    assert not list(tmp_path.iterdir())


def test_samples_are_decoded_in_chunks_and_a_small_request_draws_what_it_always_drew(monkeypatch):
    model = build_model(model_config("vae", x_dim=784, image_shape=(28, 28), hidden=(8,), z_dim=2)).eval()
    one_call = grids.prior_samples(model, 50, seed=3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        assert torch.equal(one_call, model.sample(50))  # within one chunk: one call, as before
    sizes = []
    original = Model.sample
    monkeypatch.setattr(Model, "sample", lambda self, n: sizes.append(n) or original(self, n))
    monkeypatch.setattr(grids, "DEFAULT_BUDGET", 784 * 16)
    assert grids.prior_samples(model, 50, seed=3).shape == (50, 784)
    assert sizes == [16, 16, 16, 2]


# ---------------------------------------------------------------- vaelab train
def test_a_training_step_too_large_is_refused_before_the_run_directory_is_made(tiny_data, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: (16 * 10**9, "a 16 GB test machine"))
    out = tmp_path / "run"
    line = one_line(cli("train", "vae", "--objective", "iwae", "--k", "100000", "--steps", "2", "--data-dir", tiny_data,
                        "--device", "cpu", "--no-progress", "--out", out),
                    "objective.k", "k = 100,000 draws x 100 images", "over the limit of 12.8 GB (80% of a 16 GB test machine)",
                    "reduce objective.k (at most")
    assert not out.exists()
    # the k the message offers fits, one more draw per image would not (the estimate is affine in k)
    fits_k = int(line.split("reduce objective.k (at most ")[1].split(" ")[0].replace(",", ""))
    cfg = load_preset("vae")
    set_key(cfg, "objective.kind", "iwae")
    set_key(cfg, "train.device", "cpu")
    for k, refused in ((fits_k, False), (fits_k + 2, True)):
        set_key(cfg, "objective.k", k)
        if refused:
            with pytest.raises(ConfigError):
                memory.check_step_memory(cfg)
        else:
            assert memory.check_step_memory(cfg).total <= 12.8e9


def test_the_step_estimate_follows_the_measured_slope():
    """Measured on the CPU (peak RSS of 2-step runs at k = 2 and 400, batch 100): the reference MLP VAE's step grows
    by 10,975 bytes a draw and image; the estimate must be within 30 % of that, and grow linearly in k."""
    cfg = load_preset("vae")
    small, large = memory.step_memory(cfg, k=2), memory.step_memory(cfg, k=400)
    per_draw = (large.total - small.total) / (398 * 100)
    assert 0.7 * 10_975 < per_draw < 1.3 * 10_975
    assert memory.step_memory(cfg, k=798).total - large.total == pytest.approx(large.total - small.total, rel=0.01)
    assert large.fixed == 4 * 4 * sum(p.numel() for p in build_model(cfg.model).parameters())


def test_a_discrete_code_model_costs_nothing_more_per_draw():
    cfg = load_preset("vqvae")
    assert memory.step_memory(cfg, k=1).total == memory.step_memory(cfg, k=1000).total  # one code grid, repeated


# ---------------------------------------------------------------- vaelab plot
def test_a_traversal_of_discrete_codes_is_refused_in_one_line(captured):
    model = build_model(model_config("vqvae", image_shape=(28, 28), net="conv", channels=(4, 8), codebook_size=6, code_dim=3)).eval()
    with pytest.raises(VaelabError, match="7 x 7 grid of discrete codes"):
        figures.traversal_figure(model, torch.zeros(2, 784), "t.png", "title")
    assert not captured


def test_a_traversal_of_a_large_latent_shows_the_rows_of_largest_kl(captured, monkeypatch):
    model = build_model(model_config("vae", x_dim=784, image_shape=(28, 28), hidden=(8,), z_dim=100)).eval()
    decoded = []
    original = type(model).decode
    monkeypatch.setattr(type(model), "decode", lambda self, codes: decoded.append(codes["z"].shape[0]) or original(self, codes))
    kl = torch.arange(100, dtype=torch.float32).flip(0)  # dimension 0 carries the most
    figures.traversal_figure(model, torch.zeros(2, 784), "t.png", "title", kl={"z": kl})
    rows = [t.get_text() for t in captured[0].axes[0].get_yticklabels()]
    assert len(rows) == figures.MAX_TRAVERSAL_ROWS == 64 and rows[0].startswith("z[0] ") and rows[-1].startswith("z[63] ")
    assert "(64 of 100 dimensions: those of largest KL)" in captured[0].axes[0].get_title()
    assert decoded == [64 * 9]
    width, height = captured[0].get_size_inches() * grids.DPI
    assert max(width, height) <= grids.MAX_IMAGE_SIDE


def test_a_kl_chart_of_many_dimensions_stays_readable_in_width(captured):
    figures.kl_diagnostics_figure(torch.rand(784), False, None, "k.png")
    assert captured[0].get_size_inches()[0] < 25  # 784 bars made a 237-inch (26,000-pixel) figure


# ---------------------------------------------------------------- dSprites
@pytest.fixture
def small(monkeypatch):
    """The first 100 images instead of all 737,280 (10 of them the test split)."""
    monkeypatch.setattr(dsprites, "IMAGES", 100)
    monkeypatch.setattr(dsprites, "TEST_IMAGES", 10)
    monkeypatch.setattr(dsprites, "READ_ROWS", 16)  # several reads, the last one partial
    monkeypatch.setattr(dsprites, "generate", lambda: np.packbits(dsprites.render(dsprites.factors_of(np.arange(100))).reshape(100, -1) > 0, axis=1))


def test_dsprites_is_held_packed_and_unpacked_a_batch_at_a_time(small, tmp_path):
    train = data.load("dsprites", "train", tmp_path)
    assert train.images.dtype == torch.uint8 and train.images.shape == (90, 512) and train.images.nbytes == 90 * 512
    assert train.image_shape == (64, 64) and train.x_dim == 4096 and train.factors.dtype == torch.int64
    expected = dsprites.render(train.factors.numpy())
    index = torch.tensor([3, 0, 89])
    assert np.array_equal(train.uint8(index).numpy(), expected[index.numpy()])
    assert torch.equal(train.pixels(index), torch.from_numpy(expected[index.numpy()]).reshape(3, -1).float() / 255)
    # a training batch is the draw the unpacked uint8 images gave: same values, same random stream
    cfg = load_preset("vae")
    cfg.train.batch_size = 7
    torch.manual_seed(1)
    batches = Batches(train, cfg, "none", True, torch.device("cpu"))
    order = batches.sampler.order[:7].clone()
    state = torch.get_rng_state()
    x = batches.next()["x"]
    torch.set_rng_state(state)
    assert torch.equal(x, data.binarize_batch(torch.from_numpy(expected[order.numpy()])))
    test = data.load("dsprites", "test", tmp_path)
    assert torch.equal(data.binarized_test_set(test), data.binarize(test.pixels(), torch.Generator().manual_seed(0)))
    factors = data.factor_data("dsprites", tmp_path)
    assert factors.packed.dtype == np.uint8 and factors.packed.shape == (100, 512)


def test_the_cache_is_read_in_one_checked_pass(small, tmp_path):
    data.load("dsprites", "test", tmp_path)  # generates the cache
    folder = tmp_path / "dsprites"
    full = dsprites.cached(folder)
    rows = np.array([0, 15, 16, 17, 99])
    assert np.array_equal(dsprites.cached(folder, rows), full[rows])
    cache = folder / dsprites.CACHE_NAME
    cache.write_bytes(cache.read_bytes()[:-100])  # truncated
    with pytest.raises(DataError, match="does not match"):
        dsprites.cached(folder, rows)


def test_a_grey_grid_is_written_as_the_gray_colormap_would_without_its_float_copy(tmp_path):
    import matplotlib.image
    from PIL import Image

    grid = np.clip(np.random.default_rng(0).random((30, 20)).astype(np.float32) * 1.2 - 0.1, 0, 1)
    grid[0, :4] = [0, 1, 1 / 256, 255 / 256]
    matplotlib.image.imsave(tmp_path / "colormap.png", grid, cmap="gray", vmin=0.0, vmax=1.0)
    grids.save_grid(tmp_path / "grid.png", torch.from_numpy(grid)[None], 1, (30, 20))
    written = np.asarray(Image.open(tmp_path / "grid.png"))[2:-2, 2:-2]  # the grid's padding around the one image
    assert np.array_equal(written, np.asarray(Image.open(tmp_path / "colormap.png")))


def test_an_ordinary_step_is_passed_without_an_estimate_and_every_preset_fits(monkeypatch):
    monkeypatch.setattr(memory, "step_memory", lambda *a, **k: pytest.fail("estimated a step that clearly fits"))
    monkeypatch.setattr(memory, "device_memory", lambda device: (8 * 10**9, "an 8 GB test machine"))
    for preset in ("vae", "hvae", "ssvae", "vqvae", "pixelvae"):
        assert memory.check_step_memory(load_preset(preset), torch.device("cpu")) is None, preset
