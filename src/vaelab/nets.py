"""Network builders. "v1" is the cs236 MLP of REFERENCE.md: x - 300 - ELU - 300 - ELU - out."""

from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int, activation: str = "elu") -> nn.Sequential:
    """Linear layers of sizes in -> hidden... -> out with `activation` between them (none after the last)."""
    act = ACTIVATIONS[activation]
    layers, width = [], in_features
    for size in hidden:
        layers += [nn.Linear(width, size), act()]
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def full_precision(h: torch.Tensor) -> torch.Tensor:
    """A network output as it enters a density: at least float32. Under bf16 autocast the networks
    return bfloat16 (8-bit mantissa), too coarse for log-densities summed over 784 pixels."""
    return h.to(torch.promote_types(h.dtype, torch.float32))
