"""Every fault we know of, tried through the command line as a hostile user and a crashing machine
would, and counted: each case must end in a one-line error (exit != 0, no traceback) that leaves what
was already written as it was, or in the documented recovery.

    python experiments/fault_tolerance/probe.py --data DATA --work WORK --out experiments/fault_tolerance

Runs on real MNIST with a small model (60 steps), a few minutes on 2 cores. Writes probe.json (every
case: what was done, what was expected, what happened) and prints the count.
"""

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import CASES, Probe  # noqa: E402

for _module in sorted(HERE.glob("cases_*.py")):  # each cases_*.py registers its cases on import
    importlib.import_module(_module.stem)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="folder for probe.json (written only when every case ran)")
    parser.add_argument("--only", help="run only the cases of modules whose name contains this (cases_faults, ...)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    probe = Probe(args.data, args.work)
    results = []
    for module, item, name, fn in CASES:
        if args.only and args.only not in module:
            continue
        start = time.perf_counter()
        try:
            ok, detail = fn(probe)
        except Exception as exc:  # the probe itself failing counts as not handled
            ok, detail = False, f"probe raised {type(exc).__name__}: {exc}"
        results.append({"group": module.removeprefix("cases_"), "item": item, "case": name, "handled": bool(ok), "detail": detail,
                        "seconds": round(time.perf_counter() - start, 1)})
        print(f"[{'ok' if ok else 'FAIL'}] {item:>7} {name}: {detail[:160]}", flush=True)
    handled = sum(r["handled"] for r in results)
    from vaelab.training.runs import provenance

    report = {"command": "python experiments/fault_tolerance/probe.py --data DATA --work WORK --out experiments/fault_tolerance",
              "cases_tried": len(results), "cases_handled": handled, "provenance": provenance(), "cases": results}
    if args.out and not args.only:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"{handled} of {len(results)} cases handled")
    if handled != len(results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
