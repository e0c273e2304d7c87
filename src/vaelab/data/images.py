"""Tiling images into one array (sample grids for figures and TensorBoard)."""

from __future__ import annotations

import math

import numpy as np
import torch


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
