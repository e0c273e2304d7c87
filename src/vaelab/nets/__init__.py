"""Networks, the bottom layer beside distributions: encoders map flat pixels x (..., D), with an
optional context vector, to the parameters of q; decoders map a code (..., n) to the likelihood's
parameters (..., D). Every model builds them here, so `--net mlp|conv` works for every model and the
image shape comes from the dataset (model.image_shape). Every net takes model.activation: an element-wise
activation (elu, relu, tanh) or gated layers (nets/mlp.py, nets/conv.py)."""

from __future__ import annotations

from torch import nn

from .conv import ConvDecoder, ConvEncoder, check_shape
from .mlp import ACTIVATIONS, GATED, Gated, GatedDense, MLPDecoder, MLPEncoder, hidden_layers, mlp

NETS = ("mlp", "conv")


def build_encoder(net: str, image_shape: tuple[int, ...], out_features: int, *, hidden: tuple[int, ...],
                  channels: tuple[int, ...], activation: str, context_features: int = 0) -> nn.Module:
    """The encoder of kind `net` (mlp: `hidden` widths; conv: `channels` per stride-2 layer, then `hidden`
    fully connected widths)."""
    if net == "mlp":
        return MLPEncoder(image_shape, out_features, hidden, activation, context_features)
    if net == "conv":
        return ConvEncoder(image_shape, out_features, channels, activation, context_features, hidden)
    raise ValueError(f"unknown net {net!r} (choose from {', '.join(NETS)})")


def build_decoder(net: str, in_features: int, image_shape: tuple[int, ...], *, hidden: tuple[int, ...],
                  channels: tuple[int, ...], activation: str) -> nn.Module:
    """The decoder of kind `net`, mirroring build_encoder."""
    if net == "mlp":
        return MLPDecoder(in_features, image_shape, hidden, activation)
    if net == "conv":
        return ConvDecoder(in_features, image_shape, channels, activation, hidden)
    raise ValueError(f"unknown net {net!r} (choose from {', '.join(NETS)})")


__all__ = ["NETS", "ACTIVATIONS", "GATED", "Gated", "GatedDense", "build_encoder", "build_decoder", "check_shape", "mlp",
           "hidden_layers", "MLPEncoder", "MLPDecoder", "ConvEncoder", "ConvDecoder"]
