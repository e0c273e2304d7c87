"""Convolutional encoder and decoder for images of shape (H, W) or (C, H, W).

Encoder: per entry of `channels` a 4x4 convolution with stride 2 (halving height and width) and the
activation, then the flattened feature map (with the context vector, if any) through fully connected
layers of `hidden` widths to the output. Decoder: the mirror image: fully connected layers of `hidden`
widths to the smallest feature map, then 4x4 transposed convolutions with stride 2 back to (C, H, W).
With channels (32, 64) on 28 x 28 MNIST the feature maps are 14 x 14 x 32 and 7 x 7 x 64; hidden = ()
leaves one linear layer between features and code (the DCGAN-style VAEs of the literature).
Height and width must be divisible by 2^len(channels). With activation = gated each convolution computes twice the
channels and passes on a * sigmoid(b) (the VampPrior paper's GatedConv2d; transposed convolutions likewise), and the
fully connected layers are gated dense layers (nets/mlp.py).

Weights and feature maps are kept channels-last (NHWC): on the CPU the oneDNN convolutions decode
1.7x faster than in the default layout and train 1.07x faster (bench/conv_layout.py on 2 cores,
docs/performance.md), and CUDA's tensor-core kernels prefer it too.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .mlp import ELEMENTWISE, GATED, Gated, gate_factor, hidden_layers, mlp


def channels_and_size(image_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of an image shape given as (H, W) or (C, H, W)."""
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


def check_shape(image_shape: tuple[int, ...], channels: tuple[int, ...]) -> None:
    """Raise ValueError unless the image can be halved len(channels) times."""
    _, h, w = channels_and_size(image_shape)
    factor = 2 ** len(channels)
    if h % factor or w % factor:
        raise ValueError(f"images of {h} x {w} pixels cannot be halved {len(channels)} times; "
                         f"use fewer channels entries or net = mlp")


def conv_layer(conv: type[nn.Module], in_channels: int, out_channels: int, activation: str) -> list[nn.Module]:
    """A 4x4 stride-2 convolution (`conv`: nn.Conv2d or nn.ConvTranspose2d) and its activation: the element-wise one
    after it, or for gated one convolution to 2 x out_channels gated as a * sigmoid(b)."""
    if activation == GATED:
        return [Gated(conv(in_channels, 2 * out_channels, 4, stride=2, padding=1), dim=1)]
    return [conv(in_channels, out_channels, 4, stride=2, padding=1), ELEMENTWISE[activation]()]


def feature_activation(channels: int, activation: str) -> nn.Module:
    """The activation on its own, for a feature map of `channels` channels where no layer of its own precedes it: the
    element-wise one, or for gated a 1x1 convolution to 2 x channels gated as a * sigmoid(b) (a gate needs a
    linear map of its own to compute)."""
    return Gated(nn.Conv2d(channels, 2 * channels, 1), dim=1) if activation == GATED else ELEMENTWISE[activation]()


def downsampling(in_channels: int, channels: tuple[int, ...], activation: str) -> nn.Sequential:
    """Per entry of `channels` a 4x4 convolution with stride 2 and the activation: (N, C, H, W) -> (N, channels[-1], H/2^n, W/2^n)."""
    layers, width = [], in_channels
    for size in channels:
        layers += conv_layer(nn.Conv2d, width, size, activation)
        width = size
    return nn.Sequential(*layers)


def upsampling(channels: tuple[int, ...], out_channels: int, activation: str) -> nn.Sequential:
    """The mirror of downsampling(out_channels, channels): 4x4 transposed convolutions with stride 2 from
    channels[-1] maps back to out_channels, the activation between them and none after the last."""
    layers, widths = [], [*reversed(channels), out_channels]
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += conv_layer(nn.ConvTranspose2d, a, b, activation)
    layers.append(nn.ConvTranspose2d(widths[-2], widths[-1], 4, stride=2, padding=1))
    return nn.Sequential(*layers)


def _flat_batch(t: torch.Tensor, trailing: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """t (..., *trailing dims) as (N, *trailing dims) plus the leading shape to restore."""
    lead = t.shape[: t.dim() - trailing]
    return t.reshape(-1, *t.shape[t.dim() - trailing :]), lead


class ConvEncoder(nn.Module):
    """x (..., C*H*W) flat pixels -> (..., out_features); an optional context (..., c) joins the
    flattened features before the linear head, so the convolutions run once per image."""

    def __init__(self, image_shape: tuple[int, ...], out_features: int, channels: tuple[int, ...] = (32, 64),
                 activation: str = "elu", context_features: int = 0, hidden: tuple[int, ...] = ()):
        super().__init__()
        check_shape(image_shape, channels)
        c, h, w = channels_and_size(image_shape)
        self.image = (c, h, w)
        self.features = downsampling(c, channels, activation)
        self.feature_dim = channels[-1] * (h >> len(channels)) * (w >> len(channels))
        self.head = mlp(self.feature_dim + context_features, hidden, out_features, activation)
        self.features.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        flat, lead = _flat_batch(x, 1)
        h = self.features(flat.view(-1, *self.image).contiguous(memory_format=torch.channels_last)).flatten(1).view(*lead, self.feature_dim)
        if context is not None:
            h = torch.cat([h.expand(*context.shape[:-1], self.feature_dim), context], -1)
        return self.head(h)


class ConvDecoder(nn.Module):
    """A code (..., in_features) -> (..., C*H*W), the likelihood's parameters per pixel."""

    def __init__(self, in_features: int, image_shape: tuple[int, ...], channels: tuple[int, ...] = (32, 64),
                 activation: str = "elu", hidden: tuple[int, ...] = ()):
        super().__init__()
        check_shape(image_shape, channels)
        c, h, w = channels_and_size(image_shape)
        self.out_dim = c * h * w
        self.start = (channels[-1], h >> len(channels), w >> len(channels))
        # Every layer of the projection is a hidden layer: the feature map it makes goes through the activation.
        self.project = nn.Sequential(*hidden_layers(in_features, (*hidden, math.prod(self.start)), activation))
        self.deconv = upsampling(channels, c, activation).to(memory_format=torch.channels_last)
        widths = [*reversed(channels), c]
        # The largest per-sample activation (a feature map): evaluation sizes its chunks by it. A gated layer computes
        # twice the channels it passes on; the output layer is plain.
        gate = gate_factor(activation)
        maps = [(gate if i < len(widths) - 1 else 1) * widths[i] * (h >> (len(channels) - i)) * (w >> (len(channels) - i))
                for i in range(len(widths))]
        self.activation_elements = max(*(gate * size for size in hidden), *maps)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        flat, lead = _flat_batch(code, 1)
        out = self.deconv(self.project(flat).view(-1, *self.start).contiguous(memory_format=torch.channels_last))
        return out.reshape(*lead, self.out_dim)
