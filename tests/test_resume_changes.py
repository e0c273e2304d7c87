"""`--resume` and an edited config.json: settings fixed for the run are refused by name with nothing
changed; the others are applied, recorded in history.jsonl, and leave the run's result as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vaelab.cli import main
from vaelab.training import files


def _copy(uninterrupted, tmp_path, at_step=None):
    """A copy of the uninterrupted run; with at_step, as if killed after its checkpoint at that step."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    if at_step is not None:
        for name in ("model.safetensors", "summary.json"):
            (run / name).unlink()
        for path in (run / "checkpoints").glob("step-*.safetensors"):
            if int(path.stem.removeprefix("step-")) > at_step:
                path.unlink()
    return run


def _edit(run, **changes):
    """Edit config.json as a user would: {"section__key": value}."""
    config = json.loads((run / "config.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))


def _snapshot(run):
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"}


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("changes, named", [
    ({"train__batch_size": 10}, "train.batch_size (20 -> 10)"),
    ({"train__lr": 0.01}, "train.lr (0.001 -> 0.01)"),
    ({"train__seed": 1}, "train.seed (0 -> 1)"),
    ({"objective__beta": 2.0}, "objective.beta (1.0 -> 2.0)"),
    ({"data__dataset": "fashion-mnist"}, 'data.dataset ("mnist" -> "fashion-mnist")'),
    ({"model__hidden": [8]}, "model.hidden ([16] -> [8])"),
    ({"train__batch_size": 10, "objective__beta": 4.0, "train__log_every": 5},
     "objective.beta (1.0 -> 4.0), train.batch_size (20 -> 10) since"),
])
def test_changes_fixed_for_the_run_are_refused_by_name_with_nothing_changed(uninterrupted, tmp_path, capsys, changes, named):
    run = _copy(uninterrupted, tmp_path, at_step=80)
    _edit(run, **changes)
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and "since the checkpoint at step 80" in err[0], err
    assert "cannot change mid-run" in err[0] and "log_every" not in err[0]  # an allowed change is not listed
    assert _snapshot(run) == before


def test_allowed_changes_are_applied_recorded_and_the_run_ends_identical(uninterrupted, tmp_path, capsys):
    run = _copy(uninterrupted, tmp_path, at_step=80)
    _edit(run, train__log_every=5, train__checkpoint_every=30, train__keep_checkpoints=2, train__threads=1, train__label="renamed")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _same_weights(uninterrupted, run)  # none of these changes what a step computes
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vaelab: resuming at step 80 with train.checkpoint_every 20 -> 30")
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["step"]) for h in history] == [("start", 0), ("resume", 80)]
    assert history[0]["config"]["train"]["log_every"] == 7
    assert history[1]["changes"] == {"train.checkpoint_every": [20, 30], "train.keep_checkpoints": [3, 2],
                                     "train.label": ["vae", "renamed"], "train.log_every": [7, 5], "train.threads": [0, 1]}
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-9:] == [77, 85, 90, 95, 100, 105, 110, 115, 120]  # logged every 5 steps after the resume
    assert sorted(p.name for p in (run / "checkpoints").glob("step-*")) == ["step-0000090.safetensors", "step-0000120.safetensors"]
    assert json.loads((run / "summary.json").read_text())["label"] == "renamed"
    # The next resume compares with the settings this one ran under, not those of the start; a resumable
    # setting may also be given as a flag.
    assert main(["train", "--resume", str(run), "--steps", "125", "--log-every", "7", "--no-progress"]) == 0
    last = json.loads((run / "history.jsonl").read_text().splitlines()[-1])
    assert last["changes"] == {"train.log_every": [5, 7], "train.steps": [120, 125]} and "config" not in last


def _strip_config(path):
    """A checkpoint as written before checkpoints recorded their config (still entered in the manifest)."""
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = {k: v for k, v in f.metadata().items() if k != "config"}
    save_file(tensors, str(path), metadata=metadata)
    files.record(path)


def test_checkpoints_without_a_config_are_compared_with_the_history_else_accepted_with_a_warning(uninterrupted, tmp_path, capsys):
    run = _copy(uninterrupted, tmp_path, at_step=80)
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        _strip_config(path)
    _edit(run, train__seed=3)
    before = _snapshot(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.seed (0 -> 3) since the run's last start (history.jsonl)" in err[0]
    assert _snapshot(run) == before
    _edit(run, train__seed=0)
    (run / "history.jsonl").unlink()  # a run from before the history: nothing to compare with
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not record the config they were written under" in err[0]
    assert _same_weights(uninterrupted, run)
    history = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert [h["event"] for h in history] == ["resume"] and history[0]["config"]["train"]["seed"] == 0


def test_a_run_killed_before_its_first_checkpoint_is_compared_with_its_start(uninterrupted, tmp_path, capsys):
    run = _copy(uninterrupted, tmp_path, at_step=0)
    _edit(run, train__lr=0.002)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "train.lr (0.001 -> 0.002) since the run's last start" in capsys.readouterr().err


def test_torchrun_processes_stop_with_the_signal_one_of_them_received():
    """A signal sent to one process only: at the next log step every process takes it as its own, so all
    stop with its name and exit code (signal.Signals(0) failed before)."""
    from vaelab.training.distributed import Context
    from vaelab.training.loop import StopRequest

    class TwoProcesses(Context):
        def max_int(self, value):
            return max(value, signal.SIGTERM)  # what the other process received

    stop = StopRequest()
    try:
        ctx = TwoProcesses(rank=1, world_size=2, device=torch.device("cpu"))
        assert stop.requested(ctx, 5, 10) == 0  # processes agree at log steps only
        assert signal.Signals(stop.requested(ctx, 10, 10)).name == "SIGTERM"
        assert stop.signum == 0  # what this process received is written by its handler only
    finally:
        stop.restore()
