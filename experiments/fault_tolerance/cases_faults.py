"""Crashes, damaged files and bad input: two processes on one run, kills, damaged checkpoints and
weights, malformed configs, a full disk, signals, gzip bombs, a diverging loss, bad options."""

from __future__ import annotations

import gzip
import json
import os
import pickle
import shutil
import signal
import struct
from pathlib import Path

import numpy as np
import torch


from harness import (NEWEST, Probe, SMALL, UNCHECKPOINTED, case, flip, killed_after_final_checkpoint, one_line_error,
                     recovers, reference, rewrite, same_weights, snapshot, wait_for_metrics)


# ---------------------------------------------------------------- 1. two processes on one run
@case("1", "two trainings into one new --out at the same moment")
def _(p):
    run = p.fresh("two-trainings") / "run"
    procs = [p.popen("train", "vae", *SMALL, "--out", run) for _ in range(2)]
    codes = sorted(proc.wait() for proc in procs)
    errors = [proc.stderr.read().strip().splitlines() for proc in procs]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    ok = codes == [0, 1] and any(len(e) == 1 for e in errors) and steps == sorted(set(steps))
    return ok, f"exit codes {codes}; loser: {[e for e in errors if e]}"


@case("1", "--resume of a run another process is training")
def _(p):
    run = p.fresh("resume-while-training") / "run"
    proc = p.popen("train", "vae", *SMALL[:1], "3000", *SMALL[2:], "--out", run)
    wait_for_metrics(proc, run)
    done = p.run("train", "--resume", run, "--no-progress")
    ok, detail = one_line_error(done, "in use by another vaelab process")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return ok, detail


# ---------------------------------------------------------------- 2. a kill before the first checkpoint
@case("2", "kill -9 before the first checkpoint, then --resume")
def _(p):
    run = p.fresh("kill-before-checkpoint") / "run"
    proc = p.popen("train", "vae", *UNCHECKPOINTED, "--out", run)
    wait_for_metrics(proc, run)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    had = sorted((run / "checkpoints").glob("*")) if (run / "checkpoints").exists() else []
    ok, detail = recovers(p, run, "no checkpoint yet")
    return ok and not had, f"checkpoints at the kill: {len(had)}; {detail}"


# ---------------------------------------------------------------- 3. damaged checkpoints and weights
def _without(d, key):
    return {k: v for k, v in d.items() if k != key}


DAMAGE = {
    "a flipped byte in the newest checkpoint": lambda run: flip(run / NEWEST),
    "the newest checkpoint truncated": lambda run: (run / NEWEST).write_bytes((run / NEWEST).read_bytes()[:4000]),
    "the newest checkpoint missing from manifest.json": lambda run: (run / "manifest.json").write_text(json.dumps(
        {"files": _without(json.loads((run / "manifest.json").read_text())["files"], NEWEST)})),
}
LEGACY_DAMAGE = {  # run directories without a manifest: only the contents can tell
    "no batch_position": dict(metadata=lambda m: _without(m, "batch_position")),
    "batch_position 'abc'": dict(metadata=lambda m: {**m, "batch_position": "abc"}),
    "batch_position past the data": dict(metadata=lambda m: {**m, "batch_position": "10000000"}),
    "no RNG state": dict(tensors=lambda t: _without(t, "state.rng_cpu")),
    "a batch order that is not a permutation": dict(tensors=lambda t: {**t, "state.batch_order": torch.zeros_like(t["state.batch_order"])}),
    "an index out of range in the batch order": dict(tensors=lambda t: {**t, "state.batch_order": t["state.batch_order"] + 10**6}),
    "no param_groups": dict(metadata=lambda m: _without(m, "param_groups")),
    "NaN weights": dict(tensors=lambda t: {k: v * float("nan") if k.startswith("model.") else v for k, v in t.items()}),
}

for _name, _damage in DAMAGE.items():
    @case("3", f"--resume with {_name}")
    def _(p, damage=_damage, name=_name):
        run = killed_after_final_checkpoint(p, "damaged")
        damage(run)
        return recovers(p, run, "damaged")

for _name, _damage in LEGACY_DAMAGE.items():
    @case("3", f"--resume with {_name} (no manifest)")
    def _(p, damage=_damage, name=_name):
        run = killed_after_final_checkpoint(p, "damaged-legacy")
        (run / "manifest.json").unlink()
        rewrite(run / NEWEST, **damage)
        return recovers(p, run, "damaged")


