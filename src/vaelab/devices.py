"""Devices, the bottom layer: resolving `--device` and checking that torch.compile can run."""

from __future__ import annotations

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
