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
log p(x | z) is one pass; sampling is H * W passes, one pixel at a time (batched over images).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

from vaelab.progress import progress_bar
from vaelab.distributions.common import full_precision


def _shift_down(t: torch.Tensor) -> torch.Tensor:
    return F.pad(t, (0, 0, 1, 0))[..., :-1, :]


def _shift_right(t: torch.Tensor) -> torch.Tensor:
    return F.pad(t, (1, 0, 0, 0))[..., :, :-1]


class GatedLayer(nn.Module):
    """One gated layer; conditioning = 0: unconditioned (no 1 x 1 convolutions of a map)."""

    def __init__(self, in_channels: int, channels: int, kernel: int, conditioning: int, first: bool):
        super().__init__()
        half = kernel // 2
        self.half, self.first = half, first
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel))
        self.horizontal = nn.Conv2d(in_channels, 2 * channels, (1, half + 1))
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.conditioned = conditioning > 0
        if self.conditioned:
            self.condition_vertical = nn.Conv2d(conditioning, 2 * channels, 1)
            self.condition_horizontal = nn.Conv2d(conditioning, 2 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    @staticmethod
    def _gate(t: torch.Tensor) -> torch.Tensor:
        a, b = t.chunk(2, dim=1)
        return torch.tanh(a) * torch.sigmoid(b)

    def forward(self, v: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.half
        v_pre = self.vertical(F.pad(v, (k, k, k, 0)))  # row r reads rows r - k .. r
        h_in = _shift_right(h) if self.first else h
        h_pre = self.horizontal(F.pad(h_in, (k, 0, 0, 0)))  # column c reads columns c - k .. c
        h_pre = h_pre + self.vertical_to_horizontal(_shift_down(v_pre))  # rows strictly above only
        if self.conditioned:
            v_pre, h_pre = v_pre + self.condition_vertical(c), h_pre + self.condition_horizontal(c)
        v_out = self._gate(v_pre)
        h_out = self.out(self._gate(h_pre))
        return v_out, h_out if self.first else h + h_out


class PixelCNN(nn.Module):
    """Logits (N, out_channels, H, W) of the value at each position given the earlier ones in raster order, for
    inputs x (N, in_channels, H, W) and conditioning maps c (N, conditioning, H, W) (None when conditioning = 0).
    Binary images: in = out = 1 (the logit of x_i = 1); a grid of K codes: embedded inputs, out = K logits."""

    def __init__(self, layers: int = 3, channels: int = 32, kernel: int = 3, conditioning: int = 1, in_channels: int = 1,
                 out_channels: int = 1):
        super().__init__()
        self.layers = nn.ModuleList(GatedLayer(in_channels if i == 0 else channels, channels, kernel, conditioning, first=i == 0)
                                    for i in range(layers))
        self.head = nn.Sequential(nn.ELU(), nn.Conv2d(channels, channels, 1), nn.ELU(), nn.Conv2d(channels, out_channels, 1))
        self.channels = channels

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h, c)
        return self.head(h)


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
        """Logits for every pixel of x (..., D) broadcast against the conditioning's leading shape."""
        lead = torch.broadcast_shapes(x.shape[:-1], self.conditioning.shape[:-1])
        d = x.shape[-1]
        images = x.expand(*lead, d).reshape(-1, 1, *self.image_shape)
        maps = self.conditioning.expand(*lead, d).reshape(-1, 1, *self.image_shape)
        return self.network(images.to(maps.dtype), maps).reshape(*lead, d)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = full_precision(self._logits(value))
        return -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits).to(logits.dtype), reduction="none").sum(-1)

    @torch.no_grad()
    def _autoregress(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        shape = self._extended_shape(sample_shape)
        x = torch.zeros(shape, dtype=self.conditioning.dtype, device=self.conditioning.device)
        probs = torch.zeros_like(x)
        # A progress bar on a terminal only (disable=None): H * W passes take a while on the CPU.
        for i in progress_bar(range(shape[-1]), desc="PixelCNN sampling", unit="pixel", leave=False, disable=None):  # pixel i depends on pixels < i only: one pass per pixel, all images at once
            p = torch.sigmoid(self._logits(x)[..., i])
            probs[..., i] = p
            x[..., i] = torch.bernoulli(p)
        return x, probs

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
    passes, batched over grids."""

    def __init__(self, codes: int, grid: tuple[int, int], layers: int = 8, channels: int = 64, kernel: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        self.embed = nn.Embedding(codes, channels)
        self.network = PixelCNN(layers, channels, kernel, conditioning=0, in_channels=channels, out_channels=codes)

    def logits(self, indices: torch.Tensor) -> torch.Tensor:
        """Logits (N, h * w, K) of each position's code given the earlier ones, for indices (N, h * w)."""
        embedded = self.embed(indices).view(indices.shape[0], *self.grid, -1).permute(0, 3, 1, 2)
        return self.network(embedded).flatten(2).transpose(1, 2)

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
        indices = torch.zeros(n, self.grid[0] * self.grid[1], dtype=torch.long, device=self.embed.weight.device)
        for i in range(indices.shape[1]):  # position i depends on positions < i only
            indices[:, i] = torch.distributions.Categorical(logits=self.logits(indices)[:, i].float()).sample()
        return indices
