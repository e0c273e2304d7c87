"""The training protocol: validation on held-out training images, the best weights, early stopping, learning-rate
schedules, optimisers, averaged weights, and their exact resumption after kill -9."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vaelab.cli import main
from vaelab.data.formats import read_idx, write_idx
from vaelab.training.files import read_manifest

from conftest import TINY_TRAIN, rewrite_checkpoint, write_tiny_mnist

# 600 tiny training images, the last 100 held out: 500 trained on, 25 steps of 20 an epoch.
HELD_OUT, BATCH = 100, 20
PER_EPOCH = (TINY_TRAIN - HELD_OUT) // BATCH
TINY = ["--batch-size", str(BATCH), "--hidden", "16", "--z-dim", "3", "--device", "cpu", "--threads", "1", "--no-progress"]
VALIDATING = ["--validation", str(HELD_OUT), "--eval-every", "5"]


def _train(data, run, *args) -> int:
    return main(["train", "vae", *TINY, "--data-dir", str(data), "--out", str(run), *args])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _validations(run: Path) -> list[dict]:
    return [r for r in _records(run) if "validation_nelbo" in r]


def _steps_logged(run: Path) -> list[dict]:
    return [r for r in _records(run) if "loss" in r]


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _scripted_bounds(monkeypatch, bounds):
    """Validations return these NELBOs in turn (and the real bound after them): early stopping, the best weights
    and the plateau schedule then act on a known sequence."""
    from vaelab.training import validation

    real, calls = validation.Validation.bound, []

    def scripted(self, model):
        calls.append(1)
        if len(calls) > len(bounds):
            return real(self, model)
        return {"nelbo": bounds[len(calls) - 1], "kl": 0.0, "rec": bounds[len(calls) - 1]}

    monkeypatch.setattr(validation.Validation, "bound", scripted)
    return calls


# ---------------------------------------------------------------- validation
def test_held_out_images_never_reach_the_optimiser(tiny_data, tmp_path):
    """Two data roots that differ only in the last 100 training images train to bit-identical weights with those
    images held out, and give different validation bounds: the images are validated on, never trained on."""
    changed = write_tiny_mnist(tmp_path / "changed")
    images_file = changed / "mnist" / "train-images-idx3-ubyte"
    images = read_idx(images_file)
    images[-HELD_OUT:] = 255 - images[-HELD_OUT:]
    write_idx(images_file, images)
    assert not np.array_equal(images, read_idx(tiny_data / "mnist" / "train-images-idx3-ubyte"))

    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(tiny_data, a, "--steps", "40", *VALIDATING) == 0
    assert _train(changed, b, "--steps", "40", *VALIDATING) == 0
    assert _same_tensors(load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors")))
    va, vb = _validations(a), _validations(b)
    assert [r["step"] for r in va] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all(abs(x["validation_nelbo"] - y["validation_nelbo"]) > 1 for x, y in zip(va, vb))
    # Held out: an epoch is the 500 images left, and the run says so.
    assert _summary(a)["epochs"] == pytest.approx(40 / PER_EPOCH, abs=1e-3)


def test_the_best_weights_are_those_of_the_best_validation(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    bounds = [9.0, 7.0, 8.0, 6.5, 6.6, 7.5]  # the best is the fourth validation, step 20
    _scripted_bounds(monkeypatch, bounds)
    assert _train(tiny_data, run, "--steps", "30", *VALIDATING, "--checkpoint-every", "5",
                  "--set", "train.keep_checkpoints=100") == 0
    with safe_open(str(run / "best.safetensors"), "pt") as f:
        metadata = f.metadata()
    assert metadata["step"] == "20" and float(metadata["bound"]) == 6.5 and metadata["validation"] == "nelbo"
    at_20 = {k[len("model."):]: v for k, v in load_file(str(run / "checkpoints" / "step-0000020.safetensors")).items()
             if k.startswith("model.")}
    assert _same_tensors(load_file(str(run / "best.safetensors")), at_20)
    assert "best.safetensors" in read_manifest(run)
    records = _validations(run)
    assert [r["validation_nelbo"] for r in records] == bounds
    assert [r["validation_best"] for r in records] == [9.0, 7.0, 7.0, 6.5, 6.5, 6.5]
    summary = _summary(run)
    assert summary["validation"]["best"] == 6.5 and summary["validation"]["best_step"] == 20
    assert summary["stopped"] == "budget" and summary["steps"] == 30


def test_the_best_weights_give_the_recorded_validation_bound_and_eval_reads_them(tiny_data, tmp_path, capsys):
    from vaelab import data as data_mod
    from vaelab.training.runs import load_run_weights
    from vaelab.training.validation import Validation, split_validation

    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "30", *VALIDATING, "--set", "train.validation_iw=3") == 0
    records = _validations(run)
    best = min(records, key=lambda r: r["validation_niwae_3"])  # chosen by IWAE-3, the bound asked for
    model, cfg, weights = load_run_weights(run)
    assert weights["weights"] == "best.safetensors" and weights["step"] == best["step"]
    _, held_out = split_validation(data_mod.load_for(cfg.data, "train", torch.device("cpu")), cfg)
    again = Validation(held_out, cfg, 5).bound(model)
    assert again["niwae_3"] == pytest.approx(best["validation_niwae_3"], rel=1e-6)
    assert again["nelbo"] == pytest.approx(best["validation_nelbo"], rel=1e-6)

    capsys.readouterr()
    assert main(["eval", str(run), "--protocol", "full", "--iw", "1", "--json"]) == 0
    out = capsys.readouterr()
    assert f"best validation bound, from step {best['step']}" in out.err
    assert json.loads(out.out)["computed_on"]["weights"] == "best.safetensors"
    assert main(["eval", str(run), "--protocol", "full", "--iw", "1", "--json", "--weights", "final", "--no-save"]) == 0
    assert json.loads(capsys.readouterr().out)["computed_on"]["weights"] == "model.safetensors"


def test_early_stopping_after_exactly_patience_validations(tiny_data, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    # Best at the 2nd validation (step 10); 3 without a better bound: stops at the 5th, step 25.
    calls = _scripted_bounds(monkeypatch, [5.0, 4.0, 4.0, 4.5, 4.1, 3.0, 2.0])
    assert _train(tiny_data, run, "--steps", "200", *VALIDATING, "--patience", "3") == 0
    assert len(calls) == 5
    summary = _summary(run)
    assert summary["stopped"] == "early stopping" and summary["steps"] == 25
    assert summary["validation"] == {"bound": "nelbo", "best": 4.0, "best_step": 10, "validations": 5, "since_best": 3,
                                     "patience": 3}
    assert _steps_logged(run)[-1]["step"] <= 25
    capsys.readouterr()
    # Resuming a run that stopped early is refused in one line, unless the patience grows.
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "stopped early at step 25" in err and "train.patience" in err and len(err.strip().splitlines()) == 1
    assert main(["train", "--resume", str(run), "--patience", "5", "--no-progress"]) == 0
    # The 6th scripted bound (3.0) is better, the 7th (2.0) too; then the real bounds, far above: 5 more stop it.
    summary = _summary(run)
    assert summary["stopped"] == "early stopping" and summary["validation"]["best"] == 2.0
    assert summary["validation"]["best_step"] == 35 and summary["steps"] == 35 + 5 * 5


# ---------------------------------------------------------------- schedules and optimisers
def _reference_lrs(schedule: str, steps: int, lr: float, **options) -> list[float]:
    """The learning rate after each of `steps` steps, from torch's own schedulers stepped by hand."""
    from torch.optim import lr_scheduler

    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    warmup = options.get("warmup", 0)
    if schedule == "step":
        main_schedule = lr_scheduler.StepLR(optimizer, step_size=options["lr_step"], gamma=options["lr_decay"])
    elif schedule == "exponential":
        main_schedule = lr_scheduler.ExponentialLR(optimizer, gamma=options["lr_decay"] ** (1 / options["lr_step"]))
    elif schedule == "multistep":
        main_schedule = lr_scheduler.MultiStepLR(optimizer, [m - warmup for m in options["milestones"]], gamma=options["lr_decay"])
    else:
        main_schedule = lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup, eta_min=options.get("lr_min", 0.0))
    if warmup:
        ramp = lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=warmup)
        main_schedule = lr_scheduler.SequentialLR(optimizer, [ramp, main_schedule], milestones=[warmup])
    lrs = []
    for _ in range(steps):
        optimizer.step()
        main_schedule.step()
        lrs.append(optimizer.param_groups[0]["lr"])
    return lrs


