"""Faults a crashing machine or a damaged disk causes: checkpoints by the clock, runs killed before their
first checkpoint, damaged checkpoints and weights (checksums, malformed contents, fallback to the next
older one), a full disk, a loss that diverges to a huge finite value."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import RESUMABLE_TRAIN, killed_copy
from vaelab.cli import main
from vaelab.errors import TrainingDiverged

STEP_120 = "checkpoints/step-0000120.safetensors"


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_checkpoints_are_written_by_the_clock_too(tiny_data, tmp_path):
    from vaelab.training.config import load_preset
    from vaelab.training.loop import train

    cfg = load_preset("vae")
    cfg.model.hidden, cfg.model.z_dim = (16,), 3
    cfg.data.data_dir, cfg.train.device = str(tiny_data), "cpu"
    cfg.train.steps, cfg.train.batch_size, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 12, 20, 1000, 100
    cfg.train.checkpoint_seconds = 1e-9  # every step is "a long time" after the last checkpoint
    train(cfg, tmp_path / "run", progress=False)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == [f"step-{s:07d}.safetensors" for s in range(1, 13)]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["files"]
    assert sorted(manifest) == ["checkpoints/" + n for n in names] + ["model.safetensors"]


def test_a_run_killed_before_its_first_checkpoint_starts_again_to_identical_weights(uninterrupted, tmp_path, capsys):
    run = killed_copy(uninterrupted, tmp_path)
    shutil.rmtree(run / "checkpoints")
    (run / "manifest.json").unlink()
    (run / "metrics.jsonl").write_text((uninterrupted / "metrics.jsonl").read_text().splitlines()[0] + "\n")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "no checkpoint yet" in _one_line(capsys)
    assert _same_weights(uninterrupted, run)
    def logged(r):
        return [_without(_without(json.loads(line), "seconds"), "images_per_second") for line in (r / "metrics.jsonl").read_text().splitlines()]

    assert logged(run) == logged(uninterrupted)


def _rewrite(path, tensors=None, metadata=None):
    """Rewrite a checkpoint as a well-formed safetensors file with changed contents."""
    old = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors(old) if tensors else old, str(path), metadata=metadata(meta) if metadata else meta)


def _flip_byte(path, offset_from_end=1000):
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def _without(mapping, key):
    return {k: v for k, v in mapping.items() if k != key}


def _with(mapping, **changes):
    return {**mapping, **changes}


def _first_adam_moment(tensors):
    key = next(k for k in tensors if k.endswith(".exp_avg"))
    return _with(tensors, **{key: tensors[key].flatten()[:-1].clone()})


# Damage checked by the manifest's checksums (any change to the bytes)...
CHECKSUM_DAMAGE = {
    "a flipped payload byte": lambda run: _flip_byte(run / STEP_120),
    "a truncated file": lambda run: (run / STEP_120).write_bytes((run / STEP_120).read_bytes()[:5000]),
    "no manifest entry (killed before recording it)": lambda run: (run / "manifest.json").write_text(json.dumps(
        {"files": _without(json.loads((run / "manifest.json").read_text())["files"], STEP_120)})),
}
# ...and by reading the contents, for run directories without a manifest (written before it existed).
CONTENT_DAMAGE = {
    "no batch_position": dict(metadata=lambda m: _without(m, "batch_position")),
    "batch_position not a number": dict(metadata=lambda m: _with(m, batch_position="abc")),
    "negative batch_position": dict(metadata=lambda m: _with(m, batch_position="-5")),
    "batch_position past the data": dict(metadata=lambda m: _with(m, batch_position="99999999")),
    "step disagreeing with the name": dict(metadata=lambda m: _with(m, step="7")),
    "log_names not JSON": dict(metadata=lambda m: _with(m, log_names="[oops")),
    "no param_groups": dict(metadata=lambda m: _without(m, "param_groups")),
    "elapsed_seconds nan": dict(metadata=lambda m: _with(m, elapsed_seconds="nan")),
    "no RNG state": dict(tensors=lambda t: _without(t, "state.rng_cpu")),
    "RNG state of the wrong size": dict(tensors=lambda t: _with(t, **{"state.rng_cpu": t["state.rng_cpu"][:100].clone()})),
    "batch order with a repeated index": dict(tensors=lambda t: _with(t, **{"state.batch_order": torch.zeros_like(t["state.batch_order"])})),
    "batch order of the wrong length": dict(tensors=lambda t: _with(t, **{"state.batch_order": t["state.batch_order"][:-1].clone()})),
    "log sums of the wrong shape": dict(tensors=lambda t: _with(t, **{"state.log_sums": torch.zeros(2)})),
    "an Adam moment of the wrong shape": dict(tensors=_first_adam_moment),
    "NaN weights": dict(tensors=lambda t: {k: v * float("nan") if k.startswith("model.") else v for k, v in t.items()}),
}


@pytest.mark.parametrize("damage", [*CHECKSUM_DAMAGE, *CONTENT_DAMAGE])
def test_resume_falls_back_from_a_damaged_checkpoint_to_the_next_older_one(uninterrupted, tmp_path, capsys, damage):
    run = killed_copy(uninterrupted, tmp_path)
    if damage in CHECKSUM_DAMAGE:
        CHECKSUM_DAMAGE[damage](run)
    else:
        (run / "manifest.json").unlink()
        _rewrite(run / STEP_120, **CONTENT_DAMAGE[damage])
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    warning = _one_line(capsys)
    assert "step-0000120.safetensors: damaged" in warning and "next older checkpoint" in warning
    assert (run / (STEP_120 + ".damaged")).is_file()  # kept for inspection, not deleted
    assert json.loads((run / "summary.json").read_text())["resumed_from_step"] == 100
    assert _same_weights(uninterrupted, run)


def test_no_intact_checkpoint_is_one_line(uninterrupted, tmp_path, capsys):
    run = killed_copy(uninterrupted, tmp_path)
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        _flip_byte(path)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and "no intact checkpoint (3 damaged" in err[-1]
    assert len(list((run / "checkpoints").glob("*.damaged"))) == 3


def test_damaged_final_weights_are_refused_and_written_again_by_resume(uninterrupted, tiny_data, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(uninterrupted, run)
    _flip_byte(run / "model.safetensors", 100)
    for command in (["eval", str(run), "--data-dir", str(tiny_data), "--device", "cpu"], ["sample", str(run), "--out", str(tmp_path / "s.png")]):
        assert main(command) == 1
        assert "model.safetensors: damaged (its sha256 differs" in _one_line(capsys)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "writing it again from the final checkpoint" in _one_line(capsys)
    assert _same_weights(uninterrupted, run)
    (run / "manifest.json").write_text("{not json")
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png")]) == 1
    assert "manifest.json: damaged" in _one_line(capsys)


def _run_vaelab(args, tmp_path, prelude="", file_size_limit=None):
    """vaelab in a fresh process, optionally with the size of any file it writes capped (EFBIG, as a full
    disk gives ENOSPC) and some Python run first."""
    code = f"import sys\n{prelude}\nfrom vaelab.cli import main\nsys.exit(main({args!r}))"

    def limit():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with an error instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit if file_size_limit else None)


def _no_temporaries(run):
    return not [p for p in run.rglob("*") if p.name.endswith(".tmp")]


def test_a_full_disk_while_checkpointing_is_one_line_and_loses_nothing(uninterrupted, tiny_data, tmp_path):
    run = tmp_path / "run"
    args = ["train", "vae", *RESUMABLE_TRAIN, "--data-dir", str(tiny_data), "--out", str(run)]
    done = _run_vaelab(args, tmp_path, file_size_limit=200_000)  # a checkpoint of this model is ~330 kB
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert "cannot write" in err[0] and "step-0000020.safetensors: " in err[0] and "File too large" in err[0]
    assert _no_temporaries(run) and (run / "config.json").is_file()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # space freed: the run continues
    assert _same_weights(uninterrupted, run)


def test_a_full_disk_under_tensorboard_is_one_line(tiny_data, tmp_path):
    """TensorBoard writes from its own thread; its failure is one line, not that thread's traceback."""
    run = tmp_path / "run"
    prelude = ("from tensorboard.summary.writer import record_writer\n"
               "def full(self, data):\n    raise OSError(28, 'No space left on device')\n"
               "record_writer.RecordWriter.write = full")
    done = _run_vaelab(["train", "vae", *RESUMABLE_TRAIN, "--data-dir", str(tiny_data), "--out", str(run)], tmp_path, prelude)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(err) == 1, done.stderr
    assert f"cannot write {run / 'tensorboard'}: No space left on device" in err[0]


