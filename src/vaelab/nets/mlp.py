"""Fully connected encoder and decoder. "v1" is the cs236 MLP of docs/reference.md: x - 300 - ELU - 300 - ELU - out.

Hidden layers are a Linear followed by an element-wise activation (elu, relu, tanh), or with activation = gated
the VampPrior paper's gated dense layer h = (W x + b) * sigmoid(V x + c) (Tomczak & Welling 2018, after Dauphin
et al. 2017). The output layer is always a plain Linear."""

from __future__ import annotations

import math

import torch
from torch import nn

ELEMENTWISE = {"elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh}
GATED = "gated"
# The names model.activation accepts (config validation reads this): the element-wise ones and gated layers.
ACTIVATIONS = (*ELEMENTWISE, GATED)


def gate_factor(activation: str) -> int:
    """Outputs a hidden layer computes per feature it passes on: 2 for gated layers (value and gate), else 1.
    Decoders size their largest activation (activation_elements) by it."""
    return 2 if activation == GATED else 1


class Gated(nn.Module):
    """value * sigmoid(gate), where `layer` computes twice the features and `dim` holds [value, gate]. One layer of
    twice the width rather than two: one matrix product (or convolution) instead of two, and the same initialisation
    (PyTorch's default depends on the fan-in alone). On 1 CPU thread both take the same time at MNIST sizes."""

    def __init__(self, layer: nn.Module, dim: int):
        super().__init__()
        self.layer, self.dim = layer, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.layer(x).chunk(2, self.dim)
        return value * torch.sigmoid(gate)


class GatedDense(Gated):
    """h = (W x + b) * sigmoid(V x + c), (..., in_features) -> (..., out_features): the VampPrior paper's gated dense
    layer. `layer` is one Linear to 2 * out_features whose first half is W, b and second half V, c."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(nn.Linear(in_features, 2 * out_features), dim=-1)
        self.in_features, self.out_features = in_features, out_features


def hidden_layers(in_features: int, widths: tuple[int, ...], activation: str = "elu") -> list[nn.Module]:
    """One hidden layer per entry of `widths`, each with its activation: Linear then the element-wise activation, or
    one GatedDense when activation = gated."""
    layers, width = [], in_features
    for size in widths:
        layers += [GatedDense(width, size)] if activation == GATED else [nn.Linear(width, size), ELEMENTWISE[activation]()]
        width = size
    return layers


def mlp(in_features: int, hidden: tuple[int, ...], out_features: int, activation: str = "elu") -> nn.Sequential:
    """Layers of sizes in -> hidden... -> out: hidden_layers with `activation`, then a plain Linear (no activation)."""
    width = hidden[-1] if hidden else in_features
    return nn.Sequential(*hidden_layers(in_features, hidden, activation), nn.Linear(width, out_features))


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
        self.activation_elements = max((*(gate_factor(activation) * h for h in hidden), math.prod(image_shape)))
