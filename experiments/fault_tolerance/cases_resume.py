"""config.json edited before --resume, infinite and absurd values, list settings, and torchrun's edge cases:
a signal to one process, a locked or refused --resume under two processes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness import SMALL, Probe, case, one_line_error, reference, same_weights, snapshot


def _mid_run(p: Probe, name: str, at_step: int = 20) -> Path:
    """The reference run as if killed after its checkpoint at `at_step`."""
    run = p.fresh(name) / "run"
    shutil.copytree(reference(p), run)
    for file in ("model.safetensors", "summary.json"):
        (run / file).unlink()
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        if int(path.stem.removeprefix("step-")) > at_step:
            path.unlink()
    return run


def _edit(run: Path, **changes) -> None:
    config = json.loads((run / "config.json").read_text())
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    (run / "config.json").write_text(json.dumps(config, indent=2))


def _history(run: Path) -> list[dict]:
    path = run / "history.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


# ---------------------------------------------------------------- config.json edited before --resume
FIXED = {
    "batch size and beta": ({"train__batch_size": 25, "objective__beta": 2.0}, ["train.batch_size (50 -> 25)", "objective.beta (1.0 -> 2.0)"]),
    "the learning rate": ({"train__lr": 0.01}, ["train.lr (0.001 -> 0.01)"]),
    "the seed": ({"train__seed": 7}, ["train.seed (0 -> 7)"]),
    "the dataset": ({"data__dataset": "fashion-mnist"}, ['data.dataset ("mnist" -> "fashion-mnist")']),
    "the hidden widths": ({"model__hidden": [64]}, ["model.hidden ([32] -> [64])"]),
}
for _name, (_changes, _named) in FIXED.items():
    @case("resume-config", f"config.json changes {_name} before --resume: refused by name, nothing changed")
    def _(p, changes=_changes, named=_named):
        run = _mid_run(p, "fixed-change")
        _edit(run, **changes)
        before = snapshot(run)
        ok, detail = one_line_error(p.run("train", "--resume", run, "--no-progress"), "cannot change mid-run")
        ok = ok and all(n in detail for n in named) and snapshot(run) == before
        return ok, f"{detail}; unchanged {snapshot(run) == before}"


@case("resume-config", "config.json changes log_every, checkpoint_every, keep_checkpoints: applied, recorded, same weights")
def _(p):
    run = _mid_run(p, "allowed-change")
    _edit(run, train__log_every=15, train__checkpoint_every=25, train__keep_checkpoints=5)
    done = p.run("train", "--resume", run, "--no-progress")
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = (_history(run) or [{}])[-1]
    ok = (done.returncode == 0 and "Traceback" not in done.stderr and same_weights(reference(p), run)
          and steps == [10, 20, 30, 45, 60] and last.get("event") == "resume" and last.get("step") == 20
          and last.get("changes") == {"train.checkpoint_every": [20, 25], "train.keep_checkpoints": [3, 5], "train.log_every": [10, 15]})
    return ok, f"exit {done.returncode}, identical weights {done.returncode == 0 and same_weights(reference(p), run)}, " \
               f"logged at {steps}; history {last.get('changes')}; stderr {done.stderr.strip()[:200]}"


@case("resume-config", "--resume --steps extends a finished run: recorded in history.jsonl")
def _(p):
    run = p.fresh("extend") / "run"
    shutil.copytree(reference(p), run)
    done = p.run("train", "--resume", run, "--steps", "70", "--no-progress")
    last = (_history(run) or [{}])[-1]
    ok = done.returncode == 0 and last.get("changes") == {"train.steps": [60, 70]} and last.get("step") == 60
    return ok, f"exit {done.returncode}; history {last}; stderr {done.stderr.strip()[:200]}"


def _strip_configs(run):
    """The run's checkpoints as written before checkpoints recorded their config (still entered in the manifest)."""
    from vaelab.training import files

    for path in (run / "checkpoints").glob("step-*.safetensors"):
        with safe_open(str(path), "pt") as f:
            metadata = {k: v for k, v in f.metadata().items() if k != "config"}
        save_file(load_file(str(path)), str(path), metadata=metadata)
        files.record(path)


