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


def write_sample_grids(model, cfg, test, out, recon_out, n: int = 200, ncol: int = 20, seed: int = 0,
                       mode: str = "mean", recon_n: int = 60) -> list[Path]:
    """The sample grid (a style/content grid for conditional models) and, when `test` is given, the
    reconstruction grid of a run's model. Returns the paths written."""
    from .errors import VaelabError
    from .evaluate import evaluation_set, is_binary

    shape = tuple(cfg.model.image_shape)
    if int(np.prod(shape)) != cfg.model.x_dim:
        raise VaelabError(f"model.image_shape {shape} does not match model.x_dim {cfg.model.x_dim} in config.json")
    if model.conditional:
        save_grid(out, style_content(model, max(1, n // cfg.model.classes), seed), cfg.model.classes, shape)
    else:
        save_grid(out, prior_samples(model, n, seed, mode), ncol, shape)
    written = [Path(out)]
    if test is not None:
        x, y = evaluation_set("cs236" if cfg.data.dataset == "mnist" else "full", test, is_binary(model))
        x, y = x[:recon_n], y[:recon_n]
        ncol = min(ncol, x.shape[0])
        with torch.no_grad():
            save_grid(recon_out, reconstruction_pairs(model, x, ncol, y if model.conditional else None), ncol, shape)
        written.append(Path(recon_out))
    return written


# --- Latent-space figures (vaelab plot) ---


@torch.no_grad()
def _posterior_means(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 1000) -> torch.Tensor:
    chunks = []
    for i in range(0, x.shape[0], batch):
        q = model.posterior(x[i : i + batch]) if y is None else model.posterior(x[i : i + batch], y[i : i + batch])
        chunks.append(q.mean)
    return torch.cat(chunks)


def _decode(model, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    return model.likelihood(z).mean if y is None else model.likelihood(z, y).mean


@torch.no_grad()
def interpolation(model, x: torch.Tensor, pairs: int = 8, steps: int = 10, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded straight lines between the posterior means of images (2i, 2i+1): (pairs * steps, x_dim).
    Conditional models keep the first image's label along each line."""
    means = _posterior_means(model, x[: 2 * pairs], None if y is None else y[: 2 * pairs])
    t = torch.linspace(0, 1, steps, device=means.device).view(1, steps, 1)
    z = means[0::2].unsqueeze(1) * (1 - t) + means[1::2].unsqueeze(1) * t  # (pairs, steps, z)
    labels = None if y is None else y[: 2 * pairs : 2].repeat_interleave(steps)
    return _decode(model, z.reshape(-1, z.shape[-1]), labels)


@torch.no_grad()
def traversal(model, x: torch.Tensor, span: float = 3.0, steps: int = 9, y: torch.Tensor | None = None) -> torch.Tensor:
    """Row j varies latent dimension j over [-span, span] with the others at the posterior mean of x[0]:
    (z_dim * steps, x_dim). Shows what each dimension encodes (disentanglement in beta-VAEs)."""
    base = _posterior_means(model, x[:1], None if y is None else y[:1])[0]
    z_dim = base.shape[0]
    values = torch.linspace(-span, span, steps, device=base.device)
    z = base.repeat(z_dim, steps, 1)  # (z_dim, steps, z_dim)
    z[torch.arange(z_dim), :, torch.arange(z_dim)] = values
    labels = None if y is None else y[:1].expand(z_dim * steps)
    return _decode(model, z.reshape(-1, z_dim), labels)


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project points (N, D) on their first two principal components (identity for D = 2)."""
    if points.shape[1] <= 2:
        return points
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def latent_scatter(model, x: torch.Tensor, labels: torch.Tensor, path, title: str = "") -> Path:
    """Scatter of posterior means coloured by label: directly for 2-D latents, else a PCA projection."""
    import matplotlib.pyplot as plt

    means = _posterior_means(model, x, labels if getattr(model, "conditional", False) else None).cpu()
    xy = pca_2d(means).numpy()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="label")
    kind = "z" if means.shape[1] <= 2 else f"PCA of {means.shape[1]}-d posterior means"
    ax.set(xlabel=f"{kind} 1" if means.shape[1] > 2 else "z1", ylabel=f"{kind} 2" if means.shape[1] > 2 else "z2", title=title)
    return _save(fig, path)


@torch.no_grad()
def kl_per_dimension(model, x: torch.Tensor, y: torch.Tensor | None = None, batch: int = 1000) -> torch.Tensor:
    """Mean analytic KL(q(z_j|x) || p(z_j)) per latent dimension over the images x, (z_dim,)."""
    total = None
    for i in range(0, x.shape[0], batch):
        terms = model(x[i : i + batch], 1, y=None if y is None else y[i : i + batch])
        if terms.kl_dims is None:
            raise ValueError("KL per dimension needs a diagonal posterior and a factorised prior")
        part = terms.kl_dims.sum(0)
        total = part if total is None else total + part
    return total / x.shape[0]


def kl_bar_chart(kl: torch.Tensor, path, title: str = "", threshold: float = 0.01) -> Path:
    import matplotlib.pyplot as plt

    values = kl.cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(values) + 1), 3.5))
    ax.bar(range(len(values)), values, color=["tab:blue" if v > threshold else "tab:gray" for v in values])
    ax.set(xlabel="latent dimension", ylabel="mean KL (nats)", title=title or f"KL per dimension (total {values.sum():.2f} nats)")
    ax.set_xticks(range(len(values)))
    return _save(fig, path)


def training_curves(histories: dict, path, keys=("loss", "kl", "rec")) -> Path:
    """One panel per metric, one line per run: histories maps run name -> list of metrics.jsonl records."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in histories.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, lw=1.2)
        ax.set(xlabel="step", ylabel=key, title=key)
        if key in ("loss", "nelbo", "rec"):
            _clip_to_tail(ax, histories, key)
    axes[0][0].legend(fontsize=7)
    return _save(fig, path)


def _clip_to_tail(ax, histories, key):
    # Early steps are far above the rest; show the range of the last 90% of training.
    tails = [r[key] for records in histories.values() for r in records[len(records) // 10 :] if key in r]
    if tails:
        low, high = min(tails), max(tails)
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1))


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
