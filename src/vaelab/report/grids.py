"""Image grids of any model, through the model contract: prior samples, label grids (one column per label) and
reconstruction pairs, as PNG. A grid's size is checked against MAX_GRID_IMAGES and MAX_IMAGE_SIDE before an
image is drawn, and images are decoded in chunks, so no request allocates more than a grid can show."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data import image_grid  # noqa: E402
from ..data.caches import write_atomically  # noqa: E402
from ..errors import VaelabError  # noqa: E402
from ..evaluation import DEFAULT_BUDGET, evaluation_set, model_batch  # noqa: E402

MAX_GRID_IMAGES = 10_000
"""Images in one PNG grid at most (prior samples, label grids, reconstruction pairs): 10,000 MNIST digits already make
a grid of 9 million pixels."""
MAX_IMAGE_SIDE = 16_384
"""Pixels along either side of any PNG vaelab writes at most (a figure at DPI, or a bare grid)."""
DPI = 110
CELL_INCHES = 0.6
"""A labelled grid's inches per image."""
GRID_PAD = 2
"""Pixels between the images of a bare grid (data.image_grid's default)."""


def _in_chunks(total: int, per_item: int, make) -> torch.Tensor:
    """make(n) for n items at a time, joined: a chunk's largest tensor stays near DEFAULT_BUDGET elements (per_item
    each), as evaluation's do; a request within one chunk is a single call, so it draws what it always drew."""
    chunk = max(1, DEFAULT_BUDGET // max(1, per_item))
    return torch.cat([make(min(chunk, total - start)) for start in range(0, total, chunk)]) if total > chunk else make(total)


def grid_pixels(n: int, ncol: int, image_shape) -> tuple[int, int]:
    """(width, height) in pixels of the bare grid of n images at ncol a row (data.image_grid)."""
    h, w = image_shape[-2:]
    return ncol * (w + GRID_PAD) + GRID_PAD, math.ceil(n / ncol) * (h + GRID_PAD) + GRID_PAD


def labelled_grid_pixels(rows: int, cols: int, image_shape, cell_inches: float = CELL_INCHES) -> tuple[int, int]:
    """(width, height) in pixels of labelled_grid's figure, at least the grid it shows (images never shrink)."""
    width, height = grid_pixels(rows * cols, cols, image_shape)
    return (max(width, round((cols * cell_inches + 1.6) * DPI)), max(height, round((rows * cell_inches + 1.2) * DPI)))


def check_grid(n: int, ncol: int, image_shape, n_option: str = "--n", ncol_option: str = "--ncol") -> None:
    """Refuse, in one line naming the option and the limit, a bare grid of more than MAX_GRID_IMAGES images or wider
    or taller than MAX_IMAGE_SIDE pixels; checked before anything is drawn or allocated."""
    if n > MAX_GRID_IMAGES:
        raise VaelabError(f"{n_option}: {n:,} images is over the limit of {MAX_GRID_IMAGES:,} in one PNG grid "
                          f"(draw several grids, each with its own --seed)")
    if ncol > n:
        raise VaelabError(f"{ncol_option}: {ncol:,} images a row is more than the {n:,} images of the grid ({n_option})")
    width, height = grid_pixels(n, ncol, image_shape)
    if max(width, height) > MAX_IMAGE_SIDE:
        h, w = image_shape[-2:]
        widest = (MAX_IMAGE_SIDE - GRID_PAD) // (w + GRID_PAD)
        narrowest = math.ceil(n / ((MAX_IMAGE_SIDE - GRID_PAD) // (h + GRID_PAD)))
        fix = f"use {ncol_option} from {narrowest:,} to {min(widest, n):,}" if narrowest <= min(widest, n) else f"draw fewer images ({n_option})"
        raise VaelabError(f"{ncol_option}: {n:,} images of {h} x {w} pixels at {ncol:,} a row make a grid of {width:,} x {height:,} "
                          f"pixels, over the limit of {MAX_IMAGE_SIDE:,} a side; {fix}")


def labelled_grid_rows(cols: int, image_shape, cell_inches: float = CELL_INCHES) -> int:
    """The most rows of `cols` images a labelled grid may have (MAX_GRID_IMAGES, MAX_IMAGE_SIDE)."""
    h = image_shape[-2]
    fit = min(MAX_GRID_IMAGES // cols, int((MAX_IMAGE_SIDE / DPI - 1.2) / cell_inches), (MAX_IMAGE_SIDE - GRID_PAD) // (h + GRID_PAD))
    return fit if max(labelled_grid_pixels(1, cols, image_shape, cell_inches)) <= MAX_IMAGE_SIDE else 0


def check_labelled_grid(rows: int, cols: int, image_shape, option: str, cell_inches: float = CELL_INCHES, per_row: int = 1) -> None:
    """Refuse a labelled grid whose figure would be over MAX_GRID_IMAGES images or MAX_IMAGE_SIDE pixels a side, before
    its images are made, in one line naming `option` (per_row: how much of it one row takes) and the largest that fits."""
    fit = labelled_grid_rows(cols, image_shape, cell_inches)
    if rows <= fit:
        return
    width, height = labelled_grid_pixels(rows, cols, image_shape, cell_inches)
    raise VaelabError(f"{option}: a grid of {rows:,} rows of {cols:,} images is a {width:,} x {height:,} pixel figure, over the "
                      f"limits of {MAX_GRID_IMAGES:,} images and {MAX_IMAGE_SIDE:,} pixels a side"
                      + (f"; {option} {fit * per_row:,} at most" if fit else ""))


def save_grid(path: str | Path, images, ncol: int, image_shape=(28, 28)) -> Path:
    """Write images as a PNG grid (grey-scale for (H, W) images, RGB for (3, H, W))."""
    path = Path(path)
    grid = image_grid(images, ncol, image_shape, pad_value=0.5)
    del images  # the grid holds them now: a large grid is not held twice
    np.clip(grid, 0.0, 1.0, out=grid)
    pixels = _grey_rgba(grid) if grid.ndim == 2 else grid
    # Written beside and renamed: a signal or a full disk never leaves half a PNG under the name.
    write_atomically(path, lambda tmp: matplotlib.image.imsave(tmp, pixels, format=image_format(path)))
    return path


def image_format(path: Path) -> str:
    """The format matplotlib writes for `path`'s suffix (png without one)."""
    return path.suffix.lstrip(".").lower() or "png"


def _grey_rgba(grid: np.ndarray) -> np.ndarray:
    """The RGBA bytes imsave(cmap="gray", vmin=0, vmax=1) writes for values in [0, 1] (overwriting `grid`), by the
    colormap's own lookup table: matplotlib would map them through float64 RGBA, 32 bytes a pixel (1.4 GB for a grid
    of 10,000 dSprites)."""
    gray = matplotlib.colormaps["gray"]
    grid *= gray.N
    np.minimum(grid, gray.N - 1, out=grid)
    return gray(np.arange(gray.N), bytes=True)[grid.astype(np.uint8 if gray.N <= 256 else np.int64)]


def labelled_grid(path, images: torch.Tensor, image_shape, title: str, row_labels=(), col_labels=(),
                  xlabel: str = "", ylabel: str = "", cell_inches: float = 0.6) -> Path:
    """Images (rows, cols, D) as one figure whose rows and columns are named (which latent, which value,
    which class), at cell_inches per image, so the grid can be read without a legend elsewhere."""
    import matplotlib.pyplot as plt

    rows, cols = images.shape[:2]
    check_labelled_grid(rows, cols, image_shape, "figure", cell_inches)  # callers check first; this is the last guard
    grid = np.clip(image_grid(images.flatten(0, 1), cols, image_shape, pad_value=0.5), 0.0, 1.0)
    fig, ax = plt.subplots(figsize=(cols * cell_inches + 1.6, rows * cell_inches + 1.2))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    height, width = grid.shape[:2]
    ax.set_xticks([(j + 0.5) * width / cols for j in range(cols)], list(col_labels) or [""] * cols,
                  rotation=45 if any(len(str(c)) > 4 for c in col_labels) else 0, fontsize=8)
    ax.set_yticks([(i + 0.5) * height / rows for i in range(rows)], list(row_labels) or [""] * rows, fontsize=8)
    ax.tick_params(length=0)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    return save_figure(fig, path)


def prior_samples(model, n: int, seed: int = 0, mode: str = "mean") -> torch.Tensor:
    """n images from the model: decoder means for codes drawn from the prior, or a Bernoulli draw of them (decoded in
    chunks, so only the images themselves grow with n)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probs = _in_chunks(n, model.elements_per_sample, model.sample)
        return torch.bernoulli(probs) if mode == "sample" else probs


def label_grid(model, rows: int, seed: int = 0) -> torch.Tensor:
    """A label-conditioned model's grid (rows, C, D): row r holds one draw of the other codes decoded under every label."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _in_chunks(rows, model.elements_per_sample * model.classes, model.label_grid)


def reconstruction_pairs(model, batch: dict, ncol: int) -> torch.Tensor:
    """Rows alternate: ncol inputs, then their reconstructions E[x | codes = encode(x)] (made in chunks)."""
    x = batch["x"]
    chunk = max(1, DEFAULT_BUDGET // model.elements_per_sample)
    recon = torch.cat([model.reconstruct({key: value[i : i + chunk] for key, value in batch.items()}) for i in range(0, x.shape[0], chunk)])
    rows = []
    for i in range(0, x.shape[0], ncol):
        rows += [x[i : i + ncol], recon[i : i + ncol]]
    return torch.cat(rows)


DEFAULT_NCOL = 20
"""Images a row of the sample and reconstruction grids when not given (fewer when there are fewer images)."""


def write_sample_grids(model, cfg, test, out, recon_out, n: int = 200, ncol: int | None = None, seed: int = 0,
                       mode: str = "mean", recon_n: int = 60) -> list[Path]:
    """The sample grid (one column per label for models that generate given a label) and, when `test`
    is given, the reconstruction grid of a run's model. Returns the paths written. Both grids' sizes are
    checked (MAX_GRID_IMAGES, MAX_IMAGE_SIDE) before the first image is drawn."""
    shape = tuple(cfg.model.image_shape)
    if int(np.prod(shape)) != cfg.model.x_dim:
        raise VaelabError(f"model.image_shape {shape} does not match model.x_dim {cfg.model.x_dim} in config.json")
    labelled = model.spec.label_code is not None
    if labelled:
        check_labelled_grid(max(1, n // model.classes), model.classes, shape, "--n", per_row=model.classes)
    else:
        check_grid(n, min(DEFAULT_NCOL, n) if ncol is None else ncol, shape)
    if test is not None:
        x, y = evaluation_set("cs236" if cfg.data.dataset == "mnist" else "full", test, model.binary_pixels)
        x, y = x[:recon_n], y[:recon_n]
        recon_ncol = min(DEFAULT_NCOL if ncol is None else ncol, x.shape[0])
        check_grid(2 * x.shape[0], recon_ncol, shape, "--recon-n (two images each)", "--ncol")
    if labelled:
        from ..data import dataset_for

        grid = label_grid(model, max(1, n // model.classes), seed)
        names = list(dataset_for(cfg.data).classes[: grid.shape[1]])
        names += [str(c) for c in range(len(names), grid.shape[1])]
        labelled_grid(out, grid, shape, f"{cfg.train.label or cfg.model.name}: one draw of z per row, decoded under every label",
                      col_labels=names, xlabel="label y (content)", ylabel="draw of z (style)")
    else:
        save_grid(out, prior_samples(model, n, seed, mode), min(DEFAULT_NCOL, n) if ncol is None else ncol, shape)
    written = [Path(out)]
    if test is not None:
        with torch.no_grad():
            save_grid(recon_out, reconstruction_pairs(model, model_batch(model, x, y), recon_ncol), recon_ncol, shape)
        written.append(Path(recon_out))
    return written


# --- Latent-space figures (vaelab plot) ---


def save_figure(fig, path) -> Path:
    """A matplotlib figure written to `path` at DPI, its folder made."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:  # bbox tight: long row labels (traversal factors) must not push axis labels off; atomically, as save_grid
        write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format=image_format(path)))
    finally:
        plt.close(fig)
    return path