@case("resume-config", "checkpoints without a recorded config: compared with the history's start")
def _(p):
    run = _mid_run(p, "legacy-with-history")
    _strip_configs(run)
    _edit(run, train__batch_size=25)
    before = snapshot(run)
    ok, detail = one_line_error(p.run("train", "--resume", run, "--no-progress"), "since the run's last start")
    return ok and "train.batch_size (50 -> 25)" in detail and snapshot(run) == before, detail


@case("resume-config", "checkpoints without a recorded config and no history: accepted with one warning")
def _(p):
    run = _mid_run(p, "legacy")
    _strip_configs(run)
    (run / "history.jsonl").unlink()
    done = p.run("train", "--resume", run, "--no-progress")
    lines = done.stderr.strip().splitlines()
    ok = (done.returncode == 0 and len(lines) == 1 and "do not record the config" in lines[0] and same_weights(reference(p), run)
          and "config" in (_history(run) or [{}])[0])
    return ok, f"exit {done.returncode}; stderr {lines}"


# ---------------------------------------------------------------- values checked when read
VALUES = {
    "--lr inf": (["--lr", "inf"], "train.lr: must be a finite number"),
    "--beta inf": (["--beta", "inf"], "objective.beta: must be a finite number"),
    "--free-bits inf": (["--free-bits", "inf"], "objective.free_bits: must be a finite number"),
    "--decoder-variance 1e-300": (["--likelihood", "gaussian", "--decoder-variance", "1e-300"], "model.decoder_variance: must be in [1e-06, 1e+06]"),
    "--lr 100": (["--lr", "100"], "train.lr: must be > 0 and <= 10"),
    "--set train.lr=nan": (["--set", "train.lr=nan"], "train.lr: must be a finite number"),
    "--set train.checkpoint_seconds=inf": (["--set", "train.checkpoint_seconds=inf"], "train.checkpoint_seconds: must be a finite number"),
    "--set model.hidden=[32": (["--set", "model.hidden=[32"], "model.hidden: unbalanced brackets"),
}
for _name, (_args, _needle) in VALUES.items():
    @case("values", f"{_name}: refused when read, nothing written")
    def _(p, args=_args, needle=_needle):
        run = p.fresh("value") / "run"
        ok, detail = one_line_error(p.run("train", "vae", *SMALL, *args, "--out", run), needle)
        return ok and not run.exists(), f"{detail}; run directory created {run.exists()}"


@case("values", "config.json holding Infinity / NaN: --resume and eval refuse it naming the file")
def _(p):
    run = _mid_run(p, "config-infinity")
    text = (run / "config.json").read_text()
    (run / "config.json").write_text(re.sub(r'"beta": [0-9.e+-]+', '"beta": Infinity', text))
    before = snapshot(run)
    resumed, r_detail = one_line_error(p.run("train", "--resume", run, "--no-progress"), "config.json: objective.beta: must be a finite number")
    (run / "config.json").write_text(re.sub(r'"lr": [0-9.e+-]+', '"lr": NaN', text))
    evaluated, e_detail = one_line_error(p.run("eval", run, "--device", "cpu"), "train.lr: must be a finite number")
    return resumed and evaluated and snapshot(run).keys() == before.keys(), f"{r_detail}; {e_detail}"


@case("values", "--set model.hidden=[32,32] (and '(16, 16)', '8,8'): read as a list")
def _(p):
    from vaelab.training.config import RunConfig, set_key

    forms = {}
    for text in ("(16, 16)", "8,8", "[]"):
        cfg = RunConfig()
        set_key(cfg, "model.hidden", text)
        forms[text] = cfg.model.hidden
    run = p.fresh("list-setting") / "run"
    small = [a for i, a in enumerate(SMALL) if a != "--hidden" and (i == 0 or SMALL[i - 1] != "--hidden")]
    done = p.run("train", "vae", *small, "--steps", "10", "--set", "model.hidden=[32,32]", "--out", run)
    hidden = json.loads((run / "config.json").read_text())["model"]["hidden"] if (run / "config.json").is_file() else None
    ok = done.returncode == 0 and hidden == [32, 32] and forms == {"(16, 16)": (16, 16), "8,8": (8, 8), "[]": ()}
    return ok, f"exit {done.returncode}; config.json hidden {hidden}; other forms {forms}; {done.stderr.strip()[-200:]}"


