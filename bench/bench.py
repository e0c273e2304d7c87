"""Speed benchmark (issue 6), one process, one machine, one set of settings.

  (a) vaelab training throughput for the reference VAE (batch 100, v1 MLPs 784-300-300, z = 10),
      through vaelab.training.train exactly as `vaelab train vae` runs it (logging, TensorBoard,
      checkpoints included), eager (the default) and with --compile (after one untimed compiling
      run, whose time is reported separately);
  (b) the same model as a minimal plain PyTorch loop written here: training pixels as one float
      tensor, a fresh torch.bernoulli draw per batch, closed-form Gaussian KL, Adam (torch's default
      update); for transparency also with vaelab's two speed choices, the fused Adam kernel and
      the 1[u < pixel] draw ("plain_tuned"), which shows what vaelab's own code costs;
  (c) pythae 0.1.2's VAE and BaseTrainer with the same MLPs (pythae has no dynamic binarization,
      so it gets the training set binarized once; its DataLoader collates per item);
  (d) IWAE-1000 on all 10,000 test images with vaelab.evaluation.iwae_per_image, in importance
      samples per second, beside the FLOP bound: measured matmul GFLOP/s / decoder FLOPs per sample;
      eager (`vaelab eval`'s default) and through torch.compile (`vaelab eval --compile`).

Training figures are the median of `--repeats` interleaved measurements of `--steps` steps each.
Run it with bench/run.sh, which builds the benchmark's own virtual environment.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import vaelab
from vaelab import data as data_mod
from vaelab.training.config import load_preset
from vaelab.evaluation import iwae_per_image
from vaelab.training.runs import load_run, provenance
from vaelab.training.loop import train as vaelab_train

X_DIM, Z_DIM, HIDDEN, BATCH, LR = 784, 10, 300, 100, 1e-3


def mlp(n_in: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, HIDDEN), nn.ELU(), nn.Linear(HIDDEN, n_out))


def decoder_flops_per_sample() -> int:
    """Multiply-adds x 2 of the decoder's three matmuls for one z (biases and activations not counted)."""
    return 2 * (Z_DIM * HIDDEN + HIDDEN * HIDDEN + HIDDEN * X_DIM)


def matmul_gflops(seconds: float = 3.0) -> dict:
    """Sustained float32 GEMM rate: a large square product (the machine's peak as torch reaches it)
    and the decoder's own output layer at evaluation size, (20,000 x 300) @ (300 x 784)."""
    out = {}
    for name, (m, k, n) in {"square_2048": (2048, 2048, 2048), "decoder_output_layer": (20000, HIDDEN, X_DIM)}.items():
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
        out[name] = round(2 * m * k * n * count / (time.perf_counter() - start) / 1e9, 1)
    return out


def plain_step(pixels: torch.Tensor, tuned: bool = False, fused: bool | None = None):
    """One step of a minimal VAE training loop on the batch pixels[index]: per-batch Bernoulli draw,
    closed-form KL, Adam, as such a loop is usually written (torch.bernoulli, torch's default Adam
    update); tuned=True takes vaelab's two speed choices instead (the fused Adam kernel, the draw as
    1[u < pixel]); fused=True only the fused Adam kernel. The networks live on pixels' device.
    Returns step(index)."""
    encoder, decoder = mlp(X_DIM, 2 * Z_DIM).to(pixels.device), mlp(Z_DIM, X_DIM).to(pixels.device)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=LR, fused=tuned or fused or None)
    draw = (lambda p: (torch.rand_like(p) < p).to(p.dtype)) if tuned else torch.bernoulli

    def step(index):
        x = draw(pixels[index])
        mean, pre = encoder(x).chunk(2, dim=-1)
        var = F.softplus(pre) + 1e-8
        z = mean + var.sqrt() * torch.randn_like(mean)
        rec = F.binary_cross_entropy_with_logits(decoder(z), x, reduction="none").sum(-1)
        kl = 0.5 * (var + mean.pow(2) - 1 - var.log()).sum(-1)
        loss = (rec + kl).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def plain_loop(pixels: torch.Tensor, steps: int, seed: int, tuned: bool = False, batch: int = BATCH,
               fused: bool | None = None) -> float:
    """Images/s of the plain loop (plain_step) over a tensor on its device, batches in shuffled order
    (the clock stops after the device has finished)."""
    torch.manual_seed(seed)
    step = plain_step(pixels, tuned, fused)
    n = pixels.shape[0]
    order = torch.randperm(n, device=pixels.device)
    for i in range(20):  # warm-up, untimed
        step(order[i * batch : (i + 1) * batch])
    _finish(pixels.device)
    start = time.perf_counter()
    pos = n
    for _ in range(steps):
        if pos + batch > n:
            order, pos = torch.randperm(n, device=pixels.device), 0
        step(order[pos : pos + batch])
        pos += batch
    _finish(pixels.device)
    return steps * batch / (time.perf_counter() - start)


