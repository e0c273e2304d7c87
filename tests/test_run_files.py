"""The files of a run directory: symbolic links inside it are never followed, nothing a checkpoint holds
is trusted, checkpoints sort by step as numbers, readers beside a trainer that prunes checkpoints, and
weights that do not fit config.json named tensor by tensor."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

from vaelab.cli import main
from vaelab.errors import RunDirError
from vaelab.models import build_model
from vaelab.training import checkpoints, files, runs
from vaelab.training.config import load_json
from vaelab.training.config import TrainConfig
from vaelab.training.optimizers import make_optimizer
from conftest import killed_copy, rewrite_checkpoint

STEP_120 = "checkpoints/step-0000120.safetensors"
STEP_100 = "checkpoints/step-0000100.safetensors"


def _tree(folder):
    """Every file under `folder` with its bytes' sha256, links as their targets: to compare a folder byte for byte."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        out[key] = ("link", os.readlink(path)) if path.is_symlink() else \
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- symbolic links inside a run directory
def test_a_lock_that_is_a_symlink_leaves_its_target_unchanged(uninterrupted, tmp_path, capsys):
    run = killed_copy(uninterrupted, tmp_path)
    target = tmp_path / "precious.txt"
    target.write_text("not a pid\n")
    (run / ".lock").unlink(missing_ok=True)
    (run / ".lock").symlink_to(target)
    before = _tree(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    line = _error_line(capsys)
    assert ".lock is a symbolic link" in line
    assert target.read_text() == "not a pid\n" and _tree(run) == before


@pytest.mark.parametrize("manifest", ["with a manifest", "without a manifest"])
def test_checkpoints_linked_to_another_run_leave_that_run_unchanged(uninterrupted, tiny_data, tmp_path, capsys, manifest):
    other = tmp_path / "other"
    shutil.copytree(uninterrupted, other)
    run = killed_copy(uninterrupted, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(other / "checkpoints", target_is_directory=True)
    if manifest == "with a manifest":  # its entries then disagree with the other run's files: once renamed *.damaged
        (run / "manifest.json").write_text(json.dumps({"files": {}}))
    else:  # once resumed from and pruned
        (run / "manifest.json").unlink()
    (other / "checkpoints" / ".step-0000140.safetensors.x.tmp").write_bytes(b"the other run's own temporary")
    before = _tree(other)
    assert main(["train", "--resume", str(run), "--steps", "140", "--no-progress"]) == 1
    assert "checkpoints is a symbolic link" in _error_line(capsys)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 1  # readers refuse it too
    assert "checkpoints is a symbolic link" in _error_line(capsys)
    assert _tree(other) == before


@pytest.mark.parametrize("member", ["model.safetensors", "metrics.jsonl", "manifest.json", "summary.json", "tensorboard",
                                    STEP_120])
def test_a_member_that_is_a_link_is_refused_in_one_line(uninterrupted, tmp_path, capsys, member):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    shutil.move(run / member, target)
    (run / member).symlink_to(target)
    before = _tree(outside)
    assert main(["train", "--resume", str(run), "--steps", "140", "--no-progress"]) == 1
    assert f"{member} is a symbolic link" in _error_line(capsys)
    with pytest.raises(RunDirError, match="is a symbolic link"):
        runs.load_run(run)
    assert _tree(outside) == before


def test_appends_and_atomic_writes_never_write_through_a_link(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir(), outside.mkdir()
    (outside / "metrics.jsonl").write_text('{"step": 1}\n')
    (outside / "summary.json").write_text("{}")
    (run / "metrics.jsonl").symlink_to(outside / "metrics.jsonl")
    (run / "summary.json").symlink_to(outside / "summary.json")
    with pytest.raises(RunDirError, match="metrics.jsonl is a symbolic link"):
        files.append_jsonl(run / "metrics.jsonl", {"step": 2})
    with pytest.raises(RunDirError, match="metrics.jsonl is a symbolic link"):
        files.truncate_jsonl(run / "metrics.jsonl", 0)
    files.atomic_write_text(run / "summary.json", '{"new": 1}')  # replaces the link, not its target
    assert not (run / "summary.json").is_symlink() and (run / "summary.json").read_text() == '{"new": 1}'
    assert (outside / "summary.json").read_text() == "{}" and (outside / "metrics.jsonl").read_text() == '{"step": 1}\n'
    (outside / ".x.tmp").write_text("keep")
    (run / "checkpoints").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunDirError, match="checkpoints is a symbolic link"):
        files.remove_stale_temporaries(run)
    with pytest.raises(RunDirError, match="checkpoints is a symbolic link"):
        files.atomic_write_text(run / "checkpoints" / "step-0000001.safetensors", "x")
    assert sorted(p.name for p in outside.iterdir()) == [".x.tmp", "metrics.jsonl", "summary.json"]


# ---------------------------------------------------------------- nothing a checkpoint holds is trusted
def _groups(change):
    def edit(meta):
        groups = json.loads(meta["param_groups"])
        change(groups[0])
        return {**meta, "param_groups": json.dumps(groups)}
    return dict(metadata=edit)


def _adam(name, value):
    def edit(tensors):
        key = next(k for k in sorted(tensors) if k.endswith("." + name.split(".")[-1]) and k.startswith("optim."))
        return {**tensors, (name if name.startswith("optim.") else key): value(tensors[key])}
    return dict(tensors=edit)


TRUST_DAMAGE = {
    "lr 0.5": _groups(lambda g: g.update(lr=0.5)),
    "lr 'abc'": _groups(lambda g: g.update(lr="abc")),
    "weight decay 1e6": _groups(lambda g: g.update(weight_decay=1e6)),
    "maximize": _groups(lambda g: g.update(maximize=True)),
    "betas": _groups(lambda g: g.update(betas=[0.5, 0.5])),
    "eps": _groups(lambda g: g.update(eps=1.0)),
    "amsgrad": _groups(lambda g: g.update(amsgrad=True)),
    "an unknown hyper-parameter": _groups(lambda g: g.update(momentum=0.9)),
    "other parameters": _groups(lambda g: g.update(params=[0, 0])),
    "param_groups not a list": dict(metadata=lambda m: {**m, "param_groups": '{"lr": 0.001}'}),
    "Adam step 1e30": _adam("step", lambda t: torch.full_like(t, 1e30)),
    "Adam step negative": _adam("step", lambda t: torch.full_like(t, -1.0)),
    "Adam step not whole": _adam("step", lambda t: t + 0.5),
    "Adam step past the checkpoint's": _adam("step", lambda t: t + 1000),
    "Adam step of the wrong shape": _adam("step", lambda t: t.repeat(3)),
    "Adam moment as float64": _adam("exp_avg", lambda t: t.double()),
    "negative second moment": _adam("exp_avg_sq", lambda t: -t - 1),
    "state of a parameter that does not exist": _adam("optim.999.exp_avg", lambda t: t.clone()),
    "a foreign RNG state": dict(tensors=lambda t: {**t, "state.rng_cpu": torch.randint(0, 256, t["state.rng_cpu"].shape, dtype=torch.uint8)}),
    "skipped_steps past the step": dict(metadata=lambda m: {**m, "skipped_steps": "121"}),
}




def _restore(run):
    """checkpoints.restore as a resume calls it: model and optimizer as the run's config.json builds them."""
    cfg = load_json(run / "config.json")
    model = build_model(cfg.model)
    return checkpoints.restore(run, model, make_optimizer(model, cfg.train, torch.device("cpu")), 600)


@pytest.mark.parametrize("damage", TRUST_DAMAGE)
def test_a_checkpoint_whose_contents_cannot_be_trusted_is_damaged(uninterrupted, tmp_path, capsys, damage):
    run = killed_copy(uninterrupted, tmp_path)
    (run / "manifest.json").unlink()  # only the contents can tell
    rewrite_checkpoint(run / STEP_120, **TRUST_DAMAGE[damage])
    state = _restore(run)
    assert state.step == 100  # the next older one
    warning = _error_line(capsys)
    assert "step-0000120.safetensors: damaged" in warning and "next older checkpoint" in warning
    assert (run / (STEP_120 + ".damaged")).is_file()


def test_a_checkpoint_with_a_bad_learning_rate_resumes_from_the_older_one_to_identical_weights(uninterrupted, tmp_path, capsys):
    run = killed_copy(uninterrupted, tmp_path)
    (run / "manifest.json").unlink()
    rewrite_checkpoint(run / STEP_120, **TRUST_DAMAGE["lr 0.5"])
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "the optimiser's lr is 0.5 where config.json gives 0.001" in capsys.readouterr().err
    assert _same_weights(uninterrupted, run)


def test_a_checkpoint_from_another_device_keeps_this_process_kernel_settings(uninterrupted, tmp_path, capsys):
    """How Adam's kernel runs (fused, foreach) is not a hyper-parameter: a checkpoint saying otherwise resumes."""
    run = killed_copy(uninterrupted, tmp_path)
    (run / "manifest.json").unlink()
    rewrite_checkpoint(run / STEP_120, **_groups(lambda g: g.update(fused=None, foreach=True)))
    cfg = load_json(run / "config.json")
    model = build_model(cfg.model)
    optimizer = make_optimizer(model, cfg.train, torch.device("cpu"))
    assert checkpoints.restore(run, model, optimizer, 600).step == 120
    assert optimizer.param_groups[0]["fused"] is True and optimizer.param_groups[0]["foreach"] is None
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------- checkpoints sort by step as numbers
def test_checkpoints_sort_by_step_as_numbers(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for name in ("step-9999999.safetensors", "step-10000000.safetensors", "step-0000120.safetensors",
                 "step-abc.safetensors", "step-12.5.safetensors", "step-0000130.safetensors.damaged", "notes.txt"):
        (folder / name).write_bytes(b"")
    assert [p.name for p in checkpoints.checkpoint_paths(tmp_path)] == [
        "step-10000000.safetensors", "step-9999999.safetensors", "step-0000120.safetensors"]
    assert checkpoints.step_of(folder / "step-10000000.safetensors") == 10_000_000
    with pytest.raises(ValueError):
        checkpoints.step_of(folder / "step-12.5.safetensors")


def test_pruning_keeps_the_numerically_newest_checkpoints(tmp_path):
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    for step in (9_999_998, 9_999_999, 10_000_000):
        checkpoints.save_checkpoint(tmp_path, model, optimizer, step, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-10000000.safetensors", "step-9999999.safetensors"]


# ---------------------------------------------------------------- readers beside a trainer
def test_a_reader_losing_a_race_with_pruning_reads_the_next_listing(uninterrupted, tmp_path, capsys, monkeypatch):
    """The newest checkpoint listed is pruned before the reader opens it: no traceback, no damaged warning."""
    run = killed_copy(uninterrupted, tmp_path)
    real_pin, pruned = checkpoints.pin, []

    def pruned_after_listing(path, run_dir=None):
        if path.name == "step-0000120.safetensors" and not pruned:
            pruned.append(path)
            path.unlink()  # a trainer prunes it between the reader's listing and its open
        return real_pin(path, run_dir)

    monkeypatch.setattr(checkpoints, "pin", pruned_after_listing)
    _, _, identity = runs.load_run_weights(run)
    assert pruned and identity["weights"] == STEP_100 and identity["step"] == 100
    assert identity["sha256"] == hashlib.sha256((run / STEP_100).read_bytes()).hexdigest()
    assert capsys.readouterr().err == ""


def test_a_checkpoint_pruned_while_read_is_read_whole(uninterrupted, tmp_path, capsys, monkeypatch):
    """Pruned after the reader opened it: the open file is read to the end, its checksum is that of the bytes read."""
    run = killed_copy(uninterrupted, tmp_path)
    expected = hashlib.sha256((run / STEP_120).read_bytes()).hexdigest()
    real_read = checkpoints.read_pinned

    def pruned_while_read(pinned, *args, **kwargs):
        pinned.path.unlink(missing_ok=True)
        return real_read(pinned, *args, **kwargs)

    monkeypatch.setattr(checkpoints, "read_pinned", pruned_while_read)
    model, _, identity = runs.load_run_weights(run)
    assert identity == {"weights": STEP_120, "step": 120, "sha256": expected} and not (run / STEP_120).exists()
    assert capsys.readouterr().err == ""


def test_a_reader_waits_for_a_checkpoint_not_yet_recorded(uninterrupted, tmp_path, capsys):
    """Caught between a checkpoint's rename and its record in the manifest, a reader does not call it damaged."""
    run = killed_copy(uninterrupted, tmp_path)
    manifest = json.loads((run / "manifest.json").read_text())
    del manifest["files"][STEP_120]
    (run / "manifest.json").write_text(json.dumps(manifest))
    stamp = os.stat(run / "manifest.json").st_mtime_ns + 1
    os.utime(run / STEP_120, ns=(stamp, stamp))  # written after the manifest, as a trainer's newest is
    trainer = runs.RunLock(run)  # a trainer holds the run, so the reader knows a record may be on its way
    timer = threading.Timer(0.2, files.record, [run / STEP_120])
    timer.start()
    try:
        _, _, identity = runs.load_run_weights(run)
    finally:
        timer.join()
        trainer.release()
    assert identity["step"] == 120 and capsys.readouterr().err == ""


def test_a_reader_still_warns_about_a_damaged_checkpoint_once(uninterrupted, tmp_path, capsys):
    run = killed_copy(uninterrupted, tmp_path)
    data = bytearray((run / STEP_120).read_bytes())
    data[-1000] ^= 0xFF
    (run / STEP_120).write_bytes(bytes(data))
    _, _, identity = runs.load_run_weights(run)
    assert identity["step"] == 100
    assert "step-0000120.safetensors: damaged (its sha256 differs" in _error_line(capsys)


def test_weights_replaced_while_read_are_read_again(uninterrupted, tmp_path):
    """A pinned file the trainer replaced meanwhile is a race (read again), not damage."""
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    with files.Pinned(run / "model.safetensors") as pinned:
        tensors = load_file(str(run / "model.safetensors"))
        checkpoints.write_safetensors(run / "model.safetensors", {k: v + 1 for k, v in tensors.items()})
        assert pinned.settled_problem() == files.RACED
    _, _, identity = runs.load_run_weights(run)
    assert identity["sha256"] == json.loads((run / "manifest.json").read_text())["files"]["model.safetensors"]["sha256"]


# ---------------------------------------------------------------- weights that do not fit config.json
def test_weights_that_do_not_fit_the_config_name_the_tensor_and_both_shapes(uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["hidden"] = [32]
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunDirError, match=r"model.safetensors: weights do not match config.json: "
                                          r"encoder.0.weight has shape \(16, 784\), config.json builds \(32, 784\)"):
        runs.load_run(run)
    model = build_model(load_json(run / "config.json").model)
    with pytest.raises(RunDirError, match=r"step-0000120.safetensors does not match .*config.json: encoder.0.weight has shape "
                                          r"\(16, 784\), config.json builds \(32, 784\)"):
        checkpoints.restore(run, model, make_optimizer(model, TrainConfig(lr=1e-3), torch.device("cpu")), 600)


def test_missing_and_unexpected_weights_are_named(uninterrupted, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    (run / "manifest.json").unlink()
    tensors = load_file(str(run / "model.safetensors"))
    tensors["surplus.weight"] = tensors.pop("encoder.0.weight")
    save_file(tensors, str(run / "model.safetensors"))
    with pytest.raises(RunDirError, match=r"lacks encoder.0.weight, which config.json builds; holds surplus.weight, "
                                          r"which config.json does not build"):
        runs.load_run(run)


def test_atomic_writes_give_the_mode_open_would(tmp_path):
    """A report or config written atomically is readable by whoever could read a file written with open()."""
    umask = os.umask(0o022)
    try:
        files._FILE_MODE, saved = 0o644, files._FILE_MODE
        files.atomic_write_text(tmp_path / "report.md", "x")
        assert stat.S_IMODE((tmp_path / "report.md").stat().st_mode) == 0o644
    finally:
        files._FILE_MODE = saved
        os.umask(umask)
    assert files._file_mode() == 0o666 & ~umask
