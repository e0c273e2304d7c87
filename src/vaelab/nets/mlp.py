"""Fully connected encoder and decoder. "v1" is the cs236 MLP of docs/reference.md: x - 300 - ELU - 300 - ELU - out."""

from __future__ import annotations

import math

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


class MLPEncoder(nn.Sequential):
    """x (..., D) flat pixels, with an optional context vector c (a one-hot label, say) concatenated to
    it, through an MLP to (..., out_features). A Sequential, so its parameters are named as the plain
    MLP's (encoder.0.weight, ...) and run directories written before nets/ existed still load."""

    def __init__(self, image_shape: tuple[int, ...], out_features: int, hidden: tuple[int, ...] = (300, 300),
                 activation: str = "elu", context_features: int = 0):
        x_dim = math.prod(image_shape)
        super().__init__(*mlp(x_dim + context_features, hidden, out_features, activation))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        if context is not None:
            x = torch.cat([x.expand(*context.shape[:-1], x.shape[-1]), context], -1)
        return super().forward(x)


class MLPDecoder(nn.Sequential):
    """A code (..., in_features) through an MLP to (..., D), the likelihood's parameters per pixel."""

    def __init__(self, in_features: int, image_shape: tuple[int, ...], hidden: tuple[int, ...] = (300, 300),
                 activation: str = "elu"):
        super().__init__(*mlp(in_features, hidden, math.prod(image_shape), activation))
        # The largest per-sample activation: evaluation sizes its chunks by it.
        self.activation_elements = max((*hidden, math.prod(image_shape)))
