"""VQ-VAE: the codebook (straight-through gradient, EMA updates, code restarts), the causal prior over code grids,
and the two stages through the command line (vaelab train vqvae-prior --from RUN)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import assert_refused
from vaelab.cli import main
from vaelab.distributions.pixelcnn import CodePrior
from vaelab.models import build_model, model_config
from vaelab.nets.quantize import VectorQuantizer, code_counts, ema_update, perplexity
from vaelab.training.loop import training_loss
from vaelab.training.config import load_preset
from vaelab.training.runs import load_run


def _vqvae(**settings):
    settings = {"image_shape": (28, 28), "net": "conv", "channels": (4, 8), "codebook_size": 6, "code_dim": 3, **settings}
    return build_model(model_config("vqvae", **settings))


def test_straight_through_gradient_reaches_the_encoder():
    """z_q's gradient is copied to z_e unchanged, and the reconstruction term alone trains the encoder."""
    torch.manual_seed(0)
    quantizer = VectorQuantizer(5, 3, restart_threshold=0).eval()
    z_e = torch.randn(2, 3, 4, 4, requires_grad=True)
    weight = torch.randn(2, 3, 4, 4)
    q = quantizer(z_e)
    assert not torch.equal(q.z_q, z_e)  # the forward value is the codebook's
    torch.testing.assert_close(q.z_q, quantizer.lookup(q.indices, (4, 4)))
    (q.z_q * weight).sum().backward()
    torch.testing.assert_close(z_e.grad, weight)

    model = _vqvae(codebook_update="ema", commitment_weight=0.0)  # no loss but the reconstruction reaches the encoder
    x = torch.bernoulli(torch.full((4, 784), 0.3))
    terms = model({"x": x})
    (-terms.log_px_z.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())


def test_ema_update_matches_its_formula():
    count, total = torch.tensor([1.0, 0.0]), torch.tensor([[2.0], [0.0]])
    assigned, sums = torch.tensor([2.0, 1.0]), torch.tensor([[4.0], [3.0]])
    new_count, new_total, codebook = ema_update(count, total, assigned, sums, decay=0.5, epsilon=0.0)
    # N = 0.5 * [1, 0] + 0.5 * [2, 1] = [1.5, 0.5]; m = 0.5 * [2, 0] + 0.5 * [4, 3] = [3, 1.5]; e = m / N
    torch.testing.assert_close(new_count, torch.tensor([1.5, 0.5]))
    torch.testing.assert_close(new_total, torch.tensor([[3.0], [1.5]]))
    torch.testing.assert_close(codebook, torch.tensor([[2.0], [3.0]]))
    # Laplace smoothing: N'_k = (N_k + eps) / (sum N + K eps) * sum N keeps an unused code finite
    _, _, codebook = ema_update(torch.zeros(2), torch.zeros(2, 1), torch.tensor([3.0, 0.0]), torch.tensor([[6.0], [0.0]]), 0.5, 0.1)
    smoothed = torch.tensor([1.6, 0.1]) / 1.7 * 1.5
    torch.testing.assert_close(codebook, torch.tensor([[3.0], [0.0]]) / smoothed.unsqueeze(1))

    # The quantizer applies it to the batch's nearest-code assignments in training mode.
    quantizer = VectorQuantizer(2, 1, update="ema", decay=0.5, restart_threshold=0)
    quantizer.codebook.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.ema_count.copy_(torch.tensor([1.0, 1.0]))
    quantizer.ema_sum.copy_(torch.tensor([[0.0], [10.0]]))
    quantizer.train()(torch.tensor([1.0, 2.0, 9.0]).view(3, 1, 1, 1))
    expected = ema_update(torch.tensor([1.0, 1.0]), torch.tensor([[0.0], [10.0]]), torch.tensor([2.0, 1.0]),
                          torch.tensor([[3.0], [9.0]]), 0.5, quantizer.epsilon)
    torch.testing.assert_close(quantizer.codebook, expected[2])
    quantizer.eval()(torch.tensor([5.0]).view(1, 1, 1, 1))  # evaluation changes nothing
    torch.testing.assert_close(quantizer.codebook, expected[2])


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_unused_codes_are_restarted_at_encoder_outputs(update):
    torch.manual_seed(0)
    data = torch.randn(8, 2, 2, 2)  # 32 vectors of 2 dimensions near the origin
    vectors = data.permute(0, 2, 3, 1).reshape(-1, 2)
    fresh = VectorQuantizer(4, 2, update, restart_threshold=1.0).train()
    initial = fresh.codebook.clone()
    fresh(data)  # usage starts at 0: the first step puts every code on an encoder output
    if update == "loss":
        assert all(any(torch.equal(code, v) for v in vectors) for code in fresh.codebook)
    else:  # then the EMA step moves each code towards the mean of the outputs assigned to it
        assert not torch.allclose(fresh.codebook, initial)
        assert torch.all(fresh.codebook >= vectors.min(0).values) and torch.all(fresh.codebook <= vectors.max(0).values)

    def run(threshold: float) -> torch.Tensor:
        quantizer = VectorQuantizer(4, 2, update, decay=0.9, restart_threshold=threshold).train()
        with torch.no_grad():
            quantizer.codebook.copy_(torch.tensor([[0.5, 0.5], [-0.5, -0.5], [0.5, -0.5], [100.0, 100.0]]))
            quantizer.usage.fill_(10.0)
            if update == "ema":
                quantizer.ema_count.fill_(1.0)
                quantizer.ema_sum.copy_(quantizer.codebook)
        for _ in range(40):  # code 3 is never chosen: its use decays below the threshold
            quantizer(data)
        return quantizer.codebook[3]

    restarted = run(1.0)
    assert restarted.abs().max() < 10 and any(torch.allclose(restarted, v, atol=3) for v in vectors)
    if update == "loss":
        torch.testing.assert_close(run(0.0), torch.tensor([100.0, 100.0]))  # restarts off: it stays unused