# ---------------------------------------------------------------- torchrun
def _torchrun(p: Probe, logs: Path, *args) -> subprocess.Popen:
    """vaelab under torchrun with 2 CPU processes, in a session of its own (so a hang can be ended whole);
    each process's stderr goes to its own file under `logs`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "--redirects", "2",
               "--log-dir", str(logs), "-m", "vaelab", *map(str, args)]
    return subprocess.Popen(command, env={**p.env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> tuple[int | None, str]:
    """(exit code, torchrun's stderr); (None, ...) when it had not ended in `timeout` s: then it and its workers are killed."""
    try:
        _, err = proc.communicate(timeout=timeout)
        return proc.returncode, err
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None, "still running after the signal (killed by the probe)"


def _rank_errors(logs: Path) -> dict[int, list[str]]:
    """{rank: its stderr lines}."""
    return {int(path.parent.name): path.read_text().strip().splitlines() for path in logs.rglob("stderr.log")}


def _exit_codes(torchrun_stderr: str) -> dict[int, int]:
    """{rank: exit code} from torchrun's failure report."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*?\n\s*exitcode\s*:\s*(-?\d+)", torchrun_stderr)
    return {int(rank): int(code) for rank, code in found}


for _rank in (0, 1):
    @case("torchrun", f"SIGTERM to rank {_rank} only of two torchrun processes: every rank stops with one line")
    def _(p, rank=_rank):
        folder = p.fresh(f"torchrun-sigterm-{rank}")
        run, logs = folder / "run", folder / "logs"
        proc = _torchrun(p, logs, "train", "vae", *SMALL[:1], "100000", *SMALL[2:], "--checkpoint-every", "100000", "--out", run)
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file() or not (run / "metrics.jsonl").read_text():
            if proc.poll() is not None or time.time() > deadline:
                return False, f"training ended early: {_finish(proc, 0.1)[1][-300:]}"
            time.sleep(0.01)
        pids = {}
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().decode(errors="replace").split("\0")
            pids.update({int(kv[5:]): int(child) for kv in environ if kv.startswith("RANK=")})
        os.kill(pids[rank], signal.SIGTERM)
        code, err = _finish(proc)
        if code is None:
            return False, err
        errors, codes = _rank_errors(logs), _exit_codes(err)
        # Each rank exits 143 by itself; one still exiting when torchrun sees the other's exit code is ended by
        # torchrun's own SIGTERM (-15), after its line, once rank 0 has written the checkpoint (they wait for it).
        ok = (sorted(errors) == [0, 1] and all(len(lines) == 1 and "interrupted by SIGTERM" in lines[0] for lines in errors.values())
              and 143 in codes.values() and set(codes.values()) <= {143, -15} and sorted(codes) == [0, 1]
              and any((run / "checkpoints").glob("step-*.safetensors")))
        return ok, f"ranks' stderr {errors}; exit codes {codes}"


@case("torchrun", "--resume under torchrun of a run another process holds: one line per rank, nothing changed")
def _(p):
    from vaelab.training.runs import RunLock

    folder = p.fresh("torchrun-locked")
    run, logs = folder / "run", folder / "logs"
    shutil.copytree(reference(p), run)
    before = snapshot(run)
    held = RunLock(run)
    try:
        code, _ = _finish(_torchrun(p, logs, "train", "--resume", run, "--steps", "80", "--no-progress"))
    finally:
        held.release()
    errors = _rank_errors(logs)
    ok = (code not in (0, None) and len(errors.get(0, [])) == 1 and "in use by another vaelab process" in errors[0][0]
          and len(errors.get(1, [])) == 1 and "rank 0" in errors[1][0] and snapshot(run) == before)
    return ok, f"exit {code}; ranks' stderr {errors}"


@case("torchrun", "--resume under torchrun with config.json changing the batch size: refused by rank 0, one line per rank")
def _(p):
    folder = p.fresh("torchrun-fixed-change")
    run, logs = folder / "run", folder / "logs"
    shutil.copytree(reference(p), run)
    _edit(run, train__batch_size=24)
    before = snapshot(run)
    code, _ = _finish(_torchrun(p, logs, "train", "--resume", run, "--steps", "80", "--no-progress"))
    errors = _rank_errors(logs)
    ok = (code not in (0, None) and len(errors.get(0, [])) == 1 and "train.batch_size (50 -> 24)" in errors[0][0]
          and len(errors.get(1, [])) == 1 and "Traceback" not in errors[1][0] and snapshot(run) == before)
    return ok, f"exit {code}; ranks' stderr {errors}"
