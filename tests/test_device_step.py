"""The training step without host reads (training/guard.py), the thread count chosen from a step's work
(training/threads.py), and the CUDA paths, which run where CUDA is present."""

from __future__ import annotations

import pytest
import torch

from vaelab.models import MODELS, build_model, model_config
from vaelab.training.config import load_preset
from vaelab.training.guard import NonFiniteGuard
from vaelab.training.config import TrainConfig
from vaelab.training.loop import train, training_loss
from vaelab.training.optimizers import make_optimizer
from vaelab.training.runs import inherit_from_source
from vaelab.training.threads import SMALL_STEP_FLOPS, auto_threads, step_flops

HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def _cfg(tiny_data, name: str, steps: int):
    cfg = load_preset(name)
    cfg.data.data_dir, cfg.train.device, cfg.train.steps, cfg.train.batch_size = str(tiny_data), "cpu", steps, 20
    cfg.train.log_every = cfg.train.checkpoint_every = steps  # one log and one checkpoint, at the end
    cfg.train.checkpoint_seconds = 0
    cfg.model.hidden, cfg.model.z_dim = (16,), 3
    if name == "ssvae":  # the cs236 labelled positions lie beyond the tiny data
        cfg.data.labelled, cfg.data.labels_per_class = "random", 2
    return cfg


