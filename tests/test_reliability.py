"""Reliability: resumable runs (SIGKILL at any moment), exact continuation on CPU, safe errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from vaelab.cli import main
from vaelab.training.files import read_manifest

from conftest import RESUMABLE_TRAIN as TRAIN


def _weights(run):
    return load_file(str(run / "model.safetensors"))


def test_sigkilled_run_resumes_to_identical_weights(uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "vae", *TRAIN, "--data-dir", str(tiny_data), "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    # Killed once checkpoint 40 is in place and entered in the manifest (between the two a kill leaves an
    # unrecorded checkpoint, which resume rightly sets aside: tests/test_faults.py covers that case).
    while "checkpoints/step-0000040.safetensors" not in (read_manifest(run) or {}):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "model.safetensors").exists(), "the run finished before it could be killed"
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert all(name.endswith(".safetensors") for name in checkpoints)  # no temporary files left visible as checkpoints
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = _weights(uninterrupted), _weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    assert steps == [r["step"] for r in reference]  # re-done steps are logged once
    resumed = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in resumed] == pytest.approx([r["loss"] for r in reference], rel=1e-6)
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] >= 40


def test_resume_can_extend_a_finished_run(uninterrupted, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "already finished 120 of 120 steps" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "140", "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 140
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()][-5:] == [119, 120, 126, 133, 140]


def test_a_conv_run_with_channels_last_weights_resumes_to_identical_weights(tiny_data, tmp_path):
    """Checkpoints store contiguous tensors; the conv nets' weights are channels-last, and the fused Adam kernel
    reads moments in their parameter's memory order, so each moment must be given back its parameter's layout."""
    conv = ["vae", "--net", "conv", "--channels", "4,8", "--hidden", "16", "--z-dim", "3", "--batch-size", "20",
            "--seed", "0", "--device", "cpu", "--data-dir", str(tiny_data), "--no-progress"]
    assert main(["train", *conv, "--steps", "6", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *conv, "--steps", "3", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", "--resume", str(tmp_path / "split"), "--steps", "6", "--no-progress"]) == 0
    a, b = _weights(tmp_path / "whole"), _weights(tmp_path / "split")
    assert any(w.dim() == 4 and min(w.shape[:2]) > 1 for w in a.values())  # a weight whose two layouts differ
    assert a.keys() == b.keys() and [k for k in a if not torch.equal(a[k], b[k])] == []


@pytest.mark.parametrize("args, needle", [
    (["vae"], "drop vae"),
    (["--beta", "2"], "--beta"),
    (["--out", "elsewhere"], "--out"),
])
def test_resume_refuses_changes_to_the_saved_config(uninterrupted, capsys, args, needle):
    assert main(["train", "--resume", str(uninterrupted), *args]) == 1
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_resume_without_checkpoint_or_run(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "not a vaelab run directory" in capsys.readouterr().err
    assert main(["train"]) == 1
    assert "--out RUN_DIR" in capsys.readouterr().err


def _tiny_cfg(tiny_data, steps=30):
    from vaelab.training.config import load_preset

    cfg = load_preset("vae")
    cfg.train.steps, cfg.train.batch_size, cfg.train.log_every, cfg.train.checkpoint_every = steps, 20, 5, 10
    cfg.model.hidden, cfg.model.z_dim = (16,), 3
    cfg.data.data_dir, cfg.train.device = str(tiny_data), "cpu"
    cfg.train.threads = 1  # no step counted for the thread choice: _poison numbers steps by calls of training_loss
    return cfg


def _poison(monkeypatch, bad_steps):
    """Make the loss NaN at the given (1-based) steps of the next training run."""
    import vaelab.training.loop as train_mod

    real = train_mod.training_loss
    calls = {"n": 0}

    def poisoned(model, batch, cfg, beta):
        calls["n"] += 1
        out = real(model, batch, cfg, beta)
        if calls["n"] in bad_steps:
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(train_mod, "training_loss", poisoned)


def test_non_finite_steps_are_skipped_and_counted(tiny_data, tmp_path, monkeypatch):
    from vaelab.training.loop import train

    _poison(monkeypatch, {3, 4, 17})
    summary = train(_tiny_cfg(tiny_data), tmp_path / "run", progress=False)
    assert summary["skipped_steps"] == 3
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_steps"] for m in metrics] == [2, 2, 2, 3, 3, 3]
    assert all(m["loss"] == m["loss"] for m in metrics)  # NaN never reaches the logged means
    weights = _weights(tmp_path / "run")
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_too_many_non_finite_steps_stop_the_run_with_checkpoint_intact(tiny_data, tmp_path, monkeypatch, capsys):
    from vaelab.errors import TrainingDiverged
    from vaelab.training.loop import train

    _poison(monkeypatch, set(range(14, 100)))
    cfg = _tiny_cfg(tiny_data)
    cfg.train.max_nonfinite_steps = 4
    # Steps 14-17 reach the limit; the guard reads its counts at the next log (step 20), by then 7 in a row.
    with pytest.raises(TrainingDiverged, match=r"stopped at step 20: 7 consecutive steps .*max_nonfinite_steps is 4.*step-0000010.safetensors"):
        train(cfg, tmp_path / "run", progress=False)
    checkpoint = tmp_path / "run" / "checkpoints" / "step-0000010.safetensors"
    state = load_file(str(checkpoint))
    assert all(torch.isfinite(v.float()).all() for k, v in state.items() if k.startswith("model."))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_checkpoint_write_crash_keeps_the_last_good_one(tmp_path, monkeypatch):
    """A write that fails half-way (a full disk) is one RunDirError naming the file; the last good checkpoint,
    its manifest entry and nothing else stay, and no temporary file is left."""
    import vaelab.training.checkpoints as checkpoints_mod
    from vaelab.errors import RunDirError
    from vaelab.models import build_model, model_config
    from vaelab.training import files

    model = build_model(model_config(hidden=(8,)))
    opt = torch.optim.Adam(model.parameters())
    good = checkpoints_mod.save_checkpoint(tmp_path, model, opt, 10, keep=3)
    before = good.read_bytes()
    manifest = (tmp_path / "manifest.json").read_text()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints_mod, "save_file", crash)
    with pytest.raises(RunDirError, match=r"cannot write .*step-0000020.safetensors: No space left on device"):
        checkpoints_mod.save_checkpoint(tmp_path, model, opt, 20, keep=3)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-0000010.safetensors"]
    assert good.read_bytes() == before and (tmp_path / "manifest.json").read_text() == manifest
    assert checkpoints_mod.checkpoint_paths(tmp_path) == [good] and files.verify(good) is None


def test_two_process_data_parallel_matches_one_process(tiny_data, tmp_path):
    """torchrun with 2 CPU processes (gloo): same global batch and seed as one process, so the loss
    curves agree up to the z samples; only rank 0 writes."""
    args = ["train", "vae", "--steps", "60", "--batch-size", "40", "--hidden", "32", "--z-dim", "4", "--log-every", "10",
            "--checkpoint-every", "30", "--device", "cpu", "--no-progress", "--data-dir", str(tiny_data)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "vaelab", *args, "--out", str(tmp_path / "one")],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    multi = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                            "-m", "vaelab", *args, "--out", str(tmp_path / "two")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert multi.stdout.count("trained vae") == 1  # only rank 0 reports
    one = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(10, 61, 10))  # logged once, by rank 0
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 0.05 * a["loss"], (a["step"], a["loss"], b["loss"])
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000030.safetensors", "step-0000060.safetensors"]
    # The averaged gradients really reach rank 0's weights: they moved, and both runs ended finite.
    assert all(torch.isfinite(w).all() for w in _weights(tmp_path / "two").values())


def test_a_run_directory_in_use_is_refused(uninterrupted, tiny_data, tmp_path, capsys):
    """One process trains into a run directory at a time: a resume while another process holds it is
    one line naming the folder, and nothing in it changes."""
    import shutil

    from vaelab.training.runs import RunLock

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    held = RunLock(run)  # a second open file description: flock conflicts within one process too
    try:
        assert main(["train", "--resume", str(run), "--steps", "140", "--no-progress"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another vaelab process" in err[0] and str(os.getpid()) in err[0]
        assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before
    finally:
        held.release()
    assert main(["train", "--resume", str(run), "--steps", "140", "--no-progress"]) == 0  # released: resumable


def test_two_trainings_into_one_new_run_directory_one_wins(tiny_data, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    command = [sys.executable, "-m", "vaelab", "train", "vae", *TRAIN, "--data-dir", str(tiny_data), "--out", str(run)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(2)]
    results = [(proc.wait(timeout=300), proc.stderr.read().decode()) for proc in procs]
    assert sorted(code for code, _ in results) == [0, 1], results
    loser = next(err for code, err in results if code == 1).strip().splitlines()
    assert len(loser) == 1 and ("in use by another vaelab process" in loser[0] or "not empty" in loser[0])
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # one run's log, not two interleaved


def test_resume_finishes_a_run_killed_after_its_last_checkpoint(uninterrupted, tmp_path, capsys):
    """Killed after the final checkpoint, before model.safetensors, mid-append of a metrics line and with
    an atomic write's temporary file left behind: resume finishes the run instead of calling it done."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    for name in ("model.safetensors", "summary.json"):
        (run / name).unlink()
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 121, "loss": 9')  # cut short: no newline
    stale = run / "checkpoints" / ".step-0000120.safetensors.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = _weights(uninterrupted), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not stale.exists()
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines == (uninterrupted / "metrics.jsonl").read_text().splitlines()
    assert json.loads((run / "summary.json").read_text())["final"]["nelbo"] > 0
    capsys.readouterr()
    (run / "metrics.jsonl").write_text('{"step": 7}\nnot json\n{"step": 14}\n')  # damage inside the file is refused
    (run / "model.safetensors").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.jsonl: line 2 is not JSON" in err[0]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_write_a_checkpoint_and_resume_to_identical_weights(uninterrupted, tiny_data, tmp_path, signum):
    """Stopped before its first periodic checkpoint: the run writes one at the last whole step, says how
    to resume in one line, exits 128 + signal, and the resumed run ends with the uninterrupted weights."""
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    at = TRAIN.index("--checkpoint-every") + 1
    args = [*TRAIN[:at], "1000", *TRAIN[at + 1 :]]  # no periodic checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", "train", "vae", *args, "--data-dir", str(tiny_data), "--out", str(run)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signum)
    assert proc.wait(timeout=60) == 128 + signum
    err = proc.stderr.read().decode().strip().splitlines()
    assert len(err) == 1 and "checkpoint written" in err[0] and f"--resume {run}" in err[0], err
    if (run / "model.safetensors").exists():
        pytest.skip("the run finished before the signal arrived")
    assert list((run / "checkpoints").glob("step-*.safetensors"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    a, b = _weights(uninterrupted), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
