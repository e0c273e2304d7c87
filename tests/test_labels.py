"""Label-aware models: M2 (SSVAE) enumeration and batches, the conditional VAE, Gaussian likelihoods."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import objectives
from vaelab.cli import main
from vaelab.config import ModelConfig, RunConfig, load_preset
from vaelab.data import CS236_TRAIN_LABELLED_POSITIONS, ImageSet, subset_indices
from vaelab.likelihoods import GaussianLikelihood
from vaelab.models import build_model
from vaelab.train import Batches, labelled_indices, training_loss


def _ssvae(z_dim=4):
    return build_model(ModelConfig(name="ssvae", x_dim=30, z_dim=z_dim, hidden=(16,))).double()


def test_enumeration_equals_an_explicit_loop_over_labels():
    torch.manual_seed(0)
    model = _ssvae()
    x = torch.bernoulli(torch.full((6, 30), 0.4, dtype=torch.float64))
    torch.manual_seed(1)
    enumerated = model.enumerate_labels(x, k=3)
    parts = objectives.enumerated_elbo(enumerated)
    # The same computation one label at a time, with the same noise: eps for label y is slice y.
    torch.manual_seed(1)
    eps = torch.randn(3, 10, 6, 4, dtype=torch.float64)
    qy = torch.softmax(model.classify(x), -1)
    nelbo = torch.zeros(6, dtype=torch.float64)
    for label in range(10):
        y = torch.full((6,), label)
        q = model.posterior(x, y)
        z = q.mean + q.stddev * eps[:, label]
        rec = -model.likelihood(z, y).log_prob(x).mean(0)
        kl_z = 0.5 * (q.variance + q.mean**2 - 1 - q.variance.log()).sum(-1)
        nelbo += qy[:, label] * (rec + kl_z + qy[:, label].log() - math.log(1 / 10))
    torch.testing.assert_close(parts["nelbo"], nelbo)
    torch.testing.assert_close(parts["nelbo"], parts["rec"] + parts["kl_z"] + parts["kl_y"])
    kl_y = (qy * (qy.log() + math.log(10))).sum(-1)
    torch.testing.assert_close(parts["kl_y"], kl_y)


def test_ssvae_sampled_label_bound_is_a_valid_iwae_bound():
    torch.manual_seed(0)
    model = _ssvae(z_dim=2)
    x = torch.bernoulli(torch.full((3, 30), 0.5, dtype=torch.float64))
    # Exact-label bound: log sum_y p(y) IWAE_y; sampling y from q(y|x) must approach it from below.
    with torch.no_grad():
        per_label = torch.stack([torch.logsumexp(model(x, 4000, y=torch.full((3,), c)).log_weights(), 0) - math.log(4000) for c in range(10)])
        exact = torch.logsumexp(per_label, 0)  # log_pz already holds log p(y)
        sampled = torch.logsumexp(model(x, 40000).log_weights(), 0) - math.log(40000)
        elbo = objectives.enumerated_elbo(model.enumerate_labels(x, 200))["nelbo"]
    assert torch.all(-elbo <= sampled + 0.05)
    torch.testing.assert_close(sampled, exact, atol=0.1, rtol=0)


def test_ssvae_loss_weights_and_classifier_only():
    torch.manual_seed(0)
    model = _ssvae()
    x = torch.bernoulli(torch.rand(8, 30, dtype=torch.float64))
    logits = model.classify(x[:4])
    labels = torch.tensor([0, 1, 2, 3])
    terms = model.enumerate_labels(x)
    nelbo = objectives.enumerated_elbo(terms)["nelbo"].mean()
    ce = torch.nn.functional.cross_entropy(logits, labels)
    out = objectives.ssvae_loss(terms, logits, labels, gen_weight=1.0, class_weight=100.0)
    torch.testing.assert_close(out.loss, nelbo + 100 * ce)
    assert objectives.ssvae_loss(terms, logits, labels, 0.0, 100.0).loss.item() == pytest.approx(100 * ce.item())


def _labelled_toy_set(n_per_class=6500, side=2):
    # The cs236 labelled positions reach 6458 within a digit; tiny 2x2 images keep this cheap.
    labels = torch.arange(10).repeat_interleave(n_per_class)
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    images = torch.randint(0, 256, (len(labels), side, side), dtype=torch.uint8)
    return ImageSet(images, labels, "toy")


def test_semi_supervised_batches_are_drawn_as_specified():
    train_set = _labelled_toy_set()
    cfg = load_preset("ssvae")
    cfg.train.batch_size = 50
    batches = Batches(train_set, cfg, semi_supervised=True, device=torch.device("cpu"))
    expected = subset_indices(train_set.labels, CS236_TRAIN_LABELLED_POSITIONS)
    assert torch.equal(batches.labelled, expected) and len(expected) == 100
    first, second = batches.next(), batches.next()
    assert first["x"].shape == (50, 4) and first["x_labelled"].shape == (100, 4)
    assert first["y_labelled"].tolist() == [d for d in range(10) for _ in range(10)]
    assert set(first["x_labelled"].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(first["x_labelled"], second["x_labelled"])  # binarized afresh every step
    # The unlabelled batches walk a permutation of the whole training set (labelled images included).
    seen = torch.cat([batches.sampler.order[:100]])
    assert len(set(seen.tolist())) == 100
    cfg.data.labelled, cfg.data.labels_per_class = "random", 3
    picked = labelled_indices(train_set, cfg)
    assert train_set.labels[picked].tolist() == [d for d in range(10) for _ in range(3)]
    assert torch.equal(picked, labelled_indices(train_set, cfg))  # seeded: the same subset every time


def test_continuous_batches_are_not_binarized():
    train_set = _labelled_toy_set(20, side=5)
    cfg = load_preset("cvae")
    batch = Batches(train_set, cfg, semi_supervised=False, device=torch.device("cpu")).next()
    assert len(batch["x"].unique()) > 2 and float(batch["x"].max()) <= 1
    assert batch["y"].shape == (100,)


def test_gaussian_likelihood_densities():
    h = torch.randn(3, 5, dtype=torch.float64)
    x = torch.rand(3, 5, dtype=torch.float64)
    fixed = GaussianLikelihood(5, variance=0.1).double()
    expected = -0.5 * (math.log(2 * math.pi * 0.1) + (x - h) ** 2 / 0.1).sum(-1)
    torch.testing.assert_close(fixed(h).log_prob(x), expected)
    learned = GaussianLikelihood(5, variance=0.1, learned=True).double()
    torch.testing.assert_close(learned.variance(), torch.full((5,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(learned(h).log_prob(x), expected)
    (-learned(h).log_prob(x).sum()).backward()
    assert learned.raw_variance.grad is not None and learned.raw_variance.grad.abs().sum() > 0
    assert float(learned.variance().detach().min()) >= learned.floor


def test_conditional_model_terms_and_style_content():
    model = build_model(ModelConfig(name="cvae", x_dim=30, z_dim=3, hidden=(16,), likelihood="gaussian"))
    x, y = torch.rand(5, 30), torch.tensor([0, 1, 2, 3, 4])
    terms = model(x, 2, y=y)
    assert terms.log_px_z.shape == (2, 5) and terms.kl.shape == (5,)
    with pytest.raises(ValueError, match="needs labels"):
        model(x)
    grid = model.style_content(4)
    assert grid.shape == (40, 30)
    # Same row -> same z: with a decoder that ignores y every column of a row is identical.
    torch.nn.init.zeros_(model.decoder[0].weight[:, 3:])
    grid = model.style_content(2).view(2, 10, 30)
    torch.testing.assert_close(grid[:, :1].expand_as(grid), grid)
    assert not torch.allclose(grid[0], grid[1])


def test_ssvae_and_cvae_cli_on_tiny_data(tiny_data, tmp_path, capsys):
    common = ["--steps", "4", "--log-every", "2", "--hidden", "32", "--data-dir", str(tiny_data), "--no-progress"]
    assert main(["train", "ssvae", *common, "--batch-size", "20", "--set", "data.labelled=random",
                 "--set", "data.labels_per_class=2", "--out", str(tmp_path / "ss")]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "ss" / "metrics.jsonl").read_text().splitlines()]
    assert {"ce", "kl_y", "nelbo"} <= set(metrics[-1])
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "ss"), "--iw", "1,10", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["accuracy"] <= 1 and result["accuracy_images"] == 11000
    assert result["nelbo"] == pytest.approx(result["rec"] + result["kl_z"] + result["kl_y"], rel=1e-6)
    assert main(["train", "cvae", *common, "--out", str(tmp_path / "cv")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "cv"), "--protocol", "full", "--iw", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bound"] == "log p(x | y)" and result["binarized"] is False
    assert main(["sample", str(tmp_path / "cv"), "--n", "30"]) == 0
    import matplotlib.image

    grid = matplotlib.image.imread(tmp_path / "cv" / "samples.png")
    assert grid.shape[:2] == (3 * 30 + 2, 10 * 30 + 2)  # 3 z rows x 10 labels


def test_cs236_labelled_subset_needs_mnist():
    from vaelab.config import validate
    from vaelab.errors import ConfigError

    cfg = load_preset("ssvae")
    cfg.data.dataset = "fashion-mnist"
    with pytest.raises(ConfigError, match="data.labelled"):
        validate(cfg)
    assert isinstance(RunConfig(), RunConfig)


def test_cs236_protocol_refused_for_other_datasets(tmp_path, tiny_data, capsys):
    import shutil

    shutil.copytree(tiny_data / "mnist", tmp_path / "fashion-mnist")
    common = ["--steps", "2", "--hidden", "16", "--data-dir", str(tmp_path), "--no-progress"]
    assert main(["train", "cvae", "--dataset", "fashion-mnist", *common, "--out", str(tmp_path / "run")]) == 0
    assert main(["eval", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "--protocol cs236" in err and "fashion-mnist" in err and len(err.strip().splitlines()) == 1
