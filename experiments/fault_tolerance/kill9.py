"""kill -9 at random moments of the README's main job, resumed each time: the final weights must be
bit-identical to an uninterrupted run's.

    python experiments/fault_tolerance/kill9.py --data DATA --work WORK --out experiments/fault_tolerance [--kills 5]

Trains `vaelab train vae --seed 0` (20,000 steps) once without interruption (or takes --reference),
then again with --kills SIGKILLs at random steps, each followed by `vaelab train --resume`. Writes
kill9.json: the step each kill came at, the newest checkpoint it left, the step the last resume
continued from, and whether every weight tensor is equal.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def vaelab(*args) -> list[str]:
    return [sys.executable, "-m", "vaelab", *args]


def newest_checkpoint_step(run: Path) -> int | None:
    found = sorted((run / "checkpoints").glob("step-*.safetensors"))
    return int(found[-1].stem.split("-")[1]) if found else None


def last_logged_step(run: Path) -> int | None:
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
        return json.loads(lines[-1])["step"] if lines else None
    except (OSError, ValueError, KeyError):
        return None  # not yet written, or cut mid-line by the kill


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--reference", type=Path, help="an uninterrupted run to compare with, instead of training one")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "VAELAB_DATA": args.data}
    reference, killed = args.work / "uninterrupted", args.work / "killed"

    if args.reference:
        reference = args.reference  # an uninterrupted run of the same command and commit, made earlier
        duration = json.loads((reference / "summary.json").read_text())["train_seconds"]
    else:
        start = time.perf_counter()
        subprocess.run(vaelab("train", "vae", "--seed", "0", "--no-progress", "--out", str(reference)), env=env, check=True,
                       stdout=subprocess.DEVNULL)
        duration = time.perf_counter() - start

    # Kill moments: random steps over the whole run (the process is killed a random 0-2 s after its log
    # reaches the step, so kills fall between log lines and checkpoints too), whatever the machine's speed.
    targets = sorted(rng.sample(range(1, 19_900), args.kills))
    events = []
    command = vaelab("train", "vae", "--seed", "0", "--no-progress", "--out", str(killed))
    for target in targets:
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while (last_logged_step(killed) or 0) < target:
            if proc.poll() is not None:
                raise SystemExit(f"the run ended before step {target}: {proc.stderr.read().decode()}")
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        events.append({"target_step": target, "last_logged_step": last_logged_step(killed),
                       "newest_checkpoint_step": newest_checkpoint_step(killed)})
        command = vaelab("train", "--resume", str(killed), "--no-progress")
    resumed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if resumed.returncode != 0:
        raise SystemExit(resumed.stderr)
    summary = json.loads((killed / "summary.json").read_text())
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = {
        "command": "vaelab train vae --seed 0 (20,000 steps), killed with SIGKILL and resumed with vaelab train --resume",
        "uninterrupted_train_seconds": round(duration, 1),
        "kills": events,
        "last_resume_from_step": summary["resumed_from_step"],
        "warnings": resumed.stderr.strip().splitlines(),
        "weights_identical": identical,
        "tensors_compared": len(a),
        "provenance": {k: summary.get(k) for k in ("vaelab", "commit", "torch", "cpu", "threads")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kill9.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if not identical:
        raise SystemExit("weights differ")


if __name__ == "__main__":
    main()