@case("3", "--resume with every checkpoint damaged")
def _(p):
    run = killed_after_final_checkpoint(p, "all-damaged")
    for path in (run / "checkpoints").glob("step-*.safetensors"):
        flip(path)
    done = p.run("train", "--resume", run, "--no-progress")
    last = done.stderr.strip().splitlines()[-1:]
    ok = done.returncode == 1 and "Traceback" not in done.stderr and "no intact checkpoint" in "".join(last) \
        and len(list((run / "checkpoints").glob("*.damaged"))) == 3
    return ok, f"exit {done.returncode}; {done.stderr.strip()[:400]}"


@case("3", "eval of a run whose model.safetensors has a flipped byte")
def _(p):
    run = p.fresh("damaged-weights") / "run"
    shutil.copytree(reference(p), run)
    flip(run / "model.safetensors", 100)
    before = snapshot(run)
    ok, detail = one_line_error(p.run("eval", run, "--device", "cpu"), "damaged")
    return ok and snapshot(run) == before, detail


@case("3", "--resume of a finished run whose model.safetensors has a flipped byte")
def _(p):
    run = p.fresh("damaged-weights-resume") / "run"
    shutil.copytree(reference(p), run)
    flip(run / "model.safetensors", 100)
    return recovers(p, run, "writing it again")


# ---------------------------------------------------------------- 4. configs, wherever they are read
def edited_config(p: Probe, name: str, edit) -> Path:
    run = p.fresh(name) / "run"
    shutil.copytree(reference(p), run)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(edit(cfg))
    return run


def model_edit(**changes):
    return lambda cfg: json.dumps({**cfg, "model": {**cfg["model"], **changes}})


CONFIG_EDITS = {
    "config.json with hidden [1000000, 1000000]": model_edit(hidden=[1000000, 1000000]),
    "config.json with z_dim -5": model_edit(z_dim=-5),
    "config.json with an unknown activation": model_edit(activation="swishy"),
    "config.json that is a JSON list": lambda cfg: "[1, 2, 3]",
    "config.json nested 100,000 deep": lambda cfg: "[" * 100000 + "]" * 100000,
    "config.json with steps 1e400": lambda cfg: json.dumps(cfg).replace('"steps": 60', '"steps": 1e400'),
}
for _name, _edit in CONFIG_EDITS.items():
    for _command in ("eval", "sample"):
        @case("4", f"{_command} of a run with {_name}")
        def _(p, edit=_edit, command=_command):
            run = edited_config(p, "config", edit)
            before = snapshot(run)
            extra = ["--device", "cpu"] if command == "eval" else ["--out", run.parent / "samples.png"]
            ok, detail = one_line_error(p.run(command, run, *extra), "config.json")
            return ok and snapshot(run) == before, detail


@case("4", "train --hidden 1000000000")
def _(p):
    out = p.fresh("huge-hidden") / "run"
    ok, detail = one_line_error(p.run("train", "vae", *SMALL, "--hidden", "1000000000", "--out", out), "parameters")
    return ok and not out.exists(), detail


# ---------------------------------------------------------------- 6. metrics and the final checkpoint
@case("6", "a kill after the final checkpoint, mid-append of a metrics line, then --resume")
def _(p):
    run = killed_after_final_checkpoint(p, "partial-metrics")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 61, "lo')
    return recovers(p, run)


@case("6", "--resume with a damaged line inside metrics.jsonl")
def _(p):
    run = killed_after_final_checkpoint(p, "damaged-metrics")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines[2] = "garbage"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    before = snapshot(run)
    ok, detail = one_line_error(p.run("train", "--resume", run, "--no-progress"), "metrics.jsonl: line 3")
    return ok and snapshot(run) == before, detail


# ---------------------------------------------------------------- 7. a full disk, stale temporaries
@case("7", "a full disk when the first checkpoint is written (file-size limit 150 kB)")
def _(p):
    run = p.fresh("full-disk") / "run"
    done = p.run("train", "vae", *SMALL, "--out", run, file_size_limit=150_000)
    ok, detail = one_line_error(done, "cannot write")
    left = [q.name for q in run.rglob("*.tmp")]
    recovered = p.run("train", "--resume", run, "--no-progress")
    ok = ok and not left and recovered.returncode == 0 and same_weights(reference(p), run)
    return ok, f"{detail}; temporaries left {left}; resumed with space: exit {recovered.returncode}"