def _count_host_reads(monkeypatch) -> dict:
    counts = {"n": 0}
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *args, _real=real, **kwargs):
            counts["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_reads_nothing_back_from_the_device_between_logs(name, tiny_data, tmp_path, monkeypatch):
    """A run of 40 steps makes exactly as many host reads (item, tolist, bool, ...) as a run of 10 with the
    same logs and checkpoints: nothing in a step, the model's forward included, waits for the device."""
    source = MODELS[name].spec.starts_from
    if source is not None:  # a second stage trains from a finished run of its first
        train(_cfg(tiny_data, source, 2), tmp_path / "source", progress=False)
    reads = []
    for steps in (10, 40):
        cfg = _cfg(tiny_data, name, steps)
        if source is not None:
            inherit_from_source(cfg, tmp_path / "source")
            cfg.data.data_dir = str(tiny_data)
        counts = _count_host_reads(monkeypatch)
        train(cfg, tmp_path / f"run-{steps}", progress=False)
        reads.append(counts["n"])
        monkeypatch.undo()
    assert reads[0] == reads[1], f"{name}: {reads[0]} host reads in 10 steps, {reads[1]} in 40"


def _guarded_steps(flags: list[bool], fused: bool):
    torch.manual_seed(0)
    model = build_model(model_config(x_dim=6, z_dim=2, hidden=(4,)))
    optimizer = make_optimizer(model, TrainConfig(lr=1e-2), torch.device("cpu")) if fused else torch.optim.Adam(model.parameters(), 1e-2)
    guard = NonFiniteGuard(optimizer, torch.device("cpu"))
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    for ok in flags:
        torch.manual_seed(1)  # the same draws every step, skipped or not
        loss = training_loss(model, {"x": x}, load_preset("vae"), 1.0).loss
        optimizer.zero_grad()
        (loss if ok else loss * float("nan")).backward()
        guard.step(torch.tensor(ok))
    return model, optimizer, guard


@pytest.mark.parametrize("fused", [True, False])
def test_a_skipped_step_changes_no_parameter_moment_or_step_count(fused):
    """Fused Adam given found_inf = 1 (or the fallback's host check) leaves the model and Adam exactly as
    if the poisoned steps had never been taken; the guard counts them."""
    flags = [True, False, False, True, False, True]
    model, optimizer, guard = _guarded_steps(flags, fused)
    clean, clean_optimizer, _ = _guarded_steps([f for f in flags if f], fused)
    for a, b in zip(model.parameters(), clean.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(optimizer.state.values(), clean_optimizer.state.values()):
        assert int(a["step"]) == int(b["step"]) == 3
        assert torch.equal(a["exp_avg"], b["exp_avg"]) and torch.equal(a["exp_avg_sq"], b["exp_avg_sq"])
    assert guard.read() == (3, 3, 2)  # good steps, skipped steps, longest run of skipped steps
    guard.new_interval()
    assert guard.read() == (0, 3, 0)  # the streak ended with a good step


def test_step_flops_leaves_rng_and_gradients_as_they_were():
    model = build_model(model_config(x_dim=784, z_dim=10, hidden=(300, 300)))
    x = torch.bernoulli(torch.full((100, 784), 0.3))
    torch.manual_seed(3)
    state = torch.get_rng_state()
    flops = step_flops(model, {"x": x}, lambda m, batch: training_loss(m, batch, load_preset("vae"), 1.0).loss)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(p.grad is None for p in model.parameters())
    # Forward and backward of the two MLPs: ~6 flops per weight per image (2 forward, 4 backward).
    weights = sum(p.numel() for p in model.parameters() if p.dim() == 2)
    assert 0.8 * 6 * weights * 100 < flops < 1.5 * 6 * weights * 100


def test_thread_count_follows_the_work_in_a_step(tiny_data, tmp_path):
    assert auto_threads(int(SMALL_STEP_FLOPS) - 1, cores=8) == 1
    assert auto_threads(int(SMALL_STEP_FLOPS), cores=8) == 8
    # The tiny test model's step is far below the limit: it trains on one thread, and counting the step's
    # work leaves the run bit-identical to one given --threads 1.
    auto = train(_cfg(tiny_data, "vae", 10), tmp_path / "auto", progress=False)
    cfg = _cfg(tiny_data, "vae", 10)
    cfg.train.threads = 1
    pinned = train(cfg, tmp_path / "pinned", progress=False)
    assert auto["threads"] == pinned["threads"] == 1
    assert auto["final"] == pinned["final"]
    assert (tmp_path / "auto" / "model.safetensors").read_bytes() == (tmp_path / "pinned" / "model.safetensors").read_bytes()


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_training_synchronises_only_at_logs(tiny_data, tmp_path, cuda_graphs):
    """torch's sync debug mode warns at each operation that waits for the GPU: a run of 40 steps must
    warn as often as a run of 10 with the same logs and checkpoints, eager or captured (train.cuda_graphs,
    whose capture synchronises once a run)."""
    import warnings

    counts = []
    for steps in (10, 40):
        cfg = _cfg(tiny_data, "vae", steps)
        cfg.train.device, cfg.train.cuda_graphs = "cuda", cuda_graphs
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train(cfg, tmp_path / f"run-{steps}", progress=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts.append(sum("synchroniz" in str(w.message) for w in caught))
    assert counts[0] == counts[1], f"{counts[0]} synchronisations in 10 steps, {counts[1]} in 40"


@needs_cuda
def test_cuda_training_and_evaluation_agree_with_the_cpu(tiny_data, tmp_path):
    """The same run on CUDA and on the CPU: finite, and its evaluation on either device within 1e-3 nats
    (CUDA's reductions sum in another order, so bit-identical repeats are a CPU guarantee only)."""
    from vaelab.evaluation import evaluate
    from vaelab.training.runs import load_run
    from vaelab import data

    cfg = _cfg(tiny_data, "vae", 20)
    cfg.train.device = "cuda"
    summary = train(cfg, tmp_path / "run", progress=False)
    assert all(v == v for v in summary["final"].values())
    results = {}
    for device in ("cpu", "cuda"):
        model, _ = load_run(tmp_path / "run", device=device)
        results[device] = evaluate(model, data.load("mnist", "test", tiny_data, device), iws=(1, 10), seed=0)
    for key in ("nelbo", "niwae_10"):
        assert abs(results["cpu"][key] - results["cuda"][key]) < 1e-3


def test_evaluation_precision_is_a_setting_with_float32_bounds(tiny_data, tmp_path):
    """bf16 products move the bounds by little (log-weights and logsumexp stay float32); tf32 is refused
    on the CPU in one line naming the option; an unknown precision is refused."""
    from vaelab import data
    from vaelab.errors import ConfigError
    from vaelab.evaluation import evaluate
    from vaelab.training.runs import load_run

    train(_cfg(tiny_data, "vae", 20), tmp_path / "run", progress=False)
    model, _ = load_run(tmp_path / "run")
    test = data.load("mnist", "test", tiny_data)
    full = evaluate(model, test, iws=(1, 10), precision="fp32")
    half = evaluate(model, test, iws=(1, 10), precision="bf16")
    assert half["precision"] == "bf16" and full["precision"] == "fp32"
    for key in ("nelbo", "niwae_10"):
        assert half[key] != full[key]  # the setting reaches the networks
        assert abs(half[key] - full[key]) < 0.01 * abs(full[key])
    with pytest.raises(ConfigError, match="--precision tf32: TensorFloat-32 is a CUDA format"):
        evaluate(model, test, iws=(1,), precision="tf32")
    with pytest.raises(ConfigError, match="--precision: unknown precision 'fp8'"):
        evaluate(model, test, iws=(1,), precision="fp8")