SCHEDULES = {
    "step": (["--lr-schedule", "step", "--set", "train.lr_step=7", "--set", "train.lr_decay=0.5"],
             {"lr_step": 7, "lr_decay": 0.5}),
    "exponential": (["--lr-schedule", "exponential", "--set", "train.lr_step=10", "--set", "train.lr_decay=0.1"],
                    {"lr_step": 10, "lr_decay": 0.1}),
    "multistep": (["--lr-schedule", "multistep", "--set", "train.lr_milestones=[12,20]", "--set", "train.lr_decay=0.3",
                   "--warmup", "5"], {"milestones": [12, 20], "lr_decay": 0.3, "warmup": 5}),
    "cosine": (["--lr-schedule", "cosine", "--set", "train.lr_min=1e-5"], {"lr_min": 1e-5}),
    "cosine-warmup": (["--lr-schedule", "cosine", "--warmup", "8"], {"warmup": 8}),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_schedule_matches_torch_step_for_step(tiny_data, tmp_path, name):
    args, options = SCHEDULES[name]
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "30", "--log-every", "1", "--lr", "0.002", *args) == 0
    logged = [r["lr"] for r in _steps_logged(run)]
    assert logged == _reference_lrs(name.split("-")[0], 30, 0.002, **options)
    if name == "exponential":  # and the closed form: lr decay^(t / lr_step)
        assert logged == pytest.approx([0.002 * 0.1 ** (t / 10) for t in range(1, 31)], rel=1e-9)
    if name == "cosine-warmup":
        assert logged[0] == pytest.approx(0.002 * (1 / 8 + 7 / 8 / 8), rel=1e-9)  # linear from lr / 8 ...
        assert logged[7] == pytest.approx(0.002, rel=1e-9) and logged[-1] == pytest.approx(0.0, abs=1e-12)  # ... then cosine to 0


