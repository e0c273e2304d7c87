"""Training speed on a shared CPU: one training alone against two at once, under each thread setting.

  python bench/loaded_cpu.py --data-dir DATA [--net mlp|conv] [--steps 3000] [--out FILE]

torch's OpenMP threads spin while they wait for work. On a machine whose cores are all busy (two
trainings on two cores, or any other job) a spinning thread holds a core its partner needs, and steps
slow down several times over. Each setting below trains the reference VAE (`vaelab train vae`, batch
100; `--net conv` for the convolutional one) for --steps steps, once alone and then as two processes
started together, and reports each process's steps per second (from its summary.json):

  spin       one thread per core, OMP_WAIT_POLICY=ACTIVE (waiting threads spin; libgomp's default spins
             for a while before it sleeps, which is how vaelab ran before issue 15)
  passive    one thread per core, OMP_WAIT_POLICY=PASSIVE (waiting threads sleep)
  threads-1  --threads 1
  default    vaelab's default: sleeping waiters, and the thread count chosen by the work in a step
             (training/threads.py: 1 thread for the MLP's step, one per core for the conv net's)

The machine must otherwise be idle.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CORES = str(os.cpu_count())
SETTINGS = {
    "spin": ({"OMP_WAIT_POLICY": "ACTIVE"}, ["--threads", CORES]),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", CORES]),
    "threads-1": ({"OMP_WAIT_POLICY": "PASSIVE"}, ["--threads", "1"]),
    "default": ({}, []),
}


def trainings(n: int, env_extra: dict, args: list, steps: int, data_dir: str, work: Path) -> list[tuple[float, int]]:
    """Steps per second and thread count of each of n trainings started together."""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"} | env_extra
    procs, runs = [], []
    for i in range(n):
        run = Path(tempfile.mkdtemp(dir=work)) / "run"
        runs.append(run)
        procs.append(subprocess.Popen([sys.executable, "-m", "vaelab", "train", "vae", "--steps", str(steps), "--data-dir", data_dir,
                                       "--device", "cpu", "--no-progress", "--out", str(run), *args],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(proc.stderr.read())
    summaries = [json.loads((run / "summary.json").read_text()) for run in runs]
    return [(round(steps / s["train_seconds"], 1), s["threads"]) for s in summaries]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--net", choices=["mlp", "conv"], default="mlp")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from vaelab.training.runs import provenance

    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, (env_extra, extra) in SETTINGS.items():
            extra = [*extra, "--net", args.net]
            alone = trainings(1, env_extra, extra, args.steps, args.data_dir, Path(work))
            together = trainings(2, env_extra, extra, args.steps, args.data_dir, Path(work))
            speeds = [speed for speed, _ in together]
            results[name] = {"threads": alone[0][1], "alone_steps_per_second": alone[0][0],
                             "two_at_once_steps_per_second": speeds, "two_at_once_total": round(sum(speeds), 1)}
            print(name, results[name], flush=True)
    report = {"command": f"python bench/loaded_cpu.py --data-dir DATA --net {args.net} --steps {args.steps}", "cores": os.cpu_count(),
              "settings": {k: {"env": v[0], "args": v[1]} for k, v in SETTINGS.items()}, "results": results,
              "provenance": provenance()}
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