@case("7", "a full disk under TensorBoard's writer thread")
def _(p):
    run = p.fresh("full-disk-tensorboard") / "run"
    prelude = ("from tensorboard.summary.writer import record_writer\n"
               "def full(self, data):\n    raise OSError(28, 'No space left on device')\n"
               "record_writer.RecordWriter.write = full")
    return one_line_error(p.run("train", "vae", *SMALL, "--out", run, prelude=prelude), "tensorboard")


@case("7", "a full disk when eval writes its JSON (file-size limit 100 bytes)")
def _(p):
    run = p.fresh("full-disk-eval") / "run"
    shutil.copytree(reference(p), run)
    before = snapshot(run)
    ok, detail = one_line_error(p.run("eval", run, "--device", "cpu", file_size_limit=100), "cannot write")
    return ok and snapshot(run) == before, detail


@case("7", "stale temporary files of a killed write, then --resume")
def _(p):
    run = killed_after_final_checkpoint(p, "stale-tmp")
    stale = run / "checkpoints" / ".step-0000060.safetensors.x1y2.tmp"
    stale.write_bytes(b"half")
    ok, detail = recovers(p, run)
    return ok and not stale.exists(), detail


# ---------------------------------------------------------------- 8. interrupts
for _sig in (signal.SIGINT, signal.SIGTERM):
    @case("8", f"{_sig.name} during training, then --resume")
    def _(p, signum=_sig):
        run = p.fresh(signum.name) / "run"
        proc = p.popen("train", "vae", *UNCHECKPOINTED, "--out", run)
        wait_for_metrics(proc, run)
        proc.send_signal(signum)
        code = proc.wait()
        message = proc.stderr.read().strip().splitlines()
        ok, detail = recovers(p, run)
        ok = ok and code == 128 + signum and len(message) == 1 and "--resume" in message[0]
        return ok, f"exit {code}: {message}; {detail}"


# ---------------------------------------------------------------- 9. the smaller ones
@case("9", "--set train.steps=1e400")
def _(p):
    return one_line_error(p.run("train", "vae", "--set", "train.steps=1e400", "--out", p.fresh("overflow") / "run"), "train.steps")


@case("9", "--seed 18446744073709551616 (2^64)")
def _(p):
    return one_line_error(p.run("train", "vae", "--seed", str(2**64), "--out", p.fresh("seed") / "run"), "seed")


@case("9", "--set model.hidden= (empty)")
def _(p):
    return one_line_error(p.run("train", "vae", *SMALL, "--set", "model.hidden=", "--out", p.fresh("empty-hidden") / "run"), "model.hidden")


@case("9", "an SVHN .mat whose header declares a negative dimension")
def _(p):
    import scipy.io

    root = p.fresh("svhn-negative")
    (root / "svhn").mkdir()
    path = root / "svhn" / "train_32x32.mat"
    rng = np.random.default_rng(0)
    scipy.io.savemat(path, {"X": rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8), "y": (np.arange(12) % 10 + 1).reshape(12, 1).astype(np.uint8)})
    raw = bytearray(path.read_bytes())
    at = raw.find(struct.pack("<4i", 32, 32, 3, 12))
    raw[at : at + 16] = struct.pack("<4i", 32, 32, 3, -12)
    path.write_bytes(bytes(raw))
    return one_line_error(p.run("train", "vae", *SMALL, "--dataset", "svhn", "--likelihood", "gaussian", "--no-download",
                                "--data-dir", root, "--out", root / "run"), "negative dimension")


@case("9", "a 6.8 MB gzip bomb as train-images (peak memory of the process under 1 GB; it was 3.2 GB)")
def _(p):
    root = p.fresh("gzip-bomb")
    shutil.copytree(p.data / "mnist", root / "mnist", ignore=shutil.ignore_patterns("train-images*"))
    with gzip.open(root / "mnist" / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 8_750_000, 28, 28))  # 6.9 GB of zeros declared
        for _ in range(6):
            f.write(bytes(1 << 30))
    size = (root / "mnist" / "train-images-idx3-ubyte.gz").stat().st_size
    peak_file = root / "peak-kb"
    prelude = ("import atexit, resource\n"
               f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))")
    ok, detail = one_line_error(p.run("train", "vae", *SMALL, "--data-dir", root, "--out", root / "run", prelude=prelude))
    peak_mb = int(peak_file.read_text()) / 1024
    return ok and peak_mb < 1024, f"{size / 1e6:.1f} MB gzip declaring 6.9 GB; peak RSS of the process {peak_mb:.0f} MB; {detail}"


