"""MADE (Germain et al. 2015): a fully connected network whose output i depends only on inputs that come
before i in a fixed order, by masking its weights; the building block of the autoregressive flows
(IAF posteriors, autoregressive-flow priors).

Degrees: input i (in the network's order) has degree i + 1; hidden units get degrees cycling through
1 .. D - 1; a hidden unit sees inputs of degree <= its own, an output of degree d sees hidden units of
degree < d. So output i never sees input j >= i: the Jacobian d out / d in is strictly triangular in that
order (tests/test_flows.py checks it with autograd). A context vector (IAF's h(x)) enters the first hidden
layer and the output layer unmasked: it may shape every output, the first in the order included (which
no hidden unit may reach).
"""

from __future__ import annotations

import torch
from torch import nn



class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out_features, in_features)."""

    def __init__(self, mask: torch.Tensor, bias: bool = True):
        super().__init__(mask.shape[1], mask.shape[0], bias)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """(..., D) inputs [and (..., C) context] -> (..., outputs_per_input * D) outputs, output block j's
    entry i autoregressive in input i. reverse=True orders the inputs D - 1, ..., 0 (flows alternate it)."""

    def __init__(self, features: int, hidden: tuple[int, ...] = (300, 300), outputs_per_input: int = 2,
                 context_features: int = 0, reverse: bool = False):
        super().__init__()
        if not hidden:
            raise ValueError("MADE needs at least one hidden layer")
        self.features, self.outputs_per_input = features, outputs_per_input
        order = torch.arange(features)
        if reverse:
            order = order.flip(0)
        input_degrees = torch.empty(features, dtype=torch.long)
        input_degrees[order] = torch.arange(1, features + 1)  # the k-th input in the order has degree k
        self.register_buffer("input_degrees", input_degrees, persistent=False)
        layers, degrees = [], input_degrees
        for width in hidden:
            hidden_degrees = torch.arange(width) % max(features - 1, 1) + 1
            layers.append(MaskedLinear((hidden_degrees[:, None] >= degrees[None, :]).float()))
            degrees = hidden_degrees
        self.hidden_layers = nn.ModuleList(layers)
        output_degrees = input_degrees.repeat(outputs_per_input)
        self.output_layer = MaskedLinear((output_degrees[:, None] > degrees[None, :]).float())
        self.context = nn.Linear(context_features, hidden[0], bias=False) if context_features else None
        self.context_out = nn.Linear(context_features, outputs_per_input * features, bias=False) if context_features else None
        self.activation = nn.ELU()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        h = self.hidden_layers[0](x)
        if self.context is not None:
            h = h + self.context(context)
        h = self.activation(h)
        for layer in self.hidden_layers[1:]:
            h = self.activation(layer(h))
        out = self.output_layer(h)
        return out if self.context_out is None else out + self.context_out(context)
