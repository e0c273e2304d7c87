"""The files of a run directory: symbolic links inside it, checkpoint contents that must not be trusted,
checkpoint names past seven digits, and readers (sample, eval) beside a trainer that rotates checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from harness import (NEWEST, SMALL, case, killed_after_final_checkpoint, one_line_error, recovers, reference, rewrite,
                     snapshot)


def _tree(folder: Path) -> dict:
    """snapshot() plus links and the lock file: everything that could change under `folder`."""
    out = {str(p.relative_to(folder)): os.readlink(p) for p in folder.rglob("*") if p.is_symlink()}
    out.update(snapshot(folder))
    lock = folder / ".lock"
    if lock.is_file() and not lock.is_symlink():
        out[".lock"] = lock.read_text()
    return out


def _linked(p, name: str, member: str, finished: bool = False) -> tuple[Path, Path]:
    """A copy of the reference run whose `member` is a link to the same thing in another copy (the victim)."""
    folder = p.fresh(name)
    victim = folder / "other-run"
    shutil.copytree(reference(p), victim)
    if finished:
        run = folder / "run"
        shutil.copytree(reference(p), run)
    else:
        run = killed_after_final_checkpoint(p, name + "-run")
    target = victim / member
    if not target.exists():
        target.write_text("the other run's own file\n")
    if (run / member).is_dir() and not (run / member).is_symlink():
        shutil.rmtree(run / member)
    else:
        (run / member).unlink(missing_ok=True)
    (run / member).symlink_to(target, target_is_directory=target.is_dir())
    return run, victim


def _refused_and_untouched(p, run: Path, victim: Path, *command) -> tuple[bool, str]:
    before = _tree(victim)
    ok, detail = one_line_error(p.run(*command), "is a symbolic link")
    changed = sorted(k for k in before.keys() | _tree(victim).keys() if before.get(k) != _tree(victim).get(k))
    return ok and not changed, f"{detail}; other run changed: {changed[:5]}"


# ---------------------------------------------------------------- symbolic links inside a run directory
@case("symlinks", "--resume of a run whose .lock is a link to a file outside it")
def _(p):
    run, victim = _linked(p, "lock-link", ".lock")
    return _refused_and_untouched(p, run, victim, "train", "--resume", run, "--no-progress")


@case("symlinks", "--resume of a run whose checkpoints/ is a link to another run's (with a manifest)")
def _(p):
    run, victim = _linked(p, "checkpoints-link", "checkpoints")
    # The run's own manifest disagrees with the other run's files: they used to be renamed *.damaged.
    (run / "manifest.json").write_text(json.dumps({"files": {}}))
    return _refused_and_untouched(p, run, victim, "train", "--resume", run, "--steps", "80", "--no-progress")


@case("symlinks", "--resume of a run whose checkpoints/ is a link to another run's (no manifest)")
def _(p):
    run, victim = _linked(p, "checkpoints-link-legacy", "checkpoints")
    (run / "manifest.json").unlink()  # they used to be resumed from and pruned
    return _refused_and_untouched(p, run, victim, "train", "--resume", run, "--steps", "80", "--no-progress")


for _member in ("metrics.jsonl", "manifest.json", "tensorboard", "config.json"):
    @case("symlinks", f"--resume of a run whose {_member} is a link to another run's")
    def _(p, member=_member):
        run, victim = _linked(p, "member-link", member)
        return _refused_and_untouched(p, run, victim, "train", "--resume", run, "--steps", "80", "--no-progress")


@case("symlinks", "--resume of a run whose newest checkpoint is a link to another run's")
def _(p):
    run, victim = _linked(p, "checkpoint-link", NEWEST)
    return _refused_and_untouched(p, run, victim, "train", "--resume", run, "--no-progress")


@case("symlinks", "eval of a run whose model.safetensors is a link to another run's")
def _(p):
    run, victim = _linked(p, "weights-link", "model.safetensors", finished=True)
    return _refused_and_untouched(p, run, victim, "eval", run, "--device", "cpu")


@case("symlinks", "sample of a run whose checkpoints/ is a link to another run's")
def _(p):
    run, victim = _linked(p, "sample-checkpoints-link", "checkpoints")
    return _refused_and_untouched(p, run, victim, "sample", run, "--out", run.parent / "samples.png")


# ---------------------------------------------------------------- nothing a checkpoint holds is trusted
def _groups(**changes):
    def edit(meta):
        groups = json.loads(meta["param_groups"])
        groups[0].update(changes)
        return {**meta, "param_groups": json.dumps(groups)}
    return dict(metadata=edit)


def _adam_step(value):
    return dict(tensors=lambda t: {k: value(v) if k.startswith("optim.") and k.endswith(".step") else v for k, v in t.items()})


TRUST = {
    "lr 0.5": _groups(lr=0.5),
    "lr 'abc'": _groups(lr="abc"),
    "weight decay 1e6": _groups(weight_decay=1e6),
    "maximize=True": _groups(maximize=True),
    "betas (0.5, 0.5)": _groups(betas=[0.5, 0.5]),
    "eps 1.0": _groups(eps=1.0),
    "amsgrad=True": _groups(amsgrad=True),
    "an Adam step of 1e30": _adam_step(lambda v: torch.full_like(v, 1e30)),
    "an Adam step tensor of shape (3,)": _adam_step(lambda v: v.repeat(3)),
    "a foreign RNG state": dict(tensors=lambda t: {**t, "state.rng_cpu": torch.randint(0, 256, t["state.rng_cpu"].shape,
                                                                                       dtype=torch.uint8, generator=torch.Generator().manual_seed(1))}),
}
for _name, _damage in TRUST.items():
    @case("checkpoint-trust", f"--resume from a checkpoint holding {_name} (no manifest)")
    def _(p, damage=_damage):
        run = killed_after_final_checkpoint(p, "trust")
        (run / "manifest.json").unlink()
        rewrite(run / NEWEST, **damage)
        return recovers(p, run, "damaged")


def _renamed(run: Path, old: int, new: int) -> None:
    """checkpoints/step-OLD renamed to step-NEW, its metadata step with it."""
    src = run / f"checkpoints/step-{old:07d}.safetensors"
    rewrite(src, metadata=lambda m: {**m, "step": str(new)})
    src.rename(run / f"checkpoints/step-{new:07d}.safetensors")


@case("checkpoint-trust", "--resume picks step 10,000,000 over 9,999,999 (names sorted as numbers)")
def _(p):
    run = killed_after_final_checkpoint(p, "numeric-sort")
    (run / "manifest.json").unlink()
    _renamed(run, 40, 9_999_999)
    _renamed(run, 60, 10_000_000)
    # The newest is past --steps: the one line names the step it took.
    return one_line_error(p.run("train", "--resume", run, "--no-progress"), "is at step 10000000")


@case("checkpoint-trust", "sample of a run whose config.json builds other shapes than its weights")
def _(p):
    run = p.fresh("shapes") / "run"
    shutil.copytree(reference(p), run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["hidden"] = [64]
    (run / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run)
    ok, detail = one_line_error(p.run("sample", run, "--out", run.parent / "s.png"),
                                "encoder.0.weight has shape (32, 784), config.json builds (64, 784)")
    return ok and snapshot(run) == before, detail


# ---------------------------------------------------------------- readers beside a trainer
PRUNE_AFTER_LISTING = """
from vaelab.training import checkpoints
_pin, _done = checkpoints.pin, []
def _pruning_pin(path, run_dir=None):
    if not _done and path.name.startswith("step-"):
        _done.append(path)
        path.unlink()  # a trainer prunes it between the reader's listing and its open
    return _pin(path, run_dir)
