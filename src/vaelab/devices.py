"""Devices, the bottom layer: resolving `--device` and checking that torch.compile can run."""

from __future__ import annotations

import contextlib
import os
import shutil

import torch

from .errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu. An unavailable device is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device: unknown device {name!r} (use cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device: {name} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device: unsupported device {name!r} (use cpu, cuda, cuda:N or auto)")
    return device


def check_compile_toolchain(device: torch.device, option: str = "--compile") -> None:
    """torch.compile builds C++ kernels for the CPU: without a compiler it fails deep inside inductor
    at the first step, so a missing one is a one-line ConfigError before anything runs."""
    candidates = (os.environ.get("CXX", ""), "c++", "g++", "clang++")
    if device.type == "cpu" and not any(shutil.which(c) for c in candidates if c):
        raise ConfigError(f"{option}: torch.compile on the CPU needs a C++ compiler (g++, clang++ or $CXX) on PATH; none was found")


EVAL_PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def matmul_precision(device: torch.device, precision: str, option: str = "--precision"):
    """The precision of the networks' matrix products inside the block; densities, log-weights and
    logsumexp stay float32 whatever it is (distributions.full_precision).

    fp32: full float32. tf32: CUDA's TensorFloat-32 products (10-bit mantissa inputs, float32 sums; CUDA
    only). bf16: the networks under bfloat16 autocast (8-bit mantissa), on any device."""
    if precision not in EVAL_PRECISIONS:
        raise ConfigError(f"{option}: unknown precision {precision!r} (use {', '.join(EVAL_PRECISIONS)})")
    if precision == "fp32":
        yield
    elif precision == "tf32":
        if device.type != "cuda":
            raise ConfigError(f"{option} tf32: TensorFloat-32 is a CUDA format; on {device.type} use bf16 or fp32")
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    else:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            yield
