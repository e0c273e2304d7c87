"""The model contract: every registered model's terms, encode / decode / sample / reconstruct, a few
training steps with finite loss, the spec-driven refusals, run-directory round trips, and a toy model
defined in this file alone that trains, evaluates, samples and plots through the CLI."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab import objectives
from vaelab.cli import main
from vaelab.errors import ConfigError, RunDirError
from vaelab.models import MODELS, LatentGroup, Model, ModelConfig, ModelSpec, Terms, build_model, model_config, register_model
from vaelab.training import checkpoints, runs
from vaelab.training.config import RunConfig, load_json, save_json, set_key, validate
from vaelab.training.loop import training_loss


def _batch(model, x, y):
    batch = {"x": x}
    if model.spec.labels == "all":
        batch["y"] = y
    if model.spec.labels == "subset":
        batch["x_labelled"], batch["y_labelled"] = x[:3], y[:3]
    return batch


@pytest.mark.parametrize("net", ["mlp", "conv"])
@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("kind, k", [("elbo", 1), ("iwae", 4)])
def test_every_model_and_net_trains_a_few_steps(name, kind, k, net):
    cfg = RunConfig()
    set_key(cfg, "model.name", name)
    cfg.model.z_dim, cfg.model.net = 6, net
    if net == "mlp":
        cfg.model.hidden = (32, 32)
    else:
        cfg.model.channels = (8, 16)
    cfg.objective.kind, cfg.objective.k = kind, k
    spec = MODELS[name].spec
    if spec.starts_from is not None:
        cfg.model.source_run = "stage-one"  # never read here: the frozen networks keep their initial weights
    if net not in spec.nets or kind not in spec.objectives:
        with pytest.raises(ConfigError, match="model.net|objective.kind"):
            validate(cfg)
        return
    validate(cfg)
    model = build_model(cfg.model)
    x = torch.bernoulli(torch.rand(16, 784))
    y = torch.randint(0, 10, (16,))
    batch = _batch(model, x, y)
    terms = model(batch, k)
    points = terms.log_px_z.shape[0]
    assert terms.draws == k and points % k == 0 and terms.log_px_z.shape == (points, 16)
    for group in terms.latents.values():
        assert group.log_p.shape == group.log_q.shape == (points, 16)
        assert group.kl is None or group.kl.shape == (16,)
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
    assert model.reconstruct(batch).shape == (16, 784)
    codes = model.encode(batch)
    continuous = {name: code for name, code in codes.items() if code.is_floating_point()}
    assert continuous and set(continuous) <= set(terms.latents) and all(code.shape[0] == 16 for code in continuous.values())
    if "z" in continuous:  # a model with one code z of model.z_dim (the hierarchy sizes its layers by model.z_dims)
        assert codes["z"].shape == (16, 6)
    assert model.decode(codes).shape == (16, 784)
    if model.spec.label_code:
        assert model.label_grid(3).shape == (3, 10, 784)
        assert model.sample(4, labels=torch.tensor([1, 1, 2, 2])).shape == (4, 784)
    else:
        with pytest.raises(ValueError, match="does not generate given a label"):
            model.sample(2, labels=torch.tensor([0, 1]))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_iwae_with_one_draw_equals_the_elbo_on_the_same_points(name):
    """log (1/1) sum_points mass w = ELBO exactly when there is one point per draw; with enumerated
    labels (M2) it is the stratified bound, which is >= the ELBO on the same points (Jensen)."""
    torch.manual_seed(0)
    if "mlp" in MODELS[name].spec.nets:
        model = build_model(model_config(name, x_dim=30, z_dim=3, hidden=(16,))).double()
    else:
        model = build_model(model_config(name, image_shape=(6, 6), net="conv", channels=(4,))).double()
    x = torch.bernoulli(torch.full((5, model.config.x_dim), 0.4, dtype=torch.float64))
    terms = model(_batch(model, x, torch.randint(0, 10, (5,))), 1)
    mc_elbo = objectives.expectation(terms, objectives.log_weights(terms))
    if terms.log_mass is None:
        torch.testing.assert_close(objectives.iwae_bound(terms), mc_elbo)
    else:
        assert torch.all(objectives.iwae_bound(terms) >= mc_elbo - 1e-9)


def test_unknown_model_is_refused():
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="model.name"):
        set_key(cfg, "model.name", "nope")


def test_settings_of_another_model_are_refused_by_name():
    cfg = RunConfig()
    with pytest.raises(ConfigError, match="model.gen_weight: not a setting of model 'vae'"):
        set_key(cfg, "model.gen_weight", "0")
    set_key(cfg, "model.name", "cvae")
    with pytest.raises(ConfigError, match="model.class_weight: not a setting of model 'cvae'"):
        set_key(cfg, "model.class_weight", "3")
    set_key(cfg, "model.classes", "5")
    with pytest.raises(ConfigError, match="model.classes: not a setting of model 'vae'"):
        set_key(cfg, "model.name", "vae")  # would drop a setting the user gave


def test_legacy_config_json_still_loads(tmp_path):
    """Run directories written before per-model settings: M2's weights were objective settings and
    every model carried prior, posterior and classes."""
    legacy = RunConfig().to_dict()
    legacy["model"].update(name="ssvae", classes=10, z_dim=64)
    legacy["objective"].update(gen_weight=0.0, class_weight=100.0)
    (tmp_path / "config.json").write_text(json.dumps(legacy))
    cfg = load_json(tmp_path / "config.json")
    assert cfg.model.gen_weight == 0.0 and cfg.model.class_weight == 100.0 and not hasattr(cfg.objective, "gen_weight")
    old_vae = RunConfig().to_dict()
    old_vae["model"].update(classes=10)
    old_vae["objective"].update(gen_weight=1.0, class_weight=100.0)
    for key in ("net", "channels"):
        del old_vae["model"][key]
    (tmp_path / "vae.json").write_text(json.dumps(old_vae))
    assert load_json(tmp_path / "vae.json") == RunConfig()


def _run_dir(tmp_path, model, cfg):
    save_json(cfg, tmp_path / runs.CONFIG_FILE)
    runs.save_weights(tmp_path, model)
    return tmp_path


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_run_directory_alone_rebuilds_the_model(tmp_path, net):
    cfg = RunConfig()
    cfg.model.hidden, cfg.model.net = ((20,), net) if net == "mlp" else ((300, 300), net)
    model = build_model(cfg.model)
    _run_dir(tmp_path, model, cfg)
    loaded, loaded_cfg = runs.load_run(tmp_path)
    assert loaded_cfg == cfg
    x = torch.bernoulli(torch.rand(3, 784))
    torch.testing.assert_close(loaded.reconstruct({"x": x}), model.eval().reconstruct({"x": x}))


def test_checkpoint_holds_model_and_optimizer_state(tmp_path):
    model = build_model(model_config(hidden=(20,)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    objectives.loss(model({"x": torch.bernoulli(torch.rand(4, 784))})).loss.backward()
    opt.step()
    for step in (10, 20, 30, 40):
        path = checkpoints.save_checkpoint(tmp_path, model, opt, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000030.safetensors", "step-0000040.safetensors"]
    tensors = checkpoints.read_safetensors(path)
    fresh = torch.optim.Adam(build_model(model_config(hidden=(20,))).parameters(), lr=1e-3)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert metadata["step"] == "40"
    checkpoints.load_optimizer_tensors(fresh, tensors, metadata)
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
    model = build_model(model_config(hidden=(20,)))
    _run_dir(tmp_path, model, cfg)  # config says (300, 300)
    with pytest.raises(RunDirError, match="weights do not match config.json"):
        runs.load_run(tmp_path)


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunDirError, match="does not exist"):
        runs.load_run(tmp_path / "nope")
    with pytest.raises(RunDirError, match="not a vaelab run directory"):
        runs.load_run(tmp_path)


# --- A model that exists only in this file: the contract is all the rest of vaelab needs. ---


@dataclass
class ToyConfig(ModelConfig):
    scale_init: float = 1.0
    """Initial decoder scale."""


class ToyLinearGaussian(Model):
    """z ~ N(0, I), x | z ~ Bernoulli(logits = W z + b); q(z|x) = N(A x, diag s^2) with s learned per dimension."""

    Config = ToyConfig
    spec = ModelSpec(objectives=("elbo",), objective_settings=("k", "beta"))

    def __init__(self, cfg: ToyConfig):
        super().__init__(cfg)
        self.encode_mean = torch.nn.Linear(cfg.x_dim, cfg.z_dim)
        self.log_scale = torch.nn.Parameter(torch.zeros(cfg.z_dim))
        self.decoder = torch.nn.Linear(cfg.z_dim, cfg.x_dim)
        with torch.no_grad():
            self.decoder.weight.mul_(cfg.scale_init)

    def _q(self, x):
        return Independent(Normal(self.encode_mean(x), self.log_scale.exp()), 1)

    def _p(self):
        zeros = torch.zeros(self.config.z_dim, device=self.log_scale.device)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def terms(self, batch, k=1):
        x = batch["x"]
        q, p = self._q(x), self._p()
        z = q.rsample((k,))
        log_px = Independent(torch.distributions.Bernoulli(logits=self.decoder(z)), 1).log_prob(x)
        return Terms(log_px, {"z": LatentGroup(p.log_prob(z), q.log_prob(z))})

    def encode(self, batch):
        return {"z": self.encode_mean(batch["x"])}

    def decode(self, codes):
        return torch.sigmoid(self.decoder(codes["z"]))

    def sample_codes(self, n):
        return {"z": self._p().sample((n,))}


@pytest.fixture
def toy_registered():
    register_model("toy", ToyLinearGaussian)
    yield
    del MODELS["toy"]


def test_a_model_defined_in_a_test_trains_evaluates_samples_and_plots(toy_registered, tiny_data, tmp_path, capsys):
    run = tmp_path / "toy"
    base = ["--data-dir", str(tiny_data), "--device", "cpu"]
    assert main(["train", "vae", "--set", "model.name=toy", "--set", "model.scale_init=0.5", "--z-dim", "2", "--steps", "30",
                 "--log-every", "10", "--out", str(run), "--no-progress", *base]) == 0
    assert json.loads((run / "config.json").read_text())["model"]["scale_init"] == 0.5
    for protocol in ("cs236", "full"):
        assert main(["eval", str(run), "--protocol", protocol, "--iw", "1,10", "--json", *base]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["niwae_10"] <= result["niwae_1"] + 0.5 and result["kl_z"] == pytest.approx(result["kl"])
    assert result["active_units"] <= 2 and result["z_dim"] == 2
    assert main(["sample", str(run), "--n", "20", *base]) == 0
    for kind in ("interpolation", "traversal", "latents", "curves"):
        assert main(["plot", str(run), "--kind", kind, *base]) == 0
        assert (run / f"{kind}.png").stat().st_size > 0
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    # What the toy declares it does not support is refused by name, before anything is written.
    for flag, key in ((["--objective", "iwae", "--k", "5"], "objective.kind"), (["--free-bits", "0.5"], "objective.free_bits"),
                      (["--prior", "mog"], "model.prior")):
        out = tmp_path / f"refused-{key}"
        assert main(["train", "vae", "--set", "model.name=toy", "--steps", "5", "--out", str(out), *flag, *base]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0] and not out.exists()


@pytest.mark.parametrize("key, value", [("z_dim", -5), ("activation", "swish"), ("hidden", [1000000, 1000000])])
def test_eval_and_sample_validate_the_run_config(tmp_path, key, value):
    """A run directory's config.json is checked like a new one before any model is built from it."""
    cfg = RunConfig().to_dict()
    cfg["model"][key] = value
    (tmp_path / runs.CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match=f"config.json: .*model"):
        runs.load_run(tmp_path)
