"""The GPU benchmark (issue 16), one process, one device: vaelab's training loop against a plain loop at
batch 100 and 1,000, and the full-protocol evaluation at each matrix-product precision.

  python bench/gpu.py --data-dir DATA [--device cuda] [--out bench/results/gpu-<name>.json]

  (a) the reference VAE (MLPs 784-300-300, z = 10, Adam 1e-3) trained by `vaelab train vae --device D`
      (vaelab.training.train, logging and checkpoints included; loop time from its summary) for
      --steps-100 steps at batch 100 and --steps-1000 at batch 1,000; on CUDA also with the training step captured
      as a CUDA graph (train.cuda_graphs, training/captured.py), the same steps from the same seed (its loop time
      includes its 3 eager steps and the capture), and both runs' final logged loss;
  (b) a plain loop with the same networks, the training pixels on the device, a torch.bernoulli draw
      per batch and fused Adam (bench.plain_loop), the same steps;
  (c) `vaelab eval RUN --protocol full` on the model from (a) at batch 100, at fp32, tf32 (CUDA only)
      and bf16, each one's seconds and its bounds' difference from fp32.

On the CPU it runs too (with small --steps-*), which is how the test suite checks it; figures for a
GPU must come from a GPU. The device's name is recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import plain_loop, vaelab_loop  # noqa: E402

from vaelab import data as data_mod  # noqa: E402
from vaelab.devices import resolve_device  # noqa: E402
from vaelab.evaluation import evaluate  # noqa: E402
from vaelab.training.runs import load_run, provenance  # noqa: E402


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"


def captured(data_dir: str, steps: int, batch: int, device: torch.device, workdir: Path) -> dict:
    """vaelab with train.cuda_graphs: its speed, loop time and final logged loss; a failure is recorded, not raised,
    so that the eager and plain figures and the evaluation still come back."""
    try:
        speed, run = vaelab_loop(data_dir, steps, 0, workdir, {"device": str(device), "batch_size": batch, "cuda_graphs": True})
    except Exception as exc:  # noqa: BLE001 (the benchmark reports what went wrong and goes on)
        return {"captured_error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}
    summary = json.loads((run / "summary.json").read_text())
    return {"captured_images_per_second": speed, "captured_loop_seconds": summary["train_seconds"],
            "captured_final_loss": summary["final"]["loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps-100", type=int, default=20000, help="training steps at batch 100 (default 20,000)")
    parser.add_argument("--steps-1000", type=int, default=5000, help="training steps at the large batch (default 5,000)")
    parser.add_argument("--large-batch", type=int, default=1000, help="the large batch (default 1,000)")
    parser.add_argument("--iw", default="1,10,100,1000,5000", help="the evaluation's IWAE sample counts (default the full protocol's)")
    parser.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N test images only (default all)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = resolve_device(args.device)
    iws = tuple(int(m) for m in args.iw.split(","))

    results = {"device": device_name(device), "machine": provenance(), "command": " ".join(sys.argv),
               "settings": {"steps_100": args.steps_100, "steps_1000": args.steps_1000, "large_batch": args.large_batch, "iw": iws}}
    pixels = data_mod.load("mnist", "train", args.data_dir, device, False).pixels()
    training = results["training"] = {}

    def save() -> None:
        """The results so far, after each measurement: a run stopped by a time limit keeps what it measured."""
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        vaelab_loop(args.data_dir, 50, 0, workdir, {"device": str(device)})  # warm-up: first-call costs, untimed
        if device.type == "cuda":
            captured(args.data_dir, 50, 100, device, workdir)  # warm-up of the captured step too
        run_dir = None
        for batch, steps in ((100, args.steps_100), (args.large_batch, args.steps_1000)):
            ours, run = vaelab_loop(args.data_dir, steps, 0, workdir, {"device": str(device), "batch_size": batch})
            run_dir = run_dir or run
            summary = json.loads((run / "summary.json").read_text())
            plain = round(plain_loop(pixels, steps, 0, batch=batch, fused=True), 1)  # the ratio from the speed as stored
            training[f"batch_{batch}"] = {"steps": steps, "vaelab_images_per_second": ours, "vaelab_loop_seconds": summary["train_seconds"],
                                          "plain_images_per_second": plain, "plain_loop_seconds": round(steps * batch / plain, 2),
                                          "vaelab/plain": round(ours / plain, 3)}
            if device.type == "cuda":
                graph = captured(args.data_dir, steps, batch, device, workdir)
                if "captured_images_per_second" in graph:
                    speed = graph["captured_images_per_second"]
                    graph.update({"captured/plain": round(speed / plain, 3), "captured/eager": round(speed / ours, 3),
                                  "eager_final_loss": summary["final"]["loss"]})
                training[f"batch_{batch}"].update(graph)
            print(f"batch {batch}: {training[f'batch_{batch}']}", flush=True)
            save()

        model, _ = load_run(run_dir, device)
        test = data_mod.load("mnist", "test", args.data_dir, device, False)
        if args.eval_images:
            test = data_mod.ImageSet(test.images[: args.eval_images], test.labels[: args.eval_images], test.name)
        evaluations = {}
        for precision in ("fp32", "tf32", "bf16"):
            if precision == "tf32" and device.type != "cuda":
                continue
            evaluate(model, test, "full", (1, 2), precision=precision)  # warm-up, untimed
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = evaluate(model, test, "full", iws, precision=precision)
            evaluations[precision] = {"seconds": round(time.perf_counter() - start, 2),
                                      **{k: v for k, v in result.items() if k == "nelbo" or k.startswith("niwae_")}}
            if precision != "fp32":
                reference = evaluations["fp32"]
                evaluations[precision]["difference_from_fp32"] = {
                    k: round(v - reference[k], 4) for k, v in evaluations[precision].items() if k == "nelbo" or (k.startswith("niwae_") and not k.endswith("_sem"))}
            print(f"eval {precision}: {evaluations[precision]}", flush=True)
            results["evaluation_full_protocol"] = {"images": len(test), **evaluations}
            save()
    save()
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
