"""A PixelCNN likelihood p(x | z) = prod_i p(x_i | x_<i, z) for binary single-channel images (PixelVAE,
Gulrajani et al. 2017; VLAE, Chen et al. 2017): a few gated layers of Gated PixelCNN (van den Oord et al.
2016) conditioned on the decoder's output map.

Each layer has a vertical stack (rows above, any column) and a horizontal stack (the current row, columns to
the left), which together see every earlier pixel in raster order and no later one, with no blind spot:
  vertical   a (k//2 + 1) x k convolution padded so that output row r reads input rows r - k//2 .. r;
             it reaches the horizontal stack only shifted down by one row, so pixel (r, c) sees rows < r;
  horizontal a 1 x (k//2 + 1) convolution reading columns c - k//2 .. c of its own row; in the first
             layer its input (the image) is shifted right by one column, so pixel (r, c) never sees itself.
Gates tanh(a) * sigmoid(b); the conditioning map (the decoder's output, a function of z only) enters every
layer through 1 x 1 convolutions. With L layers of kernel k a pixel sees about L * k//2 rows above and
columns to the left: few layers make the weak decoder that keeps global structure in z.
log p(x | z) is one pass (pixelcnn_network.py: how it is computed). Sampling is H * W steps, one pixel at a time
(batched over images), each computing only what the new pixel needs from the stacks' kept states: one column of
each layer's horizontal stack, and after each finished row one row of the vertical stack.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

from ..progress import progress_bar
from .common import full_precision
from .pixelcnn_network import GatedLayer, PixelCNN, conv, gate, padded

__all__ = ["CodePrior", "GatedLayer", "PixelCNN", "PixelCNNDistribution", "PixelCNNLikelihood", "autoregress"]


@torch.no_grad()
def autoregress(network: PixelCNN, n: int, image_shape: tuple[int, int], c: torch.Tensor | None,
                draw: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]], dtype: torch.dtype) -> torch.Tensor:
    """n images drawn pixel by pixel in raster order, conditioned on c (n, H, W, conditioning) or None; `draw` takes
    the logits (n, out) of one pixel and returns its value as the network reads it (n, in_channels) and what to
    record (n,). Returns the records, (n, H * W).

    It keeps what the one pass computes, as the image grows: the image padded as the first layer reads it; per later
    layer the gated rows of the vertical stack below it (its input) and this row's horizontal input so far, and the
    vertical stack's contribution to this row's horizontal pre-activations. A pixel costs one column of each layer's
    horizontal stack; a finished row one row of each vertical stack. The same kernels as the one pass."""
    (rows, cols), k, layers, channels = image_shape, network.half, len(network.layers), network.channels
    kernels = [{key: w.to(dtype) for key, w in kern.items()} for kern in network.kernels()]
    device = kernels[0]["h"].device
    n_in = network.layers[0].vertical.in_channels
    c = None if c is None else c.to(dtype)
    image = padded([torch.zeros(n, rows, cols, n_in, dtype=dtype, device=device), 1.0], k + 1, k + 1, k)
    windows = [kern["h"].permute(0, 2, 3, 1).flatten(1).t() for kern in kernels]  # rows in the windows' order
    vertical, horizontal, row_part = [None], [None], [None]
    for kern in kernels[1:]:
        vertical.append(torch.zeros(n, rows + k + 1, cols + 2 * k, channels, dtype=dtype, device=device))
        horizontal.append(torch.zeros(n, cols + k, channels, dtype=dtype, device=device))
        row_part.append(kern["bh"] + kern["first_row"] if "first_row" in kern else kern["bh"])  # row 0's
    records = torch.empty(n, rows * cols, dtype=dtype, device=device)
    # A progress bar on a terminal only (disable=None).
    for i in progress_bar(range(rows * cols), desc="PixelCNN sampling", unit="pixel", leave=False, disable=None):
        r, j = divmod(i, cols)
        pixel = None if c is None else c[:, r, j]
        if j == 0 and r > 0 and "u" in kernels[-1]:  # the last layer's vertical stack, folded: rows r - 1 - k .. r - 1
            folded = conv(vertical[-1][:, r : r + k + 1], kernels[-1]["u"], kernels[-1]["bu"])
            row_part[-1] = folded[:, 0] + kernels[-1]["bh"]
        pre = torch.addmm(kernels[0]["bh"], image[:, r : r + k + 2, j : j + 2 * k + 2].reshape(n, -1), windows[0])
        h = network.out(0, pre, None, pixel, kernels[0].get("wch"))
        for layer in range(1, layers):
            horizontal[layer][:, j + k] = h
            part = row_part[layer] if row_part[layer].dim() == 1 else row_part[layer][:, j]
            pre = torch.addmm(part, horizontal[layer][:, j : j + k + 1].reshape(n, -1), windows[layer])
            h = network.out(layer, pre, h, pixel, kernels[layer].get("wch"))
        value, records[:, i] = draw(network.head_out(h))
        image[:, r + k + 1, j + k + 1, :n_in] = value
        if j == cols - 1 and r < rows - 1 and layers > 1:  # row r is complete: the vertical stacks' row r
            row = None if c is None else c[:, r : r + 1]
            v = conv(image[:, r + 1 : r + k + 2, 1:, :n_in], kernels[0]["v"], kernels[0]["bv"])
            for layer in range(1, layers):
                last = "u" in kernels[layer]
                top = r + k + 1 if last else r + k  # the last layer reads its input one row up
                vertical[layer][:, top, k : k + cols] = gate(v, row, kernels[layer - 1].get("wcv"))[:, 0]
                if not last:
                    v = conv(vertical[layer][:, r : r + k + 1], kernels[layer]["v"], kernels[layer]["bv"])
                    shifted = torch.addmm(kernels[layer]["bh"], v.reshape(n * cols, -1), kernels[layer]["vh"].t())
                    row_part[layer] = shifted.view(n, cols, -1)  # what row r + 1 of the horizontal stack adds
    return records


class PixelCNNDistribution(Distribution):
    """p(x | z) as a torch distribution over flat binary images (..., D), conditioned on the decoder output
    `conditioning` (..., D). `mean` is the pixels' probabilities along one autoregressive sample (the
    distribution's true mean has no closed form)."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, network: PixelCNN, conditioning: torch.Tensor, image_shape: tuple[int, int]):
        self.network, self.conditioning, self.image_shape = network, conditioning, image_shape
        super().__init__(conditioning.shape[:-1], conditioning.shape[-1:], validate_args=False)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for every pixel of x (..., D) broadcast against the conditioning's leading shape; the image's part of
        the first layer is computed once per image, not once per draw of z."""
        lead = torch.broadcast_shapes(x.shape[:-1], self.conditioning.shape[:-1])

        def maps(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(*(1,) * (len(lead) + 1 - t.dim()), *t.shape[:-1], *self.image_shape, 1)

        return self.network.channels_last(maps(x), maps(self.conditioning)).reshape(*lead, x.shape[-1])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = full_precision(self._logits(value))
        return -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits).to(logits.dtype), reduction="none").sum(-1)

    @torch.no_grad()
    def _autoregress(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample x and the probability of each of its pixels being 1 given the earlier ones, as it was drawn."""
        shape = self._extended_shape(sample_shape)
        maps = self.conditioning.expand(shape).reshape(-1, *self.image_shape, 1)
        drawn = []

        def draw(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            p = torch.sigmoid(logits[:, 0])
            drawn.append(torch.bernoulli(p))
            return drawn[-1][:, None], p

        probs = autoregress(self.network, maps.shape[0], self.image_shape, maps, draw, maps.dtype)
        return torch.stack(drawn, -1).view(shape), probs.view(shape)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self._autoregress(sample_shape)[0]

    @property
    def mean(self) -> torch.Tensor:
        return self._autoregress()[1]


class PixelCNNLikelihood(nn.Module):
    """The pixelcnn likelihood setting: `layers` gated layers of `channels` channels, kernel `kernel`."""

    def __init__(self, image_shape: tuple[int, ...], layers: int = 3, channels: int = 32, kernel: int = 3):
        super().__init__()
        if len(image_shape) == 3 and image_shape[0] != 1 or len(image_shape) not in (2, 3):
            raise ValueError(f"the pixelcnn likelihood models single-channel images; got shape {tuple(image_shape)}")
        self.image_shape = tuple(image_shape[-2:])
        self.network = PixelCNN(layers, channels, kernel)

    def forward(self, h: torch.Tensor) -> Distribution:
        return PixelCNNDistribution(self.network, h, self.image_shape)

    def elements_per_sample(self) -> int:
        return 2 * self.network.channels * self.image_shape[0] * self.image_shape[1]

    @property
    def sampling_passes(self) -> int:
        """Network passes one after another that a sample (or the mean) takes: one per pixel."""
        return self.image_shape[0] * self.image_shape[1]


class CodePrior(nn.Module):
    """p(k) = prod_i Categorical(k_i | k_<i) over a grid of discrete codes k in {0..K-1}^(h x w), raster order: an
    unconditioned PixelCNN on embedded codes (the VQ-VAE's learned prior). log_prob is one pass; sample is h * w
    steps, batched over grids, each computing what the new position needs (as the likelihood's sampler)."""

    def __init__(self, codes: int, grid: tuple[int, int], layers: int = 8, channels: int = 64, kernel: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Embedding(codes, channels)
        self.network = PixelCNN(layers, channels, kernel, conditioning=0, in_channels=channels, out_channels=codes)

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits (N, h * w, K) of each position's code given the earlier ones, for indices (N, h * w)."""
        embedded = self.embed(indices).view(indices.shape[0], *self.grid, -1)
        return self.network.channels_last(embedded).reshape(indices.shape[0], indices.shape[1], -1)

    def log_prob(self, indices: torch.Tensor) -> torch.Tensor:
        """log p(k) per grid, (N,), for indices (N, h * w)."""
        logits = full_precision(self.logits(indices))
        return -F.cross_entropy(logits.transpose(1, 2), indices, reduction="none").sum(1)

    @property
    def sampling_passes(self) -> int:
        """Network passes one after another that a sample takes: one per code."""
        return self.grid[0] * self.grid[1]

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """n grids of codes (n, h * w) drawn position by position."""

        def draw(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            index = torch.distributions.Categorical(logits=logits.float()).sample()
            return self.embed(index), index

        weight = self.embed.weight
        return autoregress(self.network, n, self.grid, None, draw, weight.dtype).long()