def test_the_plateau_schedule_decays_on_the_validation_bound(tiny_data, tmp_path, monkeypatch):
    from torch.optim import lr_scheduler

    bounds = [5.0, 4.0, 4.0, 4.2, 3.0, 3.5, 3.4, 3.3, 3.2, 3.1]
    _scripted_bounds(monkeypatch, bounds)
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "50", *VALIDATING, "--lr-schedule", "plateau",
                  "--set", "train.lr_plateau_patience=2", "--set", "train.lr_decay=0.5") == 0
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    reference = lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.5, patience=1)
    expected = []
    for bound in bounds:
        reference.step(bound)
        expected.append(optimizer.param_groups[0]["lr"])
    assert [r["lr"] for r in _validations(run)] == expected
    assert expected[-1] < 1e-3 / 2  # it decayed, more than once


@pytest.mark.parametrize("optimizer, kind", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("adamax", torch.optim.Adamax)])
def test_each_optimiser_trains_and_is_the_one_asked_for(tiny_data, tmp_path, optimizer, kind):
    from vaelab.models import build_model
    from vaelab.training.config import load_json
    from vaelab.training.optimizers import make_optimizer

    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "20", "--optimizer", optimizer, "--set", "train.weight_decay=0.01") == 0
    cfg = load_json(run / "config.json")
    built = make_optimizer(build_model(cfg.model), cfg.train, torch.device("cpu"))
    assert type(built) is kind and built.param_groups[0]["weight_decay"] == 0.01
    assert math.isfinite(_summary(run)["final"]["loss"])