def test_a_loss_diverging_to_huge_finite_values_stops_the_run(tiny_data, tmp_path, monkeypatch):
    import vaelab.training.loop as loop
    from vaelab.training.config import load_preset

    real = loop.training_loss

    def exploding(model, batch, cfg, beta):
        out = real(model, batch, cfg, beta)
        out.loss = out.loss * 1e6  # finite, far beyond any model of the data
        return out

    monkeypatch.setattr(loop, "training_loss", exploding)
    cfg = load_preset("vae")
    cfg.model.hidden, cfg.model.z_dim = (16,), 3
    cfg.data.data_dir, cfg.train.device = str(tiny_data), "cpu"
    cfg.train.steps, cfg.train.batch_size, cfg.train.log_every = 30, 20, 10
    with pytest.raises(TrainingDiverged, match=r"stopped at step 10: the mean loss .* beyond train.max_loss_per_element"):
        loop.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    cfg.train.max_loss_per_element = 0  # the limit can be lifted
    loop.train(cfg, tmp_path / "lifted", progress=False)


def test_an_empty_list_setting_is_refused_unless_written_as_a_list(tiny_data, tmp_path, capsys):
    base = ["train", "vae", "--steps", "3", "--batch-size", "20", "--data-dir", str(tiny_data), "--no-progress", "--device", "cpu"]
    assert main([*base, "--set", "model.hidden=", "--out", str(tmp_path / "a")]) == 1
    assert "model.hidden: empty value; write model.hidden=[]" in _one_line(capsys)
    assert not (tmp_path / "a").exists()
    assert main([*base, "--set", "model.hidden=[]", "--out", str(tmp_path / "b")]) == 0  # a linear encoder and decoder
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model"]["hidden"] == []