def test_counts_and_perplexity():
    counts = code_counts(torch.tensor([[0, 0, 2], [2, 2, 3]]), 5)
    assert counts.tolist() == [2, 0, 3, 1, 0]
    torch.testing.assert_close(perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0])), torch.tensor(4.0))
    torch.testing.assert_close(perplexity(torch.tensor([7.0, 0.0, 0.0])), torch.tensor(1.0))


def test_code_prior_is_causal_over_the_grid():
    """Changing the code at position i changes no logit at positions <= i (raster order), and does change the next
    position's: each position sees every earlier one, and no later one."""
    torch.manual_seed(0)
    prior = CodePrior(codes=5, grid=(4, 4), layers=3, channels=8)
    indices = torch.randint(5, (1, 16))
    base = prior.logits(indices)
    for i in range(16):
        changed = indices.clone()
        changed[0, i] = (changed[0, i] + 1) % 5
        logits = prior.logits(changed)
        assert torch.equal(logits[:, : i + 1], base[:, : i + 1]), f"position {i} leaks into earlier positions"
        if i < 15:
            assert not torch.allclose(logits[:, i + 1], base[:, i + 1]), f"position {i + 1} does not see position {i}"
    # log_prob is the sum of the per-position categorical log-probabilities
    expected = torch.distributions.Categorical(logits=base).log_prob(indices).sum(1)
    torch.testing.assert_close(prior.log_prob(indices), expected)
    assert prior.sample(3).shape == (3, 16)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
@pytest.mark.parametrize("update, threshold", [("loss", 1.0), ("loss", 0.0), ("ema", 1.0), ("ema", 0.0)])
def test_every_codebook_setting_trains_with_a_finite_loss(update, threshold, likelihood):
    torch.manual_seed(0)
    model = _vqvae(codebook_update=update, restart_threshold=threshold, likelihood=likelihood)
    cfg = load_preset("vqvae")
    x = torch.rand(16, 784)
    x = torch.bernoulli(x) if likelihood == "bernoulli" else x
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(6):
        out = training_loss(model, {"x": x}, cfg, 1.0)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
        assert {"commitment", "perplexity", "codes_used"} <= set(out.extras) and ("codebook" in out.extras) == (update == "loss")
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    # the uniform prior's KL is the code grid's h w log K
    torch.testing.assert_close(out.kl, torch.tensor(49 * torch.log(torch.tensor(6.0)).item()))


