"""kill -9 at random moments of the README's main job, resumed each time: the final weights must be
bit-identical to an uninterrupted run's.

    python experiments/fault_tolerance/kill9.py --data DATA --work WORK --out experiments/fault_tolerance [--kills 5]

Trains `vaelab train vae --seed 0` (20,000 steps) once without interruption, then again with --kills
SIGKILLs at moments drawn uniformly over the expected remaining time, each followed by
`vaelab train --resume`. Writes kill9.json: the kill moments, the step of the newest checkpoint each
kill left, the step each resume continued from, and whether every weight tensor is equal.
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
    args = parser.parse_args()
    rng = random.Random(args.seed)
    env = {**os.environ, "VAELAB_DATA": args.data}
    reference, killed = args.work / "uninterrupted", args.work / "killed"

    start = time.perf_counter()
    subprocess.run(vaelab("train", "vae", "--seed", "0", "--no-progress", "--out", str(reference)), env=env, check=True,
                   stdout=subprocess.DEVNULL)
    duration = time.perf_counter() - start

    events = []
    command = vaelab("train", "vae", "--seed", "0", "--no-progress", "--out", str(killed))
    remaining = duration
    for _ in range(args.kills):
        at = rng.uniform(0.5, 0.9 * remaining)
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(at)
        if proc.poll() is not None:
            raise SystemExit(f"finished before the kill at {at:.1f} s: {proc.stderr.read().decode()}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        events.append({"killed_after_seconds": round(at, 1), "last_logged_step": last_logged_step(killed),
                       "newest_checkpoint_step": newest_checkpoint_step(killed)})
        remaining = max(remaining - at + 5, 10)
        command = vaelab("train", "--resume", str(killed), "--no-progress")
    resumed = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if resumed.returncode != 0:
        raise SystemExit(resumed.stderr)
    summary = json.loads((killed / "summary.json").read_text())
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    identical = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    result = {
        "command": "vaelab train vae --seed 0 (20,000 steps), killed with SIGKILL and resumed with vaelab train --resume",
        "uninterrupted_seconds": round(duration, 1),
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
