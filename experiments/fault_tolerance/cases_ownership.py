"""What reproduce may touch, which weights an evaluation belongs to, and the side files compare and plot read:
a user's run under OUT/runs, interrupted and killed reproductions, two processes on one OUT or run, evaluations
left behind by further training, malformed summary, config and evaluation files, unusable --out folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

from harness import Probe, case, one_line_error, reference, same_weights, snapshot, wait_for_metrics

STEPS = 40  # a reproduce run that trains in a second or two; evaluation and figures take the rest
LONG = 600  # long enough to be interrupted mid-training


def reproduce_args(out, steps: int = STEPS):
    return ["reproduce", "cs236", "--only", "vae", "--steps", steps, "--out", out, "--device", "cpu", "--no-progress",
            "--threads", "1"]


def reproduced(p: Probe) -> Path:
    """OUT of one finished `vaelab reproduce cs236 --only vae`, made once; cases copy it."""
    out = p.work / "reproduced"
    if not (out / "report.md").exists():
        shutil.rmtree(out, ignore_errors=True)
        done = p.run(*reproduce_args(out))
        assert done.returncode == 0, done.stderr
    return out


def copy_of(p: Probe, source: Path, name: str) -> Path:
    target = p.fresh(name) / source.name
    shutil.copytree(source, target)
    return target


def summary_of(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def logged_steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def interrupted_reproduction(p: Probe, name: str) -> tuple[Path, object, list[str]]:
    """OUT of a reproduce stopped by SIGINT while it trains: (OUT, its exit code, its stderr lines)."""
    out = p.fresh(name) / "out"
    proc = p.popen(*reproduce_args(out, LONG))
    run = out / "runs" / "vae-seed0"
    wait_for_metrics(proc, run)
    proc.send_signal(signal.SIGINT)
    code = proc.wait()
    return out, code, proc.stderr.read().strip().splitlines()


# ---------------------------------------------------------------- reproduce never deletes
@case("ownership", "reproduce with a user's finished run copied to OUT/runs/vae-seed0")
def _(p):
    out = p.fresh("foreign-finished") / "out"
    shutil.copytree(reference(p), out / "runs" / "vae-seed0")
    before = snapshot(out)
    ok, detail = one_line_error(p.run(*reproduce_args(out)), "not made by vaelab reproduce")
    return ok and snapshot(out) == before, f"{detail}; folder unchanged {snapshot(out) == before}"


@case("ownership", "reproduce with a user's unfinished run under OUT/runs (it was deleted, exit 0)")
def _(p):
    out = p.fresh("foreign-unfinished") / "out"
    run = out / "runs" / "vae-seed0"
    shutil.copytree(reference(p), run)
    (run / "model.safetensors").unlink()
    (run / "summary.json").unlink()
    before = snapshot(out)
    ok, detail = one_line_error(p.run(*reproduce_args(out)), "not made by vaelab reproduce")
    return ok and snapshot(out) == before, f"{detail}; folder unchanged {snapshot(out) == before}"


@case("ownership", "reproduce with a file where its run folder goes")
def _(p):
    out = p.fresh("file-in-the-way") / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "vae-seed0").write_text("my notes")
    ok, detail = one_line_error(p.run(*reproduce_args(out)), "not a folder")
    return ok and (out / "runs" / "vae-seed0").read_text() == "my notes", detail


@case("ownership", "reproduce of a run whose owner.json names another seed")
def _(p):
    out = copy_of(p, reproduced(p), "other-owner")
    marker = out / "runs" / "vae-seed0" / "owner.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "seed": 7}))
    before = snapshot(out)
    ok, detail = one_line_error(p.run(*reproduce_args(out)), "seed 7")
    return ok and snapshot(out) == before, f"{detail}; folder unchanged {snapshot(out) == before}"


@case("ownership", "SIGINT during reproduce, then reproduce again: resumed to the uninterrupted weights")
def _(p):
    out, code, message = interrupted_reproduction(p, "sigint-reproduce")
    run = out / "runs" / "vae-seed0"
    stopped_at = max(logged_steps(run))
    again = p.run(*reproduce_args(out, LONG))
    whole = p.fresh("sigint-uninterrupted") / "out"
    ran = p.run(*reproduce_args(whole, LONG))
    resumed = summary_of(run).get("resumed_from_step") if again.returncode == 0 else None
    steps = logged_steps(run)
    ok = (code == 130 and message[-1:] == [line for line in message if "interrupted by" in line]
          and "run the same vaelab reproduce command again" in message[-1]
          and again.returncode == 0 and ran.returncode == 0 and resumed is not None and resumed >= stopped_at > 0
          and steps == sorted(set(steps)) and steps[-1] == LONG and same_weights(run, whole / "runs" / "vae-seed0"))
    return ok, (f"exit {code}: {message}; again: exit {again.returncode}, resumed from step {resumed} (logged up to {stopped_at}), "
                f"identical weights {again.returncode == 0 and ran.returncode == 0 and same_weights(run, whole / 'runs' / 'vae-seed0')}")


@case("ownership", "SIGINT during reproduce, train --resume by hand, then reproduce: evaluated, not trained again")
def _(p):
    out, code, _ = interrupted_reproduction(p, "sigint-then-train")
    run = out / "runs" / "vae-seed0"
    finished = p.run("train", "--resume", run, "--no-progress")
    weights = (run / "model.safetensors").read_bytes() if finished.returncode == 0 else b""
    again = p.run(*reproduce_args(out, LONG))
    ok = (code == 130 and finished.returncode == 0 and again.returncode == 0
          and (run / "model.safetensors").read_bytes() == weights and (run / "eval-cs236.json").is_file())
    return ok, f"exit {code}; train --resume exit {finished.returncode}; reproduce exit {again.returncode}, weights kept {ok}"


@case("ownership", "kill -9 of reproduce during training, then reproduce again: resumed, folder kept")
def _(p):
    out = p.fresh("kill-reproduce") / "out"
    run = out / "runs" / "vae-seed0"
    proc = p.popen(*reproduce_args(out, LONG))
    wait_for_metrics(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    inode = run.stat().st_ino
    again = p.run(*reproduce_args(out, LONG))
    resumed = summary_of(run).get("resumed_from_step") if again.returncode == 0 else None
    ok = again.returncode == 0 and resumed is not None and run.stat().st_ino == inode and (out / "report.md").is_file()
    return ok, f"exit {again.returncode}; resumed from step {resumed}; stderr: {again.stderr.strip()[-200:]}"


@case("ownership", "a second reproduce into the same OUT while the first trains")
def _(p):
    out = p.fresh("two-reproduces") / "out"
    first = p.popen(*reproduce_args(out, LONG))
    wait_for_metrics(first, out / "runs" / "vae-seed0")
    ok, detail = one_line_error(p.run(*reproduce_args(out, LONG)), "in use by another vaelab process")
    code = first.wait()
    steps = logged_steps(out / "runs" / "vae-seed0")
    ok = ok and code == 0 and steps == sorted(set(steps)) and steps[-1] == LONG and (out / "report.md").is_file()
    return ok, f"{detail}; first reproduce exit {code}, its run whole {steps[-1:] == [LONG]}"


@case("ownership", "reproduce while vaelab train --resume trains one of its runs")
def _(p):
    out, code, _ = interrupted_reproduction(p, "reproduce-beside-train")
    run = out / "runs" / "vae-seed0"
    trainer = p.popen("train", "--resume", run, "--steps", 100000, "--no-progress")
    try:
        seen = len(logged_steps(run))
        while len(logged_steps(run)) == seen and trainer.poll() is None:  # until the trainer has logged
            time.sleep(0.01)
        ok, detail = one_line_error(p.run(*reproduce_args(out, LONG)), "in use by another vaelab process")
    finally:
        trainer.send_signal(signal.SIGKILL)
        trainer.wait()
    return ok and not (run / "eval-cs236.json").exists(), f"{detail}; not evaluated {not (run / 'eval-cs236.json').exists()}"


# ---------------------------------------------------------------- evaluations belong to weights
def evaluated_reference(p: Probe, name: str, *eval_args) -> Path:
    run = copy_of(p, reference(p), name)
    done = p.run("eval", run, "--iw", "1", "--device", "cpu", *eval_args)
    assert done.returncode == 0, done.stderr
    return run


@case("stale-eval", "eval records the step and sha256 of the weights it read")
def _(p):
    run = evaluated_reference(p, "eval-identity")
    recorded = json.loads((run / "eval-cs236.json").read_text()).get("computed_on")
    expected = {"weights": "model.safetensors", "step": 60, "sha256": hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()}
    return recorded == expected, f"computed_on {recorded}"


@case("stale-eval", "eval at step 60, train --resume --steps 80, then compare")
def _(p):
    run = evaluated_reference(p, "stale-compare", "--protocol", "full")
    assert p.run("train", "--resume", run, "--steps", "80", "--no-progress").returncode == 0
    done = p.run("compare", run, "--out", run.parent / "cmp")
    lines = done.stdout.splitlines()
    columns = dict(zip(lines[0].strip("| ").split(" | "), lines[2].strip("| ").split(" | "))) if len(lines) > 2 else {}
    note = "eval-full.json was computed on step 60 weights; the run is now at step 80: run vaelab eval"
    ok = (done.returncode == 0 and columns.get("full.weights") == "stale (step 60)" and "full.nelbo" not in columns
          and note in done.stdout and note in (run.parent / "cmp" / "compare.md").read_text())
    return ok, f"exit {done.returncode}; full.weights {columns.get('full.weights')!r}; {[line for line in lines if 'stale' in line or 'computed' in line][-1:]}"


@case("stale-eval", "compare of an evaluation written before evaluations recorded their weights")
def _(p):
    run = evaluated_reference(p, "unverified")
    result = json.loads((run / "eval-cs236.json").read_text())
    del result["computed_on"]
    (run / "eval-cs236.json").write_text(json.dumps(result))
    done = p.run("compare", run, "--out", run.parent / "cmp")
    ok = done.returncode == 0 and "| unverified |" in done.stdout and "does not record the weights it was computed on" in done.stdout
    return ok, f"exit {done.returncode}; {done.stdout.strip().splitlines()[-1:]}"


@case("stale-eval", "reproduce of its own finished run after train --resume --steps N trained it on")
def _(p):
    out = copy_of(p, reproduced(p), "reproduce-extended")
    run = out / "runs" / "vae-seed0"
    assert p.run("train", "--resume", run, "--steps", STEPS + 20, "--no-progress").returncode == 0
    done = p.run(*reproduce_args(out))
    recorded = json.loads((run / "eval-cs236.json").read_text())["computed_on"]["step"]
    report = (out / "report.md").read_text()
    ok = done.returncode == 0 and recorded == STEPS + 20 and f"evaluated on the weights of step {STEPS + 20}" in report
    return ok, f"exit {done.returncode}; evaluation of step {recorded}"


@case("stale-eval", "plot --kind traversal with eval-disentanglement.json of earlier weights")
def _(p):
    run = copy_of(p, reference(p), "stale-traversal")
    (run / "eval-disentanglement.json").write_text(json.dumps({
        "factors": ["a", "b"], "code_factor_information": [[0.5, 0.1]] * 4, "mig": 0.2,
        "computed_on": {"weights": "model.safetensors", "step": 40, "sha256": "0" * 64}}))
    done = p.run("plot", run, "--kind", "traversal", "--device", "cpu", "--out", run.parent / "t.png")
    ok = done.returncode == 0 and "step 40 weights" in done.stderr and "not named by factor" in done.stderr
    return ok, f"exit {done.returncode}; {done.stderr.strip()[-200:]}"


# ---------------------------------------------------------------- side files compare and plot read
SIDE_FILES = {
    "summary.json [1,2]": ("summary.json", b"[1,2]", "not an object"),
    "an eval JSON without protocol": ("eval-cs236.json", b'{"nelbo": 99.1}', "protocol"),
    "an eval file that is not JSON": ("eval-full.json", b"\x00\xffnot json", "not JSON"),
    "an eval JSON whose nelbo is a string": ("eval-cs236.json", b'{"protocol": "cs236", "nelbo": "low"}', "nelbo"),
    "config.json that is a list": ("config.json", b"[1, 2, 3]", "not an object"),
    "config.json whose model is a number": ("config.json", b'{"model": 3, "objective": {}, "data": {}, "train": {}}', "model.name"),
    "eval-disentanglement.json without its matrix": ("eval-disentanglement.json", b'{"factors": ["x"]}', "code_factor_information"),
}
for _name, (_file, _content, _needle) in SIDE_FILES.items():
    @case("side-files", f"compare with {_name}")
    def _(p, file=_file, content=_content, needle=_needle):
        run = copy_of(p, reference(p), "side-file")
        (run / file).write_bytes(content)
        before = snapshot(run)
        ok, detail = one_line_error(p.run("compare", run, "--out", run.parent / "cmp"), f"{run / file}: ")
        ok = ok and needle in detail and snapshot(run) == before and not (run.parent / "cmp").exists()
        return ok, detail


TRAVERSAL_FILES = {
    "not JSON": (b"{", "not JSON"),
    "a JSON list": (b"[]", "not an object"),
    "rows of the wrong length": (b'{"factors": ["x", "y"], "code_factor_information": [[0.1], [0.2]]}', "code_factor_information"),
    "factors that are not names": (b'{"factors": [1, 2], "code_factor_information": [[0.1, 0.2]]}', "factors"),
}
for _name, (_content, _needle) in TRAVERSAL_FILES.items():
    @case("side-files", f"plot --kind traversal with eval-disentanglement.json that is {_name}")
    def _(p, content=_content, needle=_needle):
        run = copy_of(p, reference(p), "traversal-file")
        (run / "eval-disentanglement.json").write_bytes(content)
        ok, detail = one_line_error(p.run("plot", run, "--kind", "traversal", "--device", "cpu", "--out", run.parent / "t.png"),
                                    str(run / "eval-disentanglement.json"))
        return ok and needle in detail and not (run.parent / "t.png").exists(), detail


@case("side-files", "compare --out pointing to an existing file")
def _(p):
    folder = p.fresh("out-is-a-file")
    taken = folder / "results.md"
    taken.write_text("my results")
    ok, detail = one_line_error(p.run("compare", reference(p), "--out", taken), str(taken))
    return ok and taken.read_text() == "my results", detail


@case("side-files", "compare --out pointing to a run directory")
def _(p):
    run = copy_of(p, reference(p), "out-is-a-run")
    before = snapshot(run)
    ok, detail = one_line_error(p.run("compare", run, "--out", run), "is a run directory")
    return ok and snapshot(run) == before, detail


# chmod does not stop root, under whom the probe may run: the folder is also made read-only to the process the
# way a read-only mount is, by refusing writes under it with EROFS.
READ_ONLY = """
import errno, os
_ro, _open, _mkdir = {folder!r}, os.open, os.mkdir
def _refuse(path):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
def _os_open(path, flags, *args, **kwargs):
    if str(path).startswith(_ro) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        _refuse(path)
    return _open(path, flags, *args, **kwargs)
def _os_mkdir(path, *args, **kwargs):
    if str(path).startswith(_ro):
        _refuse(path)
    return _mkdir(path, *args, **kwargs)
os.open, os.mkdir = _os_open, _os_mkdir
"""

for _where in ("the read-only folder itself", "a new folder inside a read-only one"):
    @case("side-files", f"compare --out {_where}")
    def _(p, where=_where):
        folder = p.fresh("read-only") / "ro"
        folder.mkdir()
        os.chmod(folder, 0o555)
        out = folder if where.startswith("the") else folder / "cmp"
        try:
            done = p.run("compare", reference(p), "--out", out, prelude=READ_ONLY.format(folder=str(folder)))
            ok, detail = one_line_error(done, str(out))
            left = sorted(path.name for path in folder.iterdir())
        finally:
            os.chmod(folder, 0o755)
        return ok and left == [], f"{detail}; left in the folder: {left}"