def _finish(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def vaelab_loop(data_dir: str, steps: int, seed: int, workdir: Path, extra: dict) -> tuple[float, Path]:
    """Images/s as vaelab's own summary reports it for `vaelab train vae --steps N` (cold start included);
    `extra` sets train.* keys (device, batch_size, ...)."""
    cfg = load_preset("vae")
    cfg.train.steps, cfg.train.seed, cfg.train.device = steps, seed, "cpu"
    cfg.train.checkpoint_every = steps
    cfg.data.data_dir = data_dir
    for key, value in extra.items():
        setattr(cfg.train, key, value)
    run_dir = Path(tempfile.mkdtemp(dir=workdir, prefix="vaelab-"))
    threads = torch.get_num_threads()
    try:
        summary = vaelab_train(cfg, run_dir, progress=False)
    finally:
        torch.set_num_threads(threads)  # train.threads is process-wide; later measurements get the default
    return summary["images_per_second"], run_dir


def pythae_loop(binary_train: torch.Tensor, steps: int, seed: int, workdir: Path) -> float:
    """Images/s of pythae 0.1.2's BaseTrainer.train_step over `steps` batches of 100 (setup untimed)."""
    from pythae.data.datasets import BaseDataset
    from pythae.models import VAE, VAEConfig
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    class Encoder(BaseEncoder):
        def __init__(self):
            super().__init__()
            self.net = mlp(X_DIM, 2 * Z_DIM)

        def forward(self, x):
            mean, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            return ModelOutput(embedding=mean, log_covariance=log_var)

    class Decoder(BaseDecoder):
        def __init__(self):
            super().__init__()
            self.net = mlp(Z_DIM, X_DIM)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    torch.manual_seed(seed)
    n_images = steps * BATCH
    train_set = BaseDataset(binary_train[:n_images], torch.zeros(n_images))
    model = VAE(VAEConfig(input_dim=(X_DIM,), latent_dim=Z_DIM, reconstruction_loss="bce"), encoder=Encoder(), decoder=Decoder())
    config = BaseTrainerConfig(output_dir=str(workdir / "pythae"), per_device_train_batch_size=BATCH, num_epochs=1,
                               learning_rate=LR, optimizer_cls="Adam", no_cuda=True, seed=seed)
    trainer = BaseTrainer(model, train_set, training_config=config)
    trainer.prepare_training()
    trainer.callback_handler = _Callbacks()
    start = time.perf_counter()
    trainer.train_step(epoch=1)  # one pass over steps * 100 images = `steps` optimiser steps
    return n_images / (time.perf_counter() - start)


class _Callbacks:
    """No-op stand-in for pythae's callback handler (train() would install a tqdm progress bar)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def iwae_throughput(run_dir: Path, data_dir: str, k: int, images: int | None, compile: bool = False) -> dict:
    """IWAE-k on the test images as `vaelab eval` computes it (with --compile: through torch.compile(model),
    compiled during an untimed warm-up on 50 images whose chunks have the measured run's shapes)."""
    model, cfg = load_run(run_dir, torch.device("cpu"))
    model.eval()
    runner = torch.compile(model) if compile else model
    test = data_mod.load("mnist", "test", data_dir, "cpu", False)
    x = data_mod.binarized_test_set(test, 0)[:images]
    torch.manual_seed(0)
    start = time.perf_counter()
    iwae_per_image(runner, x[:50], k)  # warm-up (compiles with compile=True)
    warmup = time.perf_counter() - start
    torch.manual_seed(0)
    start = time.perf_counter()
    bound = iwae_per_image(runner, x, k)
    seconds = time.perf_counter() - start
    return {"images": int(x.shape[0]), "k": k, "compiled": compile, "warmup_seconds": round(warmup, 2), "seconds": round(seconds, 2),
            "samples_per_second": round(x.shape[0] * k / seconds), "niwae": round(float(-bound.mean()), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--steps", type=int, default=1500, help="optimiser steps per training measurement (default 1500)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved measurements per trainer (default 5)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples per image in (d) (default 1000)")
    parser.add_argument("--iwae-images", type=int, default=None, help="test images in (d) (default all 10,000)")
    parser.add_argument("--iwae-run", type=Path, default=None,
                        help="a trained vae run directory for (d) (default: the model trained in (a))")
    parser.add_argument("--skip-pythae", action="store_true")
    parser.add_argument("--skip-compile", action="store_true", help="no --compile measurement (it needs a C compiler)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/latest.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    train_set = data_mod.load("mnist", "train", args.data_dir, "cpu", False)
    pixels = train_set.pixels()
    binary_train = data_mod.binarize(pixels, torch.Generator().manual_seed(0))
    results = {"machine": {**provenance(), "python": platform.python_version(), "vaelab_version": vaelab.__version__,
                           "cores_visible": torch.get_num_threads()},
               "settings": {"steps": args.steps, "repeats": args.repeats, "batch": BATCH, "z_dim": Z_DIM, "hidden": [HIDDEN, HIDDEN]}}
    print(f"machine: {results['machine']}", flush=True)
    results["matmul_gflops"] = matmul_gflops()
    print(f"matmul GFLOP/s: {results['matmul_gflops']}", flush=True)

    measured = {"vaelab": [], "vaelab_compile": [], "plain": [], "plain_tuned": [], "pythae": []}
    with tempfile.TemporaryDirectory() as tmp:
        workdir, run_dir = Path(tmp), None
        vaelab_loop(args.data_dir, 50, 0, workdir, {})  # warm-up (first-call costs), untimed
        first_speed, run_dir = vaelab_loop(args.data_dir, args.steps, 0, workdir, {})
        # (d) before anything is compiled: after torch.compile has run in a process, eager kernels
        # in that process ran about 20% slower on this machine (docs/performance.md).
        iwae = {"eager": iwae_throughput(args.iwae_run or run_dir, args.data_dir, args.k, args.iwae_images)}
        print(f"IWAE-{args.k}: {iwae['eager']}", flush=True)
        if not args.skip_compile:
            iwae["compiled"] = iwae_throughput(args.iwae_run or run_dir, args.data_dir, args.k, args.iwae_images, compile=True)
            print(f"IWAE-{args.k} compiled: {iwae['compiled']}", flush=True)
            start = time.perf_counter()
            vaelab_loop(args.data_dir, 50, 0, workdir, {"compile": True})  # compiles; later runs reuse the compiled code
            results["compile_warmup_seconds"] = round(time.perf_counter() - start, 1)
            print(f"torch.compile warm-up (50 steps): {results['compile_warmup_seconds']} s", flush=True)
        for r in range(args.repeats):
            speed = first_speed if r == 0 else vaelab_loop(args.data_dir, args.steps, r, workdir, {})[0]
            measured["vaelab"].append(speed)
            if not args.skip_compile:
                measured["vaelab_compile"].append(vaelab_loop(args.data_dir, args.steps, r, workdir, {"compile": True})[0])
            measured["plain"].append(plain_loop(pixels, args.steps, r))
            measured["plain_tuned"].append(plain_loop(pixels, args.steps, r, tuned=True))
            if not args.skip_pythae:
                measured["pythae"].append(pythae_loop(binary_train, min(args.steps, 600), r, workdir))
            print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.0f} img/s" for k, v in measured.items() if v), flush=True)
        results["training_images_per_second"] = {k: {"median": round(statistics.median(v), 1), "all": [round(s, 1) for s in v]}
                                                 for k, v in measured.items() if v}
        train_ips = results["training_images_per_second"]
        results["ratios"] = {f"{ours}/{theirs}": round(train_ips[ours]["median"] / train_ips[theirs]["median"], 3)
                             for ours in ("vaelab", "vaelab_compile") for theirs in ("plain", "plain_tuned", "pythae")
                             if ours in train_ips and theirs in train_ips}
    peak = results["matmul_gflops"]["square_2048"]
    bound = round(peak * 1e9 / decoder_flops_per_sample())
    for case in iwae.values():
        case["flop_bound_samples_per_second"] = bound
        case["fraction_of_bound"] = round(case["samples_per_second"] / bound, 3)
        case["decoder_flops_per_sample"] = decoder_flops_per_sample()
    results["iwae"] = iwae
    print(json.dumps({k: results[k] for k in ("training_images_per_second", "ratios", "iwae")}, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
