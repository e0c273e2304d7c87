"""Memory: options that asked for more memory than a machine has (a million samples, k = 100,000, a traversal of a
VQ-VAE's 784-entry code grid) and the dSprites set held as 3 GB of uint8 beside a second copy. Each case runs the
command in a fresh process under an address-space limit (RLIMIT_AS) and checks its outcome and peak RSS (ru_maxrss):
a refusal must be one error line, written before the memory it would have cost; a command that runs must stay under
its stated bound and write PNGs of at most 16,384 pixels a side.

The dSprites cases generate the set once into WORK/dsprites-data (2.3 minutes on 2 idle cores, longer on busy ones);
later runs reuse it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from harness import Probe, case, one_line_error, reference, snapshot

LIMIT_GB = 6
"""Address space each command may take: a regression fails with MemoryError here instead of swamping the machine."""
MAX_SIDE = 16_384


def measured(p: Probe, *args, limit_gb: int = LIMIT_GB):
    """Run `vaelab *args` under RLIMIT_AS; (the finished process, its peak RSS in MB)."""
    peak_file = p.work / f".peak-{time.monotonic_ns()}"
    prelude = ("import atexit, resource\n"
               f"resource.setrlimit(resource.RLIMIT_AS, ({limit_gb << 30}, {limit_gb << 30}))\n"
               f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))")
    done = p.run(*args, prelude=prelude, timeout=1800)
    peak = int(peak_file.read_text()) / 1024 if peak_file.exists() else float("nan")
    peak_file.unlink(missing_ok=True)
    return done, peak


def png_sides(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def trained(p: Probe, name: str, *args) -> Path:
    """A small run, trained once and kept in WORK for every case that reads it."""
    run = p.work / name
    if not (run / "model.safetensors").exists():
        shutil.rmtree(run, ignore_errors=True)
        done = p.run("train", *args, "--no-progress", "--device", "cpu", "--out", run, timeout=1800)
        assert done.returncode == 0, done.stderr
    return run


def dsprites_root(p: Probe) -> Path:
    """A data root holding the generated dSprites cache (generated here the first time, in a process of its own)."""
    root = p.work / "dsprites-data"
    if not (root / "dsprites" / "dsprites-64x64-v1.npy").exists():
        code = f"from vaelab import data\ndata.load('dsprites', 'test', {str(root)!r})"
        subprocess.run([sys.executable, "-c", code], env=p.env, check=True, timeout=3600)
    return root


def vqvae(p: Probe) -> Path:
    return trained(p, "memory-vqvae", "vqvae", "--steps", "5")


def dsprites_conv(p: Probe) -> Path:
    return trained(p, "memory-dsprites-conv", "vae", "--dataset", "dsprites", "--data-dir", dsprites_root(p), "--net", "conv",
                   "--set", "model.channels=8,8,16,16", "--hidden", "32", "--z-dim", "6", "--steps", "5", "--batch-size", "32")


# ---------------------------------------------------------------- vaelab sample
@case("memory", "sample --n 1000000 (a 3 GB allocation and a traceback): one line naming the 10,000-image limit, peak under 1 GB")
def _(p):
    out = p.fresh("sample-million")
    done, peak = measured(p, "sample", reference(p), "--n", "1000000", "--out", out / "s.png", "--recon-out", out / "r.png")
    ok, detail = one_line_error(done, "10,000")
    return ok and peak < 1024 and not list(out.iterdir()), f"peak RSS {peak:.0f} MB; {detail}"


@case("memory", "sample --ncol larger than --n, 0 and negative, and a grid taller than 16,384 pixels: one line each")
def _(p):
    out = p.fresh("sample-ncol")
    checks = [(["--n", "10", "--ncol", "20"], "more than the 10 images"), (["--ncol", "0"], "--ncol"), (["--ncol", "-5"], "--ncol"),
              (["--n", "10000", "--ncol", "1"], "16,384 a side")]
    details, all_ok = [], True
    for options, needle in checks:
        ok, detail = one_line_error(p.run("sample", reference(p), *options, "--out", out / "s.png", "--recon-out", out / "r.png"), needle)
        all_ok &= ok
        details.append(detail)
    return all_ok and not list(out.iterdir()), " | ".join(details)


@case("memory", "sample --recon-n 6000 on Fashion-MNIST (12,000 images in one grid): one line naming --recon-n")
def _(p):
    run = trained(p, "memory-fashion", "vae", "--dataset", "fashion-mnist", "--steps", "5", "--hidden", "16", "--z-dim", "2")
    out = p.fresh("recon-n")
    ok, detail = one_line_error(p.run("sample", run, "--recon-n", "6000", "--out", out / "s.png", "--recon-out", out / "r.png"),
                                "--recon-n")
    return ok and not list(out.iterdir()), detail


@case("memory", "sample --n 10000 --ncol 100 of a 64 x 64 conv model: decoded in chunks, peak under 1.2 GB (1.5 GB with matplotlib's "
               "float64 colour map), PNG within 16,384 px")
def _(p):
    run = dsprites_conv(p)
    out = p.fresh("sample-dsprites") / "s.png"
    done, peak = measured(p, "sample", run, "--n", "10000", "--ncol", "100", "--no-recon", "--out", out)
    sides = png_sides(out) if done.returncode == 0 else (0, 0)
    return (done.returncode == 0 and peak < 1229 and max(sides) <= MAX_SIDE,
            f"exit {done.returncode}, peak RSS {peak:.0f} MB, {sides[0]} x {sides[1]} px; {done.stderr.strip()[-200:]}")


# ---------------------------------------------------------------- vaelab train
@case("memory", "train --objective iwae --k 100000 (about 100 GB a step): one line with the estimate and limit, no run directory")
def _(p):
    out = p.fresh("k-100000") / "run"
    done, peak = measured(p, "train", "vae", "--objective", "iwae", "--k", "100000", "--steps", "2", "--no-progress",
                          "--device", "cpu", "--out", out)
    ok, detail = one_line_error(done, "objective.k")
    return ok and "limit" in detail and peak < 1024 and not out.exists(), f"peak RSS {peak:.0f} MB; {detail}"


@case("memory", "train vae on dsprites for 20 steps (peak 6.3 GB with the set unpacked): peak RSS under 1.5 GB")
def _(p):
    root = dsprites_root(p)
    out = p.fresh("dsprites-train") / "run"
    done, peak = measured(p, "train", "vae", "--dataset", "dsprites", "--data-dir", root, "--steps", "20", "--no-progress",
                          "--device", "cpu", "--out", out)
    return done.returncode == 0 and peak < 1536, f"exit {done.returncode}, peak RSS {peak:.0f} MB; {done.stderr.strip()[-200:]}"


@case("memory", "eval --disentanglement of a dsprites run (the factor data held packed): peak under 1.5 GB")
def _(p):
    run = dsprites_conv(p)
    before = snapshot(run)
    done, peak = measured(p, "eval", run, "--disentanglement", "--metric-points", "200", "--no-save", "--device", "cpu")
    return (done.returncode == 0 and peak < 1536 and snapshot(run) == before,
            f"exit {done.returncode}, peak RSS {peak:.0f} MB; {done.stderr.strip()[-200:]}")


# ---------------------------------------------------------------- vaelab eval (already chunked: still bounded)
@case("memory", "eval --iw 50000 with the default --budget, and --iw 2000 --budget 100000: peak under 1 GB each")
def _(p):
    details, all_ok = [], True
    for options in (["--iw", "50000"], ["--iw", "2000", "--budget", "100000"]):
        done, peak = measured(p, "eval", reference(p), *options, "--no-save", "--device", "cpu")
        all_ok &= done.returncode == 0 and peak < 1024
        details.append(f"{' '.join(options)}: exit {done.returncode}, peak RSS {peak:.0f} MB")
    return all_ok, "; ".join(details)


# ---------------------------------------------------------------- vaelab plot
@case("memory", "plot --kind traversal of a VQ-VAE (3.4 GB, a 51,864-pixel PNG): one line, nothing written, peak under 1 GB")
def _(p):
    run = vqvae(p)
    before = snapshot(run)
    done, peak = measured(p, "plot", run, "--kind", "traversal", "--device", "cpu")
    ok, detail = one_line_error(done, "discrete codes")
    return ok and peak < 1024 and snapshot(run) == before, f"peak RSS {peak:.0f} MB; {detail}"


@case("memory", "plot --kind interpolation, latents, lossy, kl of a VQ-VAE (784 code entries): each PNG within 16,384 px, peak under 1 GB")
def _(p):
    run = vqvae(p)
    out = p.fresh("vqvae-plots")
    details, all_ok = [], True
    for kind in ("interpolation", "latents", "lossy", "kl"):
        done, peak = measured(p, "plot", run, "--kind", kind, "--device", "cpu", "--out", out / f"{kind}.png")
        sides = png_sides(out / f"{kind}.png") if done.returncode == 0 else (0, 0)
        all_ok &= done.returncode == 0 and peak < 1024 and max(sides) <= MAX_SIDE
        details.append(f"{kind}: exit {done.returncode}, {peak:.0f} MB, {sides[0]} x {sides[1]} px")
    return all_ok, "; ".join(details)


@case("memory", "plot every kind of a 64 x 64 dSprites conv model: each PNG within 16,384 px, peak under 1.5 GB")
def _(p):
    run = dsprites_conv(p)
    out = p.fresh("dsprites-plots")
    details, all_ok = [], True
    for kind in ("traversal", "interpolation", "latents", "lossy", "kl"):
        done, peak = measured(p, "plot", run, "--kind", kind, "--device", "cpu", "--out", out / f"{kind}.png")
        sides = png_sides(out / f"{kind}.png") if done.returncode == 0 else (0, 0)
        all_ok &= done.returncode == 0 and peak < 1536 and max(sides) <= MAX_SIDE
        details.append(f"{kind}: exit {done.returncode}, {peak:.0f} MB, {sides[0]} x {sides[1]} px")
    return all_ok, "; ".join(details)

