"""vaelab reproduce never deletes: it refuses folders it did not make and resumes its own; every evaluation
records the weights it was computed on, and compare marks one that no longer matches; malformed side files
and unusable --out folders are one line naming the file."""

from __future__ import annotations

import hashlib
import json
import shutil
import signal

import pytest

from vaelab.cli import main
from vaelab.report import reproduce as reproduce_mod
from vaelab.training.runs import RunLock

# One tiny experiment in place of the cs236 suite: the same code paths in a few seconds.
TINY = reproduce_mod.Experiment("vae", "VAE", "vae", {"model.hidden": [16], "model.z_dim": 2, "train.batch_size": 20},
                                iws=(1, 10), reference={"nelbo": {reproduce_mod.WRITEUP_ONE: 101.51}})
STEPS = 6


@pytest.fixture
def tiny_suite(monkeypatch):
    monkeypatch.setitem(reproduce_mod.SUITES, "cs236", (TINY,))




def reproduce_args(out, data):
    return ["reproduce", "cs236", "--steps", STEPS, "--only", "vae", "--out", out, "--data-dir", data,
            "--device", "cpu", "--no-progress", "--threads", "1"]


def one_line_error(proc, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode not in (0, None) and "Traceback" not in proc.stderr, proc.stderr
    assert ": error: " in lines[-1] and sum(": error: " in line for line in lines) == 1, proc.stderr
    for needle in needles:
        assert str(needle) in lines[-1], (needle, lines[-1])


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory):
    """OUT of a finished tiny reproduce (built once; tests copy it)."""
    out = tmp_path_factory.mktemp("reproduced")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(reproduce_mod.SUITES, "cs236", (TINY,))
        assert main([str(a) for a in reproduce_args(out, tiny_data)]) == 0
    return out