checkpoints.pin = _pruning_pin
"""


@case("readers", "sample of a run whose newest checkpoint is pruned between listing and reading")
def _(p):
    run = killed_after_final_checkpoint(p, "pruned-while-listed")
    done = p.run("sample", run, "--out", run.parent / "s.png", prelude=PRUNE_AFTER_LISTING)
    ok = done.returncode == 0 and done.stderr.strip() == "" and not (run / NEWEST).exists()
    return ok, f"exit {done.returncode}; stderr: {done.stderr.strip()[:300]}"


LOAD_LOOP = """
import sys, time
from vaelab.training.runs import load_run_weights
from vaelab.errors import VaelabError
steps = []
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        steps.append(load_run_weights(sys.argv[1])[2]["step"])
    except VaelabError as exc:
        print(f"vaelab: error: {exc}", file=sys.stderr)
print(len(steps), len(set(steps)))
"""


def _rotating_run(p, name: str):
    """A training that writes a checkpoint every step and keeps one, started and running: (process, run)."""
    run = p.fresh(name) / "run"
    args = [*SMALL[:1], "100000", *SMALL[2:]]
    args[args.index("--checkpoint-every") + 1] = "1"
    proc = p.popen("train", "vae", *args, "--set", "train.keep_checkpoints=1", "--out", run)
    while not (run / "checkpoints").is_dir() or not any((run / "checkpoints").glob("step-*.safetensors")):
        if proc.poll() is not None:
            raise RuntimeError(f"training ended early: {proc.stderr.read().strip()}")
        time.sleep(0.01)
    return proc, run


def _stop(proc) -> str:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.stderr.read()


@case("readers", "vaelab sample in a loop beside a training with checkpoint_every 1, keep_checkpoints 1")
def _(p):
    proc, run = _rotating_run(p, "race-sample")
    results = []
    try:
        for i in range(8):
            results.append(p.run("sample", run, "--out", run.parent / f"s{i}.png"))
    finally:
        trainer = _stop(proc)
    failed = [r.stderr.strip()[-200:] for r in results if r.returncode != 0 or r.stderr.strip()]
    ckpts = len(list((run / "checkpoints").glob("step-*.safetensors")))
    ok = not failed and "Traceback" not in trainer and ckpts >= 1
    return ok, f"{len(results)} samples, {len(failed)} with an error, traceback or warning {failed[:2]}; trainer stderr: {trainer.strip()[-200:]}"


@case("readers", "load_run_weights in a loop for 20 s beside a training with checkpoint_every 1, keep_checkpoints 1")
def _(p):
    proc, run = _rotating_run(p, "race-load")
    try:
        done = subprocess.run([sys.executable, "-c", LOAD_LOOP, str(run), "20"], env=p.env, capture_output=True, text=True,
                              timeout=300)
    finally:
        trainer = _stop(proc)
    reads, distinct = (done.stdout.split() + ["0", "0"])[:2]
    ok = done.returncode == 0 and done.stderr.strip() == "" and int(reads) > 0 and "Traceback" not in trainer
    return ok, (f"{reads} reads of {distinct} different checkpoints, exit {done.returncode}; "
                f"stderr: {done.stderr.strip()[:300]}")
