"""Label-aware models: M2 (SSVAE) enumeration and batches, the conditional VAE, Gaussian likelihoods."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import objectives
from vaelab.cli import main
from vaelab.training.config import RunConfig, load_preset
from vaelab.data import CS236_TRAIN_LABELLED_POSITIONS, ImageSet, subset_indices
from vaelab.distributions.likelihoods import GaussianLikelihood
from vaelab.models import build_model, model_config
from vaelab.training.batches import Batches, labelled_indices
from vaelab.training.loop import training_loss


def _ssvae(z_dim=4):
    return build_model(model_config(name="ssvae", x_dim=30, z_dim=z_dim, hidden=(16,))).double()


def test_enumeration_equals_an_explicit_loop_over_labels():
    torch.manual_seed(0)
    model = _ssvae()
    x = torch.bernoulli(torch.full((6, 30), 0.4, dtype=torch.float64))
    torch.manual_seed(1)
    terms = model({"x": x}, k=3)
    assert terms.draws == 3 and terms.log_px_z.shape == (30, 6)  # 3 draws x 10 labels
    # The same computation one label at a time, with the same noise: eps for label y is slice y.
    torch.manual_seed(1)
    eps = torch.randn(3, 10, 6, 4, dtype=torch.float64)
    qy = torch.softmax(model.classify({"x": x}), -1)
    rec = kl_z = torch.zeros(6, dtype=torch.float64)
    for label in range(10):
        y = torch.full((6,), label)
        q = model.posterior(x, y)
        z = q.mean + q.stddev * eps[:, label]
        rec = rec + qy[:, label] * -model.likelihood(z, y).log_prob(x).mean(0)
        kl_z = kl_z + qy[:, label] * 0.5 * (q.variance + q.mean**2 - 1 - q.variance.log()).sum(-1)
    kl_y = (qy * (qy.log() + math.log(10))).sum(-1)
    torch.testing.assert_close(objectives.reconstruction_term(terms), rec)
    torch.testing.assert_close(objectives.group_kl(terms, terms.latents["z"]), kl_z)
    torch.testing.assert_close(objectives.group_kl(terms, terms.latents["y"]), kl_y)
    torch.testing.assert_close(-objectives.elbo(terms), rec + kl_z + kl_y)
    # The Monte Carlo KL of each group (from log q - log p at the points) agrees with the analytic one.
    mc_y = objectives.expectation(terms, terms.latents["y"].log_q - terms.latents["y"].log_p)
    torch.testing.assert_close(mc_y, kl_y)


def test_ssvae_stratified_iwae_bound_converges_to_log_px_from_below():
    torch.manual_seed(0)
    model = _ssvae(z_dim=2)
    x = torch.bernoulli(torch.full((3, 30), 0.5, dtype=torch.float64))
    with torch.no_grad():
        # log p(x) = log sum_y p(y) p(x | y), each p(x | y) by importance sampling with q(z | x, y).
        per_label = []
        for c in range(10):
            y = torch.full((3,), c)
            q, prior = model.posterior(x, y), model.prior()
            z = q.sample((20000,))
            log_w = model.likelihood(z, y).log_prob(x) + prior.log_prob(z) - q.log_prob(z)
            per_label.append(torch.logsumexp(log_w, 0) - math.log(20000) - math.log(10))
        exact = torch.logsumexp(torch.stack(per_label), 0)
        stratified = objectives.iwae_bound(model({"x": x}, 2000))
        one = torch.stack([objectives.iwae_bound(model({"x": x}, 1)) for _ in range(400)]).mean(0)
        elbo = torch.stack([objectives.elbo(model({"x": x}, 1)) for _ in range(400)]).mean(0)
    torch.testing.assert_close(stratified, exact, atol=0.05, rtol=0)
    assert torch.all(elbo <= one + 0.05) and torch.all(one <= stratified + 0.05)


def test_ssvae_loss_weights_and_classifier_only():
    torch.manual_seed(0)
    model = _ssvae()
    x = torch.bernoulli(torch.rand(8, 30, dtype=torch.float64))
    labels = torch.tensor([0, 1, 2, 3])
    batch = {"x": x, "x_labelled": x[:4], "y_labelled": labels}
    ce = torch.nn.functional.cross_entropy(model.classify({"x": x[:4]}), labels)
    torch.manual_seed(1)
    terms = model(batch)
    nelbo = -objectives.elbo(terms).mean()
    out = objectives.loss(terms)
    torch.testing.assert_close(out.loss, nelbo + 100 * ce)
    assert out.extras["ce"].item() == pytest.approx(ce.item()) and set(out.extras) == {"kl_z", "kl_y", "ce"}
    model.config.gen_weight = 0.0
    classifier_only = model(batch)
    assert not classifier_only.log_px_z.requires_grad  # the bound is only logged: no graph is built for it
    assert objectives.loss(classifier_only).loss.item() == pytest.approx(100 * ce.item())
    assert not model.trains_every_parameter


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
    batches = Batches(train_set, cfg, labels="subset", binary=True, device=torch.device("cpu"))
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
    batch = Batches(train_set, cfg, labels="all", binary=False, device=torch.device("cpu")).next()
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


def test_conditional_model_terms_and_label_grid():
    model = build_model(model_config(name="cvae", x_dim=30, z_dim=3, hidden=(16,), likelihood="gaussian"))
    x, y = torch.rand(5, 30), torch.tensor([0, 1, 2, 3, 4])
    terms = model({"x": x, "y": y}, 2)
    assert terms.log_px_z.shape == (2, 5) and terms.latents["z"].kl.shape == (5,)
    with pytest.raises(ValueError, match="needs labels"):
        model({"x": x})
    assert model.label_grid(4).shape == (4, 10, 30)
    # Same row -> same z: with a decoder that ignores y every column of a row is identical.
    torch.nn.init.zeros_(model.decoder[0].weight[:, 3:])
    grid = model.label_grid(2)
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
    assert grid.shape[1] > 10 * 30 and grid.shape[0] > 3 * 30  # 3 z rows x 10 labels, with named rows and columns


def test_cs236_labelled_subset_needs_mnist():
    from vaelab.training.config import validate
    from vaelab.errors import ConfigError

    cfg = load_preset("ssvae")
    cfg.data.dataset = "fashion-mnist"
    with pytest.raises(ConfigError, match="data.labelled"):
        validate(cfg)
    assert isinstance(RunConfig(), RunConfig)


def test_cs236_protocol_refused_for_other_datasets_whose_default_is_full(tmp_path, tiny_data, capsys):
    import json
    import shutil

    shutil.copytree(tiny_data / "mnist", tmp_path / "fashion-mnist")
    common = ["--steps", "2", "--hidden", "16", "--data-dir", str(tmp_path), "--no-progress"]
    assert main(["train", "cvae", "--dataset", "fashion-mnist", *common, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--protocol", "cs236"]) == 1
    err = capsys.readouterr().err
    assert "--protocol cs236" in err and "fashion-mnist" in err and len(err.strip().splitlines()) == 1
    # Without --protocol, a run on another dataset is evaluated on its whole test split.
    assert main(["eval", str(tmp_path / "run"), "--iw", "1", "--json", "--no-save"]) == 0
    assert json.loads(capsys.readouterr().out)["protocol"] == "full"