def test_epochs_decide_the_number_of_steps(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--epochs", "2", *VALIDATING) == 0
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 2 * PER_EPOCH
    assert _summary(run)["steps"] == 2 * PER_EPOCH and _summary(run)["epochs"] == 2
    run = tmp_path / "by-epoch"
    assert _train(tiny_data, run, "--epochs", "3", *VALIDATING[:2], "--eval-every", "1", "--set", "train.eval_unit=epochs") == 0
    assert [r["step"] for r in _validations(run)] == [PER_EPOCH, 2 * PER_EPOCH, 3 * PER_EPOCH]
    assert [r["epoch"] for r in _validations(run)] == [1, 2, 3]


# ---------------------------------------------------------------- averaged weights
def test_the_weight_average_follows_its_formula():
    from vaelab.training.optimizers import WeightAverage

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    average = WeightAverage(model, 0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        average.update()
        expected = [0.9 * e + 0.1 * p.detach() for e, p in zip(expected, model.parameters())]
    for e, a in zip(expected, average.model.parameters()):
        torch.testing.assert_close(a, e, rtol=1e-6, atol=1e-7)
    model(torch.randn(8, 4))  # the batch-norm statistics move in the trained model ...
    average.sync_buffers()  # ... and are copied, not averaged
    assert all(torch.equal(a, b) for a, b in zip(average.model.buffers(), model.buffers()))


def test_the_run_keeps_and_validates_the_averaged_weights(tiny_data, tmp_path):
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "10", "--ema-decay", "0.8", *VALIDATING, "--checkpoint-every", "1",
                  "--set", "train.keep_checkpoints=100") == 0

    def checkpoint(step):
        return load_file(str(run / "checkpoints" / f"step-{step:07d}.safetensors"))

    for step in range(2, 11):  # each step: w_avg <- 0.8 w_avg + 0.2 w, with w the step's new weights
        before, after = checkpoint(step - 1), checkpoint(step)
        for key in (k for k in after if k.startswith("state.ema.")):
            trained = after["model." + key[len("state.ema."):]]
            torch.testing.assert_close(after[key], 0.8 * before[key] + 0.2 * trained, rtol=1e-6, atol=1e-7)
    final = load_file(str(run / "model.safetensors"))
    averaged = {k[len("state.ema."):]: v for k, v in checkpoint(10).items() if k.startswith("state.ema.")}
    assert all(torch.equal(final[k], averaged[k]) for k in averaged)
    assert not all(torch.equal(final[k], checkpoint(10)["model." + k]) for k in averaged)


# ---------------------------------------------------------------- exact resumption
PROTOCOLS = {
    "adamax-cosine-ema": ["--optimizer", "adamax", "--lr-schedule", "cosine", "--warmup", "10", "--ema-decay", "0.9",
                          *VALIDATING, "--patience", "50"],
    "adam-plateau-iwae": ["--lr-schedule", "plateau", "--set", "train.lr_plateau_patience=1", "--set", "train.lr_decay=0.5",
                          *VALIDATING, "--set", "train.validation_iw=3"],
}
RESUMED = ["--steps", "60", "--log-every", "3", "--checkpoint-every", "10", "--set", "train.keep_checkpoints=100"]


@pytest.fixture(scope="module", params=list(PROTOCOLS))
def protocol_reference(request, tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("protocol") / request.param
    assert _train(tiny_data, run, *RESUMED, *PROTOCOLS[request.param]) == 0
    return run


def _assert_same_run(a: Path, b: Path) -> None:
    for name in ("model.safetensors", "best.safetensors"):
        assert _same_tensors(load_file(str(a / name)), load_file(str(b / name))), name
    with safe_open(str(a / "best.safetensors"), "pt") as f, safe_open(str(b / "best.safetensors"), "pt") as g:
        assert f.metadata() == g.metadata()
    strip = lambda records: [{k: v for k, v in r.items() if k not in ("seconds", "images_per_second")} for r in records]
    assert strip(_records(a)) == strip(_records(b))
    keep = ("steps", "final", "stopped", "validation")
    assert {k: _summary(a)[k] for k in keep} == {k: _summary(b)[k] for k in keep}


@pytest.mark.parametrize("killed_after", [0, 10, 30, 50, 60])
def test_a_run_killed_at_any_checkpoint_resumes_bit_identically(protocol_reference, tmp_path, killed_after):
    """A kill -9 leaves the checkpoints up to some step, and perhaps a best.safetensors written after it: the
    resumed run ends with the same final and best weights, metrics and summary."""
    run = tmp_path / "run"
    shutil.copytree(protocol_reference, run)
    for name in ("model.safetensors", "summary.json"):
        (run / name).unlink()
    if killed_after in (10, 50):  # the best weights of the last validation before the kill, or none at all
        (run / "best.safetensors").unlink()
    for path in (run / "checkpoints").iterdir():
        if int(path.stem.split("-")[1]) > killed_after:
            path.unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    _assert_same_run(protocol_reference, run)


def test_sigkill_during_a_validating_run_resumes_bit_identically(protocol_reference, tiny_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "vae", *TINY, *RESUMED, *PROTOCOLS[protocol_reference.name],
                             "--data-dir", str(tiny_data), "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while "checkpoints/step-0000030.safetensors" not in (read_manifest(run) or {}):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    _assert_same_run(protocol_reference, run)


# ---------------------------------------------------------------- settings refused in one line
@pytest.mark.parametrize("args, needle", [
    (["--lr-schedule", "plateau"], "train.lr_schedule"),
    (["--patience", "3"], "train.patience"),
    (["--eval-every", "5"], "train.eval_every"),
    (["--validation", "100"], "data.validation"),
    (["--validation", "590", "--eval-every", "5"], "data.validation"),
    (["--set", "train.lr_step=5"], "train.lr_step"),
    (["--lr-schedule", "multistep"], "train.lr_milestones"),
    (["--ema-decay", "1"], "train.ema_decay"),
    (["--set", "train.validation_iw=1", *VALIDATING], "train.validation_iw"),
])
def test_protocol_settings_that_cannot_work_are_refused(tiny_data, tmp_path, capsys, args, needle):
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "10", *args) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not run.exists()


def test_resume_refuses_a_new_length_under_the_cosine_schedule(tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_data, run, "--steps", "20", "--lr-schedule", "cosine") == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "40", "--no-progress"]) == 1
    assert "train.steps" in capsys.readouterr().err


