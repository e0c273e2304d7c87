"""Every registered model: shapes, a few training steps with finite loss, and run-directory round trips."""

from __future__ import annotations

import pickle

import pytest
import torch

from vaelab import objectives, runs
from vaelab.config import ModelConfig, RunConfig, save_json
from vaelab.errors import ConfigError, RunDirError
from vaelab.models import MODELS, build_model
from vaelab.train import training_loss


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind, k", [("elbo", 1), ("iwae", 4)])
def test_every_model_trains_a_few_steps(name, kind, k):
    cfg = RunConfig()
    cfg.model = ModelConfig(name=name, x_dim=784, z_dim=6, hidden=(32, 32))
    cfg.objective.kind, cfg.objective.k = kind, k
    model = build_model(cfg.model)
    x = torch.bernoulli(torch.rand(16, 784))
    y = torch.randint(0, 10, (16,))
    terms = model(x, k=k, y=y if model.conditional else None)
    for t in (terms.log_px_z, terms.log_pz, terms.log_qz):
        assert t.shape == (k, 16)
    assert terms.kl is None or terms.kl.shape == (16,)
    batch = {"x": x, "y": y, "x_labelled": x[:10], "y_labelled": torch.arange(10)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        out = training_loss(model, batch, cfg, beta=1.0)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert model.sample(7).shape == (7, 784)
    recon = model.reconstruct(x, y) if model.conditional else model.reconstruct(x)
    assert recon.shape == (16, 784)


def test_unknown_model_is_refused():
    with pytest.raises(ConfigError, match="model.name"):
        build_model(ModelConfig(name="nope"))


def _run_dir(tmp_path, model, cfg):
    save_json(cfg, tmp_path / runs.CONFIG_FILE)
    runs.save_weights(tmp_path, model)
    return tmp_path


def test_run_directory_alone_rebuilds_the_model(tmp_path):
    cfg = RunConfig()
    cfg.model.hidden = (20,)
    model = build_model(cfg.model)
    _run_dir(tmp_path, model, cfg)
    loaded, loaded_cfg = runs.load_run(tmp_path)
    assert loaded_cfg == cfg
    x = torch.bernoulli(torch.rand(3, 784))
    torch.testing.assert_close(loaded.reconstruct(x), model.eval().reconstruct(x))


def test_checkpoint_holds_model_and_optimizer_state(tmp_path):
    model = build_model(ModelConfig(hidden=(20,)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    objectives.loss(model(torch.bernoulli(torch.rand(4, 784)))).loss.backward()
    opt.step()
    for step in (10, 20, 30, 40):
        path = runs.save_checkpoint(tmp_path, model, opt, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000030.safetensors", "step-0000040.safetensors"]
    tensors = runs.read_safetensors(path)
    fresh = torch.optim.Adam(build_model(ModelConfig(hidden=(20,))).parameters(), lr=1e-3)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["step"] == "40"
    runs.load_optimizer_tensors(fresh, tensors, metadata)
    for a, b in zip(opt.state_dict()["state"].values(), fresh.state_dict()["state"].values()):
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"])


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_loading_never_unpickles(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    save_json(RunConfig(), run / runs.CONFIG_FILE)
    (run / runs.WEIGHTS_FILE).write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(RunDirError, match="not a readable safetensors file"):
        runs.load_run(run)
    assert not (tmp_path / "PWNED").exists()


def test_mismatched_weights_are_reported(tmp_path):
    cfg = RunConfig()
    model = build_model(ModelConfig(hidden=(20,)))
    _run_dir(tmp_path, model, cfg)  # config says (300, 300)
    with pytest.raises(RunDirError, match="weights do not match config.json"):
        runs.load_run(tmp_path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        runs.load_run(tmp_path / "nope")
    with pytest.raises(RunDirError, match="not a vaelab run directory"):
        runs.load_run(tmp_path)
