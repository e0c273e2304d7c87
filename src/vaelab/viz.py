"""Figures: image grids of prior samples, style/content grids and reconstructions, written as PNG with matplotlib."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def image_grid(images: torch.Tensor | np.ndarray, ncol: int, image_shape=(28, 28), pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile N images, flat (N, prod(image_shape)) or shaped, with values in [0, 1] into one array:
    (rows*H', ncol*W') for grey images of shape (H, W), (rows*H', ncol*W', 3) for (3, H, W) colour ones."""
    images = images.detach().float().cpu().numpy() if torch.is_tensor(images) else np.asarray(images, dtype=np.float32)
    images = images.reshape(-1, *image_shape)
    if images.ndim == 4:  # (N, C, H, W) -> (N, H, W, C)
        images = images.transpose(0, 2, 3, 1)
    n, h, w = images.shape[:3]
    nrow = math.ceil(n / ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, *images.shape[3:]), pad_value, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[i]
    return grid


def save_grid(path: str | Path, images, ncol: int, image_shape=(28, 28)) -> Path:
    """Write images as a PNG grid (grey-scale for (H, W) images, RGB for (3, H, W))."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = np.clip(image_grid(images, ncol, image_shape, pad_value=0.5), 0.0, 1.0)
    if grid.ndim == 2:
        matplotlib.image.imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)
    else:
        matplotlib.image.imsave(path, grid)
    return path


def prior_samples(model, n: int, seed: int = 0, mode: str = "mean") -> torch.Tensor:
    """n images from the model: decoder means sigmoid(f(z)) for z ~ p(z), or a Bernoulli draw of them."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probs = model.sample(n)
        return torch.bernoulli(probs) if mode == "sample" else probs


def style_content(model, rows: int, seed: int = 0) -> torch.Tensor:
    """A conditional model's style/content grid: row r holds one z draw decoded under every label."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.style_content(rows)


def reconstruction_pairs(model, x: torch.Tensor, ncol: int, y: torch.Tensor | None = None) -> torch.Tensor:
    """Rows alternate: ncol inputs, then their reconstructions E[x | z = mu(x)] (given y for conditional models)."""
    recon = model.reconstruct(x) if y is None else model.reconstruct(x, y)
    rows = []
    for i in range(0, x.shape[0], ncol):
        rows += [x[i : i + ncol], recon[i : i + ncol]]
    return torch.cat(rows)