def test_validations_before_patience_from_never_count_towards_early_stopping(tiny_data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    # Worse and worse until step 20 (not counted), then 9 (1), 4 (best), 5 (1), 6 (2): stops at step 40.
    _scripted_bounds(monkeypatch, [5.0, 6.0, 7.0, 8.0, 9.0, 4.0, 5.0, 6.0, 1.0])
    assert _train(tiny_data, run, "--steps", "200", *VALIDATING, "--patience", "2", "--set", "train.patience_from=25") == 0
    summary = _summary(run)
    assert summary["stopped"] == "early stopping" and summary["steps"] == 40
    assert summary["validation"]["best_step"] == 30 and summary["validation"]["best"] == 4.0


@pytest.mark.parametrize("normalize", [False, True])
def test_gradient_normalisation_gives_each_gradient_unit_norm(tiny_data, tmp_path, monkeypatch, normalize):
    from vaelab.training import guard

    norms, real = [], guard.NonFiniteGuard.step

    def step(self, ok):
        norms.append([float(p.grad.norm()) for group in self.optimizer.param_groups for p in group["params"] if p.grad is not None])
        return real(self, ok)

    monkeypatch.setattr(guard.NonFiniteGuard, "step", step)
    assert _train(tiny_data, tmp_path / "run", "--steps", "3", *(["--set", "train.grad_normalize=true"] if normalize else [])) == 0
    flat = [n for step_norms in norms for n in step_norms]
    assert len(norms) == 3 and flat
    if normalize:
        assert flat == pytest.approx([1.0] * len(flat), abs=1e-5)
    else:
        assert max(abs(n - 1) for n in flat) > 0.1




def _schedule_state(edit):
    def change(meta):
        state = json.loads(meta["lr_schedule"])
        edit(state)
        return {**meta, "lr_schedule": json.dumps(state)}
    return change


def _first_ema(tensors):
    return next(k for k in sorted(tensors) if k.startswith("state.ema."))


PROTOCOL_DAMAGE = {
    "schedule a step behind": dict(metadata=_schedule_state(lambda s: s.update(last_epoch=s["last_epoch"] - 1))),
    "schedule not JSON": dict(metadata=lambda m: {**m, "lr_schedule": "{"}),
    "schedule missing": dict(metadata=lambda m: {k: v for k, v in m.items() if k != "lr_schedule"}),
    "lr beyond the peak": dict(metadata=lambda m: {**m, "param_groups": m["param_groups"].replace('"lr": ', '"lr": 1', 1)}),
    "validation count off": dict(metadata=lambda m: {**m, "validation": m["validation"].replace('"count": 10', '"count": 11')}),
    "validation missing": dict(metadata=lambda m: {k: v for k, v in m.items() if k != "validation"}),
    "averaged weight of another shape": dict(tensors=lambda t: {**t, _first_ema(t): t[_first_ema(t)][:1].clone()}),
    "averaged weight NaN": dict(tensors=lambda t: {**t, _first_ema(t): t[_first_ema(t)] * math.nan}),
    "averaged weights missing": dict(tensors=lambda t: {k: v for k, v in t.items() if not k.startswith("state.ema.")}),
}


@pytest.mark.parametrize("damage", PROTOCOL_DAMAGE)
def test_a_checkpoint_whose_protocol_state_cannot_be_trusted_is_damaged(tiny_data, tmp_path, capsys, damage):
    """The schedule, the averaged weights and the validation state are checked like the rest of a checkpoint:
    the damaged one is set aside with a warning, and the run resumes from the older one to the same weights."""
    reference, run = tmp_path / "reference", tmp_path / "run"
    settings = ["--steps", "60", "--checkpoint-every", "10", "--set", "train.keep_checkpoints=100", "--ema-decay", "0.9",
                "--lr-schedule", "cosine", "--warmup", "10", *VALIDATING]
    assert _train(tiny_data, reference, *settings) == 0
    assert _train(tiny_data, run, *settings) == 0
    (run / "manifest.json").unlink()  # only the contents can tell
    for name in ("model.safetensors", "summary.json"):
        (run / name).unlink()
    for path in (run / "checkpoints").iterdir():
        if int(path.stem.split("-")[1]) > 50:
            path.unlink()
    rewrite_checkpoint(run / "checkpoints" / "step-0000050.safetensors", **PROTOCOL_DAMAGE[damage])
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "step-0000050.safetensors: damaged" in err, err
    assert (run / "checkpoints" / "step-0000050.safetensors.damaged").is_file()
    assert _same_tensors(load_file(str(reference / "model.safetensors")), load_file(str(run / "model.safetensors")))