@pytest.fixture
def copy_of_finished(finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    return out


# ---------------------------------------------------------------- reproduce owns what it made, and only that
def test_a_users_run_under_out_runs_is_refused_and_left_byte_for_byte(cli, tiny_suite, uninterrupted, tiny_data, tmp_path):
    out = tmp_path / "out"
    foreign = out / "runs" / "vae-seed0"
    shutil.copytree(uninterrupted, foreign)
    (foreign / "model.safetensors").unlink()  # unfinished too: the old reproduce deleted it and exited 0
    before = snapshot(foreign)
    one_line_error(cli(*reproduce_args(out, tiny_data)), foreign, "not made by vaelab reproduce", "never changes or deletes")
    assert snapshot(foreign) == before
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["vae-seed0"] and not (out / "report.md").exists()


def test_a_run_made_for_another_experiment_or_seed_is_refused(cli, tiny_suite, copy_of_finished, tiny_data):
    run = copy_of_finished / "runs" / "vae-seed0"
    owner = json.loads((run / "owner.json").read_text())
    (run / "owner.json").write_text(json.dumps({**owner, "seed": 3}))
    before = snapshot(run)
    one_line_error(cli(*reproduce_args(copy_of_finished, tiny_data)), run, "seed 3", "not this reproduce's")
    assert snapshot(run) == before


def test_a_file_in_place_of_a_run_is_refused(cli, tiny_suite, tiny_data, tmp_path):
    out = tmp_path / "out"
    (out / "runs").mkdir(parents=True)
    (out / "runs" / "vae-seed0").write_text("mine")
    one_line_error(cli(*reproduce_args(out, tiny_data)), out / "runs" / "vae-seed0", "not a folder")
    assert (out / "runs" / "vae-seed0").read_text() == "mine"


def test_a_finished_run_is_reused_and_marked_as_reproduces_own(finished):
    run = finished / "runs" / "vae-seed0"
    assert json.loads((run / "owner.json").read_text()) == {"made_by": "vaelab reproduce", "suite": "cs236", "experiment": "vae",
                                                            "seed": 0}
    result = json.loads((run / "eval-cs236.json").read_text())
    assert result["computed_on"]["step"] == STEPS and result["computed_on"]["weights"] == "model.safetensors"
    assert result["computed_on"]["sha256"] == hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()
    assert "evaluated on the weights of step 6" in (finished / "report.md").read_text()


def test_an_interrupted_reproduce_run_is_resumed_not_trained_again(cli, tiny_suite, tiny_data, tmp_path, monkeypatch):
    import os

    from vaelab import objectives

    out = tmp_path / "out"
    annealed = objectives.annealed_beta

    def interrupt_at_step_3(step, *args):  # Ctrl-C while step 4 runs: the loop stops after it
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return annealed(step, *args)

    monkeypatch.setattr(objectives, "annealed_beta", interrupt_at_step_3)
    proc = cli(*reproduce_args(out, tiny_data))
    assert proc.returncode == 130 and "run the same vaelab reproduce command again" in proc.stderr, proc.stderr
    run = out / "runs" / "vae-seed0"
    assert not (run / "model.safetensors").exists() and (run / "owner.json").is_file()
    monkeypatch.setattr(objectives, "annealed_beta", annealed)
    proc = cli(*reproduce_args(out, tiny_data))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == STEPS
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == STEPS  # continued: no step logged twice
    assert json.loads((run / "eval-cs236.json").read_text())["computed_on"]["step"] == STEPS


def test_a_run_trained_but_not_evaluated_is_evaluated_not_trained_again(cli, tiny_suite, copy_of_finished, tiny_data):
    run = copy_of_finished / "runs" / "vae-seed0"
    weights = (run / "model.safetensors").read_bytes()
    for name in ("eval-cs236.json", "reproduce.json", "samples.png"):
        (run / name).unlink()
    assert cli(*reproduce_args(copy_of_finished, tiny_data)).returncode == 0
    assert (run / "model.safetensors").read_bytes() == weights
    assert {"eval-cs236.json", "reproduce.json", "samples.png"} <= {p.name for p in run.iterdir()}


def test_a_second_reproduce_into_the_same_out_is_refused(cli, tiny_suite, copy_of_finished, tiny_data):
    before = snapshot(copy_of_finished)
    lock = RunLock(copy_of_finished, "--out")  # as a first reproduce holds it
    try:
        one_line_error(cli(*reproduce_args(copy_of_finished, tiny_data)), copy_of_finished, "in use by another vaelab process")
    finally:
        lock.release()
    assert snapshot(copy_of_finished) == {**before, ".lock": snapshot(copy_of_finished)[".lock"]}


def test_a_run_another_process_trains_is_not_evaluated(cli, tiny_suite, copy_of_finished, tiny_data):
    run = copy_of_finished / "runs" / "vae-seed0"
    (run / "reproduce.json").unlink()  # so reproduce wants to evaluate it again
    before = snapshot(run)
    lock = RunLock(run, "--resume")  # as vaelab train --resume holds it
    try:
        one_line_error(cli(*reproduce_args(copy_of_finished, tiny_data)), run, "in use by another vaelab process")
    finally:
        lock.release()
    assert {k: v for k, v in snapshot(run).items() if k != ".lock"} == {k: v for k, v in before.items() if k != ".lock"}


def test_a_run_extended_by_hand_is_evaluated_again(cli, tiny_suite, copy_of_finished, tiny_data):
    run = copy_of_finished / "runs" / "vae-seed0"
    assert cli("train", "--resume", run, "--steps", STEPS + 2, "--no-progress").returncode == 0
    assert cli(*reproduce_args(copy_of_finished, tiny_data)).returncode == 0
    assert json.loads((run / "eval-cs236.json").read_text())["computed_on"]["step"] == STEPS + 2
    assert "evaluated on the weights of step 8" in (copy_of_finished / "report.md").read_text()


def test_the_report_leaves_out_an_evaluation_of_other_weights(copy_of_finished):
    run = copy_of_finished / "runs" / "vae-seed0"
    result = json.loads((run / "eval-cs236.json").read_text())
    (run / "eval-cs236.json").write_text(json.dumps({**result, "computed_on": {**result["computed_on"], "sha256": "0" * 64, "step": 2}}))
    (run / "summary.json").unlink()  # half-finished states do not break the report either
    reproduce_mod.write_report("cs236", copy_of_finished, [TINY], {"vae": [run]})
    md = (copy_of_finished / "report.md").read_text()
    assert "runs/vae-seed0/eval-cs236.json was computed on step 2 weights; the run is now at step 6: left out" in md and "| NELBO |" not in md


# ---------------------------------------------------------------- evaluations say which weights they are of
def test_eval_records_the_step_and_sha256_of_its_weights(cli, uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert cli("eval", run, "--iw", "1", "--device", "cpu", "--data-dir", tiny_data).returncode == 0
    recorded = json.loads((run / "eval-cs236.json").read_text())["computed_on"]
    assert recorded == {"weights": "model.safetensors", "step": 120,
                        "sha256": hashlib.sha256((run / "model.safetensors").read_bytes()).hexdigest()}
    (run / "model.safetensors").unlink()  # a run still training is evaluated from its newest checkpoint
    assert cli("eval", run, "--iw", "1", "--device", "cpu", "--data-dir", tiny_data).returncode == 0
    recorded = json.loads((run / "eval-cs236.json").read_text())["computed_on"]
    assert recorded["weights"] == "checkpoints/step-0000120.safetensors" and recorded["step"] == 120


def test_compare_marks_an_evaluation_stale_once_the_run_trains_on(cli, uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    assert cli("eval", run, "--iw", "1", "--device", "cpu", "--data-dir", tiny_data).returncode == 0
    fresh = cli("compare", run, "--out", tmp_path / "cmp")
    assert "| step 120 |" in fresh.stdout and "stale" not in fresh.stdout
    assert cli("train", "--resume", run, "--steps", "127", "--no-progress").returncode == 0
    proc = cli("compare", run, "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    header, _, row = proc.stdout.splitlines()[:3]
    columns = dict(zip(header.strip("| ").split(" | "), row.strip("| ").split(" | ")))
    assert columns["steps"] == "127" and columns["cs236.weights"] == "stale (step 120)" and "cs236.nelbo" not in columns
    note = f"{run / 'eval-cs236.json'} was computed on step 120 weights; the run is now at step 127: run vaelab eval {run} --protocol cs236 again"
    assert note in proc.stdout and note in (tmp_path / "cmp" / "compare.md").read_text()
    assert cli("eval", run, "--iw", "1", "--device", "cpu", "--data-dir", tiny_data).returncode == 0
    again = cli("compare", run, "--out", tmp_path / "cmp").stdout
    assert "| step 127 |" in again and "stale" not in again


def test_compare_marks_an_evaluation_without_its_weights_unverified(cli, uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "eval-cs236.json").write_text(json.dumps({"protocol": "cs236", "nelbo": 123.25}))
    proc = cli("compare", run, "--out", tmp_path / "cmp")
    assert "| unverified | 123.25 |" in proc.stdout and "does not record the weights it was computed on" in proc.stdout


# ---------------------------------------------------------------- malformed side files, unusable --out
SIDE_FILES = {
    "summary.json that is a list": ("summary.json", "[1, 2]", "not an object"),
    "an evaluation without its protocol": ("eval-cs236.json", '{"nelbo": 1.0}', "no 'protocol'"),
    "an evaluation that is not JSON": ("eval-full.json", b"\xff\xfe\x00garbage", "not JSON"),
    "an evaluation with a metric that is not a number": ("eval-cs236.json", '{"protocol": "cs236", "nelbo": "low"}', "nelbo"),
    "config.json that is not sections of settings": ("config.json", '{"model": 3}', "model.name"),
    "a disentanglement evaluation without its matrix": ("eval-disentanglement.json", '{"factors": ["x"]}', "code_factor_information"),
}


@pytest.mark.parametrize("name", SIDE_FILES)
def test_compare_on_a_malformed_side_file_is_one_line_naming_it(name, cli, uninterrupted, tmp_path):
    file, content, needle = SIDE_FILES[name]
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / file).write_bytes(content if isinstance(content, bytes) else content.encode())
    one_line_error(cli("compare", run, "--out", tmp_path / "cmp"), run / file, needle)
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("content", ['{"factors": ["x", "y"], "code_factor_information": [[0.1]]}', "[]", "{"])
def test_plot_traversal_on_a_malformed_disentanglement_file_is_one_line(content, cli, uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "eval-disentanglement.json").write_text(content)
    proc = cli("plot", run, "--kind", "traversal", "--images", "50", "--data-dir", tiny_data, "--device", "cpu",
               "--out", tmp_path / "t.png")
    one_line_error(proc, run / "eval-disentanglement.json")
    assert not (tmp_path / "t.png").exists()


def test_compare_out_that_is_a_file_or_cannot_be_written_is_one_line(cli, uninterrupted, tmp_path, monkeypatch):
    taken = tmp_path / "taken.md"
    taken.write_text("mine")
    one_line_error(cli("compare", uninterrupted, "--out", taken), taken, "a file, not a folder")
    assert taken.read_text() == "mine"
    one_line_error(cli("compare", uninterrupted, "--out", uninterrupted), uninterrupted, "is a run directory")
    locked = tmp_path / "read-only"
    locked.mkdir()

    def refuse(*args, **kwargs):  # a read-only folder, as root (who ignores permissions) cannot make one
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("vaelab.training.files.tempfile.mkstemp", refuse)
    one_line_error(cli("compare", uninterrupted, "--out", locked), locked / "compare.md", "Permission denied")
    monkeypatch.setattr("pathlib.Path.mkdir", refuse)
    one_line_error(cli("compare", uninterrupted, "--out", locked / "sub"), locked / "sub", "Permission denied")


def test_plot_traversal_does_not_name_rows_from_a_disentanglement_file_of_other_weights(cli, uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "eval-disentanglement.json").write_text(json.dumps({
        "factors": ["shape", "scale"], "code_factor_information": [[0.5, 0.1]] * 3,
        "computed_on": {"weights": "checkpoints/step-0000080.safetensors", "step": 80, "sha256": "0" * 64}}))
    proc = cli("plot", run, "--kind", "traversal", "--images", "50", "--data-dir", tiny_data, "--device", "cpu",
               "--out", tmp_path / "t.png")
    assert proc.returncode == 0, proc.stderr
    assert "was computed on step 80 weights; the run is now at step 120: rows are not named by factor" in proc.stderr