@case("9", "a gzip bomb within the size limit (1.3 million images declared) beside 60,000 labels")
def _(p):
    root = p.fresh("gzip-bomb-within-limit")
    shutil.copytree(p.data / "mnist", root / "mnist", ignore=shutil.ignore_patterns("train-images*"))
    with gzip.open(root / "mnist" / "train-images-idx3-ubyte.gz", "wb", compresslevel=9) as f:
        f.write(bytes([0, 0, 8, 3]) + struct.pack(">3I", 1_300_000, 28, 28))  # 1.02 GB declared, under the 1 GiB limit
        f.write(bytes(1_300_000 * 784))
    peak_file = root / "peak-kb"
    prelude = ("import atexit, resource\n"
               f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))")
    ok, detail = one_line_error(p.run("train", "vae", *SMALL, "--data-dir", root, "--out", root / "run", prelude=prelude), "labels")
    peak_mb = int(peak_file.read_text()) / 1024
    return ok and peak_mb < 1024, f"peak RSS of the process {peak_mb:.0f} MB; {detail}"


@case("9", "a loss diverging to huge finite values (--lr 1)")
def _(p):
    out = p.fresh("diverging") / "run"
    ok, detail = one_line_error(p.run("train", "vae", *SMALL, "--lr", "1", "--out", out),
                                "max_loss_per_element")
    return ok and not (out / "model.safetensors").exists(), detail


# ---------------------------------------------------------------- bad input in general
@case("general", "an unknown model")
def _(p):
    return one_line_error(p.run("train", "vea", "--out", p.fresh("unknown-model") / "run"))


@case("general", "an unknown --set key")
def _(p):
    return one_line_error(p.run("train", "vae", "--set", "train.stpes=5", "--out", p.fresh("unknown-key") / "run"), "train.stpes")


@case("general", "--set train.steps=abc")
def _(p):
    return one_line_error(p.run("train", "vae", "--set", "train.steps=abc", "--out", p.fresh("bad-type") / "run"), "train.steps")


@case("general", "a missing data directory")
def _(p):
    return one_line_error(p.run("train", "vae", "--data-dir", "/nonexistent", "--out", p.fresh("no-data") / "run"), "/nonexistent")


@case("general", "random bytes as train-labels")
def _(p):
    root = p.fresh("corrupt-idx")
    shutil.copytree(p.data / "mnist", root / "mnist", ignore=shutil.ignore_patterns("train-labels*"))
    (root / "mnist" / "train-labels-idx1-ubyte").write_bytes(os.urandom(5000))
    return one_line_error(p.run("train", "vae", *SMALL, "--data-dir", root, "--out", root / "run"), "train-labels")


@case("general", "train into a non-empty --out")
def _(p):
    run = p.fresh("non-empty") / "run"
    shutil.copytree(reference(p), run)
    before = snapshot(run)
    ok, detail = one_line_error(p.run("train", "vae", *SMALL, "--out", run), "--out")
    return ok and snapshot(run) == before, detail


@case("general", "eval of a run directory that does not exist")
def _(p):
    return one_line_error(p.run("eval", p.work / "nowhere"), "nowhere")


@case("general", "a pickle in place of model.safetensors (its payload must never run)")
def _(p):
    run = p.fresh("pickle") / "run"
    shutil.copytree(reference(p), run)
    (run / "manifest.json").unlink()
    marker = run.parent / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (run / "model.safetensors").write_bytes(pickle.dumps(Exploit()))
    ok, detail = one_line_error(p.run("eval", run, "--device", "cpu"), "model.safetensors")
    return ok and not marker.exists(), detail


@case("general", "eval --iw 0")
def _(p):
    return one_line_error(p.run("eval", reference(p), "--iw", "0"), "--iw")


@case("general", "--batch-size 0")
def _(p):
    return one_line_error(p.run("train", "vae", "--batch-size", "0", "--out", p.fresh("batch0") / "run"), "batch")


@case("general", "--resume of a folder that is not a run")
def _(p):
    return one_line_error(p.run("train", "--resume", p.fresh("not-a-run"), "--no-progress"), "not a vaelab run directory")


