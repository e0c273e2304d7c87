"""Peak memory of `vaelab eval RUN --protocol cs236 --iw 100000000`: sampled from /proc while it runs.

    python experiments/fault_tolerance/eval_memory.py RUN --seconds 300 --out experiments/fault_tolerance

m = 10^8 importance samples for each of the 100 images would take days on a CPU, so the command runs for
--seconds and is then stopped; memory must stay flat (IWAE evaluation streams chunks of samples into a
running logsumexp). The full run's length is extrapolated from a timed `--iw 10000` evaluation.
Writes eval_memory.json.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path


def status_kb(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run", type=Path)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    command = [sys.executable, "-m", "vaelab", "eval", str(args.run), "--protocol", "cs236", "--no-save", "--device", "cpu"]

    start = time.perf_counter()
    subprocess.run([*command, "--iw", "10000"], check=True, capture_output=True)
    seconds_10k = time.perf_counter() - start

    proc = subprocess.Popen([*command, "--iw", "100000000"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    start, series = time.perf_counter(), []
    while time.perf_counter() - start < args.seconds and proc.poll() is None:
        rss = status_kb(proc.pid, "VmRSS")
        if rss is not None:
            series.append((round(time.perf_counter() - start, 1), round(rss / 1024, 1)))
        time.sleep(1.0)
    peak = status_kb(proc.pid, "VmHWM")
    still_running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    result = {
        "command": " ".join(["vaelab", *command[3:], "--iw", "100000000"]),
        "ran_seconds": args.seconds,
        "still_running_when_stopped": still_running,
        "peak_rss_mb": round(peak / 1024, 1) if peak else None,
        "rss_mb_first_10s": [r for t, r in series if t < 10][-1:],
        "rss_mb_last": series[-1][1] if series else None,
        "rss_series_every_30s": series[::30],
        "seconds_for_iw_10000": round(seconds_10k, 1),
        "extrapolated_hours_for_iw_1e8": round(seconds_10k * 1e4 / 3600, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
