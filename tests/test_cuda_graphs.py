"""The captured training step (train.cuda_graphs, training/captured.py).

On the CPU: what cannot be captured is refused in one line before anything is written, and the step's
plumbing (static batch and KL weight, outputs rewritten in place, eager warm-up, resume) is checked with the
graph replaced by running the step again, which must train exactly as the eager loop does. Where CUDA is
present: the real graph trains as the eager step does within the stated tolerances, the non-finite guard
still skips a bad step inside it, every model captures, and a run killed with SIGKILL resumes to the
uninterrupted run's weights (that it synchronises with the host only at logs: tests/test_device_step.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest
import torch
from safetensors.torch import load_file

from vaelab.cli import main
from vaelab.errors import ConfigError, TrainingDiverged, TrainingInterrupted
from vaelab.models import MODELS
from vaelab.training import captured
from vaelab.training.batches import Batches
from vaelab.training.files import read_manifest
from vaelab.training.loop import train
from vaelab.training.runs import inherit_from_source
from vaelab.training.stopping import StopRequest

from conftest import killed_copy
from test_device_step import _cfg

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TINY = ["--steps", "5", "--batch-size", "20", "--hidden", "16", "--z-dim", "3", "--no-progress"]


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def _metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _captured_cfg(tiny_data, name="vae", steps=30, device="cpu", **train_settings):
    cfg = _cfg(tiny_data, name, steps)
    cfg.train.device, cfg.train.cuda_graphs, cfg.train.log_every = device, True, 5
    cfg.train.threads = 1  # no step drawn to count the thread choice: each call of Batches.next is a step
    for key, value in train_settings.items():
        setattr(cfg.train, key, value)
    return cfg


def _poison_batches(monkeypatch, bad_steps):
    """NaN pixels in the batches of the given (1-based) steps: data, so the NaN reaches a captured graph too
    (patching Python code inside the step would change nothing once the graph is captured)."""
    real = Batches.next
    calls = {"n": 0}

    def poisoned(self):
        calls["n"] += 1
        batch = real(self)
        if calls["n"] in bad_steps:
            batch["x"] = torch.full_like(batch["x"], float("nan"))
        return batch

    monkeypatch.setattr(Batches, "next", poisoned)


# ---------------------------------------------------------------- refusals (CPU)

@pytest.mark.parametrize("settings, needle", [
    ([], "train.cuda_graphs: captures the training step as a CUDA graph, which needs a CUDA device (this run's device is cpu)"),
    (["train.compile=true"], "train.compile: cannot be combined with train.cuda_graphs"),
    (["train.optimizer=adamax"], "train.optimizer: train.cuda_graphs needs adam or adamw"),
    (["train.lr_schedule=cosine"], "train.lr_schedule: train.cuda_graphs captures the learning rate as a constant"),
    (["train.lr_warmup_steps=10"], "train.lr_warmup_steps: train.cuda_graphs captures the learning rate as a constant"),
])
def test_what_cannot_be_captured_is_one_line_before_anything_is_written(tiny_data, tmp_path, capsys, settings, needle):
    out = tmp_path / "run"
    sets = [arg for s in ["train.cuda_graphs=true", *settings] for arg in ("--set", s)]
    assert main(["train", "vae", *TINY, "--device", "cpu", *sets, "--data-dir", str(tiny_data), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto is cuda here")
def test_device_auto_without_cuda_is_refused_too(tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        train(_captured_cfg(tiny_data, device="auto"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_torchrun_is_refused():
    with pytest.raises(ConfigError, match=r"train.cuda_graphs: not supported with torchrun \(2 processes\)"):
        captured.check_device(torch.device("cuda"), 2)


def test_a_captured_run_resumed_without_cuda_is_refused_and_may_turn_it_off(uninterrupted, tmp_path, capsys):
    """train.cuda_graphs may change on resume (it changes how a step runs, not what it computes): a captured run
    resumes on a machine without CUDA once config.json turns it off."""
    run = killed_copy(uninterrupted, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["train"]["cuda_graphs"] = True
    (run / "config.json").write_text(json.dumps(config))
    before = sorted(p.name for p in run.rglob("*"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.cuda_graphs" in err[0] and "CUDA" in err[0]
    assert sorted(p.name for p in run.rglob("*")) == before
    config["train"]["cuda_graphs"] = False
    (run / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0


# ---------------------------------------------------------------- the plumbing, with the graph simulated (CPU)

@pytest.fixture
def simulated_graph(monkeypatch):
    """CapturedStep on the CPU: streams are no-ops, and "capturing" makes a graph whose replay runs the step again
    and writes its results into the first replay's output tensors, as a real graph rewrites its static outputs.
    Returns the counts of eager (warm-up) steps and captures."""
    counts = {"eager": 0, "captures": 0}
    stream = types.SimpleNamespace(wait_stream=lambda other: None)
    monkeypatch.setattr(captured, "check_device", lambda device, processes: None)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: stream)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    real_eager = captured.CapturedStep._eager

    def eager(self):
        counts["eager"] += 1
        return real_eager(self)

    def capture(self):
        counts["captures"] += 1

        def replay():
            fresh = self.step(self.batch, self.beta)
            if self.outputs is None:
                self.outputs = fresh
            else:
                for static, value in zip(_tensors(self.outputs), _tensors(fresh), strict=True):
                    static.copy_(value)

        self.graph = types.SimpleNamespace(replay=replay)

    monkeypatch.setattr(captured.CapturedStep, "_eager", eager)
    monkeypatch.setattr(captured.CapturedStep, "_capture", capture)
    return counts


def _tensors(outputs) -> list:
    """The tensors of a step's outputs, (LossOutput, weight), in a fixed order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if dataclasses.is_dataclass(outputs):
        outputs = [getattr(outputs, f.name) for f in dataclasses.fields(outputs)]
    elif isinstance(outputs, dict):
        outputs = [outputs[key] for key in sorted(outputs)]
    return [t for item in outputs for t in _tensors(item)]