def test_vqvae_settings_are_checked():
    vq = ("model.name", "vqvae")
    assert_refused([vq, ("model.net", "conv"), ("model.codebook_update", "kmeans")], "model.codebook_update: must be one of loss, ema")
    assert_refused([vq, ("model.net", "conv"), ("model.codebook_size", "1")], "model.codebook_size: must be >= 2")
    assert_refused([vq, ("model.net", "conv"), ("model.ema_decay", "1")], r"model.ema_decay: must be in \[0, 1\)")
    assert_refused([vq], "model.net: model 'vqvae' supports conv")
    assert_refused([vq, ("model.net", "conv"), ("objective.kind", "iwae"), ("objective.k", "5")], "objective.kind: model 'vqvae' supports elbo")
    assert_refused([vq, ("model.net", "conv"), ("objective.beta", "2")], "objective.beta: not supported by model 'vqvae'")
    assert_refused([vq, ("model.net", "conv"), ("model.likelihood", "pixelcnn")], "model.likelihood: model 'vqvae' supports")


TINY = ["--steps", "30", "--batch-size", "20", "--device", "cpu", "--no-progress", "--log-every", "10",
        "--set", "model.codebook_size=16", "--set", "model.code_dim=4", "--channels", "8,16"]


def test_two_stages_through_the_command_line(tiny_data, tmp_path, capsys):
    stage_one, stage_two = tmp_path / "vq", tmp_path / "prior"
    assert main(["train", "vqvae", *TINY, "--data-dir", str(tiny_data), "--out", str(stage_one)]) == 0
    assert main(["train", "vqvae-prior", "--from", str(stage_one), "--steps", "40", "--batch-size", "20", "--device", "cpu",
                 "--no-progress", "--set", "model.prior_layers=3", "--set", "model.prior_channels=16", "--out", str(stage_two)]) == 0
    one, _ = load_run(stage_one)
    two, cfg = load_run(stage_two)
    assert cfg.model.source_run == str(stage_one.resolve()) and cfg.model.codebook_size == 16 and cfg.model.channels == (8, 16)
    for name, value in one.state_dict().items():  # the first stage is frozen inside the second
        assert torch.equal(two.vqvae.state_dict()[name], value), name
    capsys.readouterr()
    assert main(["eval", str(stage_one), "--json", "--device", "cpu"]) == 0
    first = json.loads(capsys.readouterr().out)
    shutil.rmtree(stage_one)  # the second run's directory alone rebuilds its model
    assert main(["eval", str(stage_two), "--json", "--device", "cpu", "--iw", "1,100"]) == 0
    second = json.loads(capsys.readouterr().out)
    for result in (first, second):
        assert result["deterministic_posterior"] and "niwae_100" not in result
        assert result["niwae_1"] == pytest.approx(result["nelbo"])
        assert 1 <= result["codebook_perplexity"] <= 16 and 0 < result["codes_in_use"] <= 1
    assert first["kl"] == pytest.approx(49 * torch.log(torch.tensor(16.0)).item(), rel=1e-5)  # uniform codes
    assert second["rec"] == pytest.approx(first["rec"], rel=1e-5)  # the same frozen networks
    assert second["kl"] < first["kl"]  # the learned prior beats the uniform one on the test codes
    assert main(["sample", str(stage_two), "--n", "4", "--no-recon", "--device", "cpu"]) == 0
    assert (stage_two / "samples.png").is_file()


def test_bad_second_stages_are_one_line_errors(tiny_data, tmp_path, capsys):
    vae_run = tmp_path / "vae"
    assert main(["train", "vae", "--steps", "2", "--batch-size", "20", "--hidden", "8", "--z-dim", "2", "--device", "cpu",
                 "--no-progress", "--data-dir", str(tiny_data), "--out", str(vae_run)]) == 0
    capsys.readouterr()
    cases = [
        (["vqvae-prior", "--from", str(tmp_path / "missing")], f"--from: {tmp_path / 'missing'} is not a vaelab run directory"),
        (["vqvae-prior", "--from", str(vae_run)], "--from: .* is a 'vae' run; 'vqvae-prior' starts from a 'vqvae' run"),
        (["vae", "--from", str(vae_run)], "--from: model 'vae' does not start from another run"),
        (["vqvae-prior"], "model.source_run: vqvae-prior starts from a finished vqvae run: give --from RUN"),
        (["vqvae", "--net", "mlp"], "model.net: model 'vqvae' supports conv"),
    ]
    for args, message in cases:
        out = tmp_path / "out"
        assert main(["train", *args, "--steps", "2", "--device", "cpu", "--data-dir", str(tiny_data), "--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and re.search(message, err), err
        assert not out.exists()  # refused before the run directory is made
    assert main(["train", "--resume", str(vae_run), "--from", str(vae_run)]) == 1
    assert "drop --from" in capsys.readouterr().err
