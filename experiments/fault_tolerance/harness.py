"""What every probe case uses: a Probe that runs `vaelab` in a fresh process, the case registry,
the small reference run and its copies, and the checks of an outcome (one error line, identical
weights, an unchanged folder)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file


SMALL = ["--steps", "60", "--batch-size", "50", "--hidden", "32", "--z-dim", "4", "--checkpoint-every", "20",
         "--log-every", "10", "--no-progress", "--device", "cpu"]
# The same run with no periodic checkpoint, to be stopped before its first one.
UNCHECKPOINTED = [*SMALL[:SMALL.index("--checkpoint-every")], "--checkpoint-every", "1000", *SMALL[SMALL.index("--log-every"):]]
CASES: list = []


def case(item: str, name: str):
    def register(fn):
        CASES.append((fn.__module__, item, name, fn))
        return fn
    return register


class Probe:
    def __init__(self, data: Path, work: Path):
        self.data, self.work, self.n = data, work, 0
        self.env = {**os.environ, "VAELAB_DATA": str(data)}

    def fresh(self, name: str) -> Path:
        self.n += 1
        path = self.work / f"{self.n:02d}-{name}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def run(self, *args, prelude: str = "", file_size_limit: int | None = None, env: dict | None = None, timeout=600):
        code = f"import sys\n{prelude}\nfrom vaelab.cli import main\nsys.exit(main({list(map(str, args))!r}))"

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

        return subprocess.run([sys.executable, "-c", code], env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, preexec_fn=limit if file_size_limit else None)

    def popen(self, *args):
        return subprocess.Popen([sys.executable, "-m", "vaelab", *map(str, args)], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def one_line_error(done, needle: str = "") -> tuple[bool, str]:
    """Exit != 0, no traceback, and exactly one error line, the last thing written to stderr (progress
    lines such as eval's "IWAE-10 (10 repeats) ..." may come before it)."""
    lines = done.stderr.strip().splitlines()
    errors = [line for line in lines if ": error: " in line or "interrupted by" in line]
    ok = (done.returncode not in (0, None) and len(errors) == 1 and lines[-1] == errors[0]
          and "Traceback" not in done.stderr and needle in errors[0])
    return ok, f"exit {done.returncode}: {(lines or [''])[-1][:300]}"


def wait_for_metrics(proc, run: Path) -> None:
    """Until the training process has logged its first line (or died, which is an error of the probe)."""
    while not (run / "metrics.jsonl").exists() or not (run / "metrics.jsonl").read_text():
        if proc.poll() is not None:
            raise RuntimeError(f"training ended early: {proc.stderr.read().strip()}")
        time.sleep(0.005)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ---------------------------------------------------------------- the reference run and its copies
def reference(p: Probe) -> Path:
    run = p.work / "reference"
    if not (run / "model.safetensors").exists():
        shutil.rmtree(run, ignore_errors=True)
        done = p.run("train", "vae", *SMALL, "--out", run)
        assert done.returncode == 0, done.stderr
    return run


def killed_after_final_checkpoint(p: Probe, name: str) -> Path:
    run = p.fresh(name) / "run"
    shutil.copytree(reference(p), run)
    (run / "model.safetensors").unlink()
    (run / "summary.json").unlink()
    return run


def recovers(p: Probe, run: Path, needle: str = "") -> tuple[bool, str]:
    done = p.run("train", "--resume", run, "--no-progress")
    lines = done.stderr.strip().splitlines()
    ok = done.returncode == 0 and "Traceback" not in done.stderr and all(needle in line for line in lines) and same_weights(reference(p), run)
    return ok, f"exit {done.returncode}, identical weights {done.returncode == 0 and same_weights(reference(p), run)}; stderr: {done.stderr.strip()[:300]}"


def rewrite(path: Path, tensors=None, metadata=None) -> None:
    old = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    save_file(tensors(old) if tensors else old, str(path), metadata=metadata(meta) if metadata else meta)


def flip(path: Path, from_end: int = 1000) -> None:
    raw = bytearray(path.read_bytes())
    raw[-from_end] ^= 0xFF
    path.write_bytes(bytes(raw))


NEWEST = "checkpoints/step-0000060.safetensors"