def _logged(run):
    return [{k: v for k, v in m.items() if k not in ("seconds", "images_per_second")} for m in _metrics(run)]


def _same_weights(a, b) -> bool:
    a, b = _weights(a), _weights(b)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_simulated_captured_step_trains_exactly_as_the_eager_loop(tiny_data, tmp_path, simulated_graph):
    """Static batch, the KL weight as a tensor (annealed here), outputs read after each replay: on the CPU the same
    arithmetic as the eager loop, so the same weights and logs, bit for bit."""
    for mode in ("eager", "captured"):
        cfg = _captured_cfg(tiny_data, cuda_graphs=mode == "captured")
        cfg.objective.kl_warmup_steps = 12
        train(cfg, tmp_path / mode, progress=False)
    assert simulated_graph == {"eager": captured.WARMUP_STEPS, "captures": 1}
    assert _same_weights(tmp_path / "eager", tmp_path / "captured")
    assert _logged(tmp_path / "eager") == _logged(tmp_path / "captured")


def test_the_simulated_captured_step_skips_poisoned_batches_and_resumes(tiny_data, tmp_path, monkeypatch, simulated_graph):
    """NaN batches at a warm-up step and at replayed ones are skipped and counted as in the eager loop; a run
    stopped after step 16 (SIGTERM's checkpoint) resumes with a new warm-up and capture to the same weights."""
    bad = {2, 9, 10, 23}
    for mode in ("eager", "captured"):
        _poison_batches(monkeypatch, bad)
        summary = train(_captured_cfg(tiny_data, cuda_graphs=mode == "captured"), tmp_path / mode, progress=False)
        assert summary["skipped_steps"] == 4
        assert [m["skipped_steps"] for m in _metrics(tmp_path / mode)] == [1, 3, 3, 3, 4, 4]
    assert _same_weights(tmp_path / "eager", tmp_path / "captured")
    _poison_batches(monkeypatch, bad)  # counted afresh: calls of Batches.next are steps, across the resume too
    stopping = {"at": 16}
    monkeypatch.setattr(StopRequest, "requested", lambda self, ctx, step, *_: signal.SIGTERM if step == stopping["at"] else 0)
    with pytest.raises(TrainingInterrupted, match="SIGTERM at step 16"):
        train(_captured_cfg(tiny_data), tmp_path / "resumed", progress=False)
    stopping["at"] = None
    assert train(_captured_cfg(tiny_data), tmp_path / "resumed", progress=False, resume=True)["skipped_steps"] == 4
    assert simulated_graph == {"eager": 3 * captured.WARMUP_STEPS, "captures": 3}
    assert _same_weights(tmp_path / "captured", tmp_path / "resumed")
    assert _logged(tmp_path / "captured") == _logged(tmp_path / "resumed")


# ---------------------------------------------------------------- the real graph (CUDA)

