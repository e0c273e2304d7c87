"""Speed settings (docs/performance.md): fused Adam, threads, bf16 mixed precision, torch.compile.
Each must leave the numbers what they were, within rounding."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from vaelab import data, objectives
from vaelab.training.config import RunConfig, load_preset, validate
from vaelab.errors import ConfigError
from vaelab.evaluation import evaluate
from vaelab.models import build_model, model_config
from vaelab.training.runs import load_run
from vaelab.training.config import TrainConfig
from vaelab.training.loop import train
from vaelab.training.optimizers import make_optimizer


def _cfg(tiny_data, name="vae", steps=20, **train_settings) -> RunConfig:
    cfg = load_preset(name)
    cfg.data.data_dir, cfg.train.device, cfg.train.steps = str(tiny_data), "cpu", steps
    cfg.train.log_every, cfg.train.checkpoint_every = 10, steps
    for key, value in train_settings.items():
        setattr(cfg.train, key, value)
    return cfg


def test_adam_is_fused_on_cpu_and_matches_the_foreach_update():
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=16, z_dim=2, hidden=(8,)))
    twin = build_model(model_config(x_dim=16, z_dim=2, hidden=(8,)))
    twin.load_state_dict(model.state_dict())
    fused, plain = make_optimizer(model, TrainConfig(lr=1e-3), torch.device("cpu")), torch.optim.Adam(twin.parameters(), lr=1e-3)
    assert fused.defaults["fused"] is True
    x = torch.bernoulli(torch.rand(8, 16))
    for net, opt in ((model, fused), (twin, plain)):
        for _ in range(3):
            torch.manual_seed(1)
            loss = -objectives.log_weights(net({"x": x})).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_threads_setting_is_applied_restored_and_validated(tiny_data, tmp_path):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert train(_cfg(tiny_data, threads=1), tmp_path / "run", progress=False)["threads"] == 1
        assert torch.get_num_threads() == 2  # the session's own setting again after the run
    finally:
        torch.set_num_threads(before)
    cfg = _cfg(tiny_data, threads=-1)
    with pytest.raises(ConfigError, match="train.threads"):
        validate(cfg)


def test_bf16_mixed_precision_trains_with_float32_densities(tiny_data, tmp_path):
    summary = train(_cfg(tiny_data, precision="bf16"), tmp_path / "run", progress=False)
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final"].values())
    model, _ = load_run(tmp_path / "run", torch.device("cpu"))
    x = torch.bernoulli(torch.rand(4, 784))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model({"x": x}, 3)
        assert model.decoder(terms.log_px_z.new_zeros(1, 10)).dtype == torch.bfloat16  # the nets do run in bf16
    assert terms.log_px_z.dtype == terms.log_qz.dtype == terms.log_pz.dtype == torch.float32
    # The bf16 forward bounds the same model as the fp32 one, to within bf16 rounding of the networks.
    torch.manual_seed(0)
    full = model({"x": x}, 3).log_px_z
    assert (terms.log_px_z - full).abs().max() < 0.02 * full.abs().max()
    with pytest.raises(ConfigError, match="train.precision"):
        validate(_cfg(tiny_data, precision="fp8"))


needs_compiler = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                    reason="torch.compile on CPU needs a C compiler")


@needs_compiler
def test_compiled_training_keeps_parameter_names_and_resumable_checkpoints(tiny_data, tmp_path):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    summary = train(_cfg(tiny_data, steps=6, compile=True), tmp_path / "run", progress=False)
    # One eager step first, then the whole objective compiles as a single graph, without breaks.
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    assert all(torch.isfinite(torch.tensor(v)) for v in summary["final"].values())
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["compile"] is True
    model, _ = load_run(tmp_path / "run", torch.device("cpu"))  # plain names: no _orig_mod prefixes
    assert "encoder.0.weight" in model.state_dict()



@needs_compiler
def test_compiled_evaluation_gives_the_eager_numbers_and_leaves_the_model_alone(tiny_data):
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=784, z_dim=4, hidden=(32,)))
    test = data.load("mnist", "test", tiny_data)
    eager = evaluate(model, test, "full", iws=(1, 10), seed=3)
    compiled = evaluate(model, test, "full", iws=(1, 10), seed=3, compile=True)
    assert compiled["compiled"] is True and eager["compiled"] is False
    for key in ("nelbo", "kl", "rec", "niwae_1", "niwae_10", "niwae_10_sem"):
        assert compiled[key] == pytest.approx(eager[key], rel=1e-5), key
    assert model._compiled_call_impl is None  # the model itself is not compiled in place


def test_gradient_check_flags_any_non_finite_entry():
    from vaelab.training.loop import gradients_finite

    params = [torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5)), torch.nn.Parameter(torch.zeros(2))]
    params[0].grad, params[1].grad = torch.randn(3, 4) * 1e3, torch.randn(5)  # the third has no gradient
    assert bool(gradients_finite(params))
    for bad in (float("nan"), float("inf"), -float("inf")):
        params[1].grad[2] = bad
        assert not bool(gradients_finite(params)), bad
    params[1].grad[2] = 0.0
    params[0].grad[0, 0], params[0].grad[1, 1] = float("inf"), -float("inf")  # inf - inf: nan, still flagged
    assert not bool(gradients_finite(params))
    assert bool(gradients_finite([torch.nn.Parameter(torch.zeros(2))]))  # no gradients at all