@needs_cuda
@pytest.mark.parametrize("settings, tolerance", [({}, 1e-4), ({"kl_warmup_steps": 20}, 1e-4), ({"precision": "bf16"}, 1e-2)])
def test_captured_training_matches_the_eager_step(tiny_data, tmp_path, settings, tolerance):
    """60 steps eager and captured from the same seed: every logged loss within `tolerance` (relative) and every
    final weight within 10 x `tolerance` (absolute). Both run the same kernels on the same random numbers, so they
    should agree to rounding; CUDA promises no bitwise repeats, hence a tolerance."""
    runs = {}
    for mode in ("eager", "captured"):
        cfg = _captured_cfg(tiny_data, steps=60, device="cuda", cuda_graphs=mode == "captured")
        if "kl_warmup_steps" in settings:
            cfg.objective.kl_warmup_steps = settings["kl_warmup_steps"]
        cfg.train.precision = settings.get("precision", "fp32")
        train(cfg, tmp_path / mode, progress=False)
        runs[mode] = tmp_path / mode
    eager, graph = _metrics(runs["eager"]), _metrics(runs["captured"])
    assert [m["step"] for m in eager] == [m["step"] for m in graph]
    assert [m["loss"] for m in graph] == pytest.approx([m["loss"] for m in eager], rel=tolerance)
    a, b = _weights(runs["eager"]), _weights(runs["captured"])
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=10 * tolerance)


@needs_cuda
@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_captures_and_trains_as_eager(name, tiny_data, tmp_path):
    """Each model's step captures (nothing in it reads back to the host or changes shape) and its final logged
    loss is the eager one within 1e-3 (relative)."""
    source = MODELS[name].spec.starts_from
    if source is not None:
        train(_cfg(tiny_data, source, 2), tmp_path / "source", progress=False)
    finals = []
    for mode in ("eager", "captured"):
        cfg = _captured_cfg(tiny_data, name, steps=12, device="cuda", cuda_graphs=mode == "captured")
        if source is not None:
            inherit_from_source(cfg, tmp_path / "source")
            cfg.data.data_dir = str(tiny_data)
        finals.append(train(cfg, tmp_path / mode, progress=False)["final"])
    assert finals[1]["loss"] == pytest.approx(finals[0]["loss"], rel=1e-3)


@needs_cuda
def test_the_guard_skips_non_finite_steps_inside_the_graph(tiny_data, tmp_path, monkeypatch):
    """NaN batches at a warm-up step and at replayed steps: skipped and counted, as in the eager loop
    (tests/test_reliability.py), with finite weights; and too many in a row still stop the run."""
    _poison_batches(monkeypatch, {2, 9, 10, 23})
    summary = train(_captured_cfg(tiny_data, device="cuda"), tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 4
    metrics = _metrics(tmp_path / "run")
    assert [m["skipped_steps"] for m in metrics] == [1, 3, 3, 3, 4, 4]
    assert all(m["loss"] == m["loss"] for m in metrics)
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "run").values())
    monkeypatch.undo()
    _poison_batches(monkeypatch, set(range(14, 100)))
    cfg = _captured_cfg(tiny_data, device="cuda", max_nonfinite_steps=4, checkpoint_every=10)
    with pytest.raises(TrainingDiverged, match="stopped at step 20: 7 consecutive steps"):
        train(cfg, tmp_path / "diverged", progress=False)


def _checkpoint_steps(manifest: dict) -> list[int]:
    """The steps of the checkpoints a run's manifest records (the older ones are removed as training goes on)."""
    return [int(name[len("checkpoints/step-"):-len(".safetensors")]) for name in manifest if name.startswith("checkpoints/step-")]


@needs_cuda
def test_a_sigkilled_captured_run_resumes_to_the_uninterrupted_weights(tiny_data, tmp_path):
    """vaelab train --set train.cuda_graphs=true, killed with SIGKILL once a middle checkpoint is recorded, then
    resumed (warm-up and capture again): its weights are the uninterrupted captured run's within 1e-4 and
    its logged steps the same. 5,000 short steps, so that the kill lands while it trains."""
    args = ["--steps", "5000", "--batch-size", "20", "--hidden", "16", "--z-dim", "3", "--log-every", "50",
            "--checkpoint-every", "250", "--device", "cuda", "--no-progress", "--set", "train.cuda_graphs=true",
            "--set", "train.checkpoint_seconds=0", "--data-dir", str(tiny_data)]
    assert main(["train", "vae", *args, "--out", str(tmp_path / "uninterrupted")]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "vae", *args, "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while max(_checkpoint_steps(read_manifest(run) or {}), default=0) < 500:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists(), "the run finished before it could be killed"
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = _weights(tmp_path / "uninterrupted"), _weights(run)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-4)
    assert [m["step"] for m in _metrics(run)] == [m["step"] for m in _metrics(tmp_path / "uninterrupted")]
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] >= 500
