"""Figures of any model, through the model contract: prior samples, label grids (one column per label),
reconstructions, interpolations, traversals, latent scatters, KL per dimension and training curves, as PNG."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..data import image_grid  # noqa: E402
from ..errors import VaelabError  # noqa: E402
from ..evaluation import DEFAULT_BUDGET, continuous_codes, evaluation_set, model_batch, posterior_means  # noqa: E402

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
    path.parent.mkdir(parents=True, exist_ok=True)
    grid = image_grid(images, ncol, image_shape, pad_value=0.5)
    del images  # the grid holds them now: a large grid is not held twice
    np.clip(grid, 0.0, 1.0, out=grid)
    if grid.ndim == 2:
        matplotlib.image.imsave(path, _grey_rgba(grid))
    else:
        matplotlib.image.imsave(path, grid)
    return path


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
    return _save(fig, path)


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
        from ..data import DATASETS

        grid = label_grid(model, max(1, n // model.classes), seed)
        spec = DATASETS.get(cfg.data.dataset)
        names = spec.classes[: grid.shape[1]] if spec is not None else [str(c) for c in range(grid.shape[1])]
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


def _continuous(codes: dict) -> str:
    """The name of the one continuous latent group that interpolations and traversals vary."""
    names = list(continuous_codes(codes))
    if len(names) != 1:
        raise VaelabError(f"this figure varies one continuous latent group; the model has {len(names)} ({', '.join(names)})")
    return names[0]


@torch.no_grad()
def interpolation(model, x: torch.Tensor, pairs: int = 8, steps: int = 10, y: torch.Tensor | None = None) -> torch.Tensor:
    """Decoded straight lines between the posterior means of images (2i, 2i+1): (pairs * steps, D).
    Other codes (a label) keep the first image's value along each line."""
    codes = model.encode(model_batch(model, x, y, 0, 2 * pairs))
    name = _continuous(codes)
    means = codes[name]
    t = torch.linspace(0, 1, steps, device=means.device).view(1, steps, 1)
    line = means[0::2].unsqueeze(1) * (1 - t) + means[1::2].unsqueeze(1) * t  # (pairs, steps, d)
    path = {key: value[0::2].repeat_interleave(steps, 0) for key, value in codes.items() if key != name}
    path[name] = line.reshape(-1, line.shape[-1])
    return model.decode(path)


MAX_TRAVERSAL_ROWS = 64
"""Latent dimensions a traversal shows at most, one row each; of a larger latent, those of largest KL (or the first)."""


def check_traversal(model) -> None:
    """A traversal varies one continuous latent dimension a row: refused in one line for a model whose code is discrete
    (a codebook's grid: stepping one entry of a code vector leaves the codebook, and the grid has thousands of them)."""
    if model.spec.codebook:
        grid = getattr(model, "grid", None)
        what = f"a {grid[0]} x {grid[1]} grid of discrete codes" if grid else "discrete codes"
        raise VaelabError(f"--kind traversal: varies one continuous latent a row; model {model.config.name!r} encodes an image as {what} "
                          f"(try --kind interpolation or lossy)")


def traversal_dimensions(d: int, kl: torch.Tensor | None = None, limit: int = MAX_TRAVERSAL_ROWS) -> list[int]:
    """The dimensions a traversal shows, in order: all d, or the `limit` of largest KL (the first `limit` without KL)."""
    if d <= limit:
        return list(range(d))
    if kl is None:
        return list(range(limit))
    return sorted(torch.topk(kl.detach().float().cpu(), limit).indices.tolist())


@torch.no_grad()
def traversal(model, x: torch.Tensor, span: float = 3.0, steps: int = 9, y: torch.Tensor | None = None,
              codes: dict | None = None, dims: list[int] | None = None) -> torch.Tensor:
    """Row i varies latent dimension dims[i] (default: every dimension, in order) over [-span, span] with the others at
    the posterior mean of x[0] (or at `codes`, that image's encode() if the caller has it): (len(dims), steps, D).
    Shows what each dimension encodes (disentanglement in beta-VAEs)."""
    codes = model.encode(model_batch(model, x, y, 0, 1)) if codes is None else codes
    name = _continuous(codes)
    base = codes[name][0]
    d = base.shape[0]
    dims = torch.arange(d, device=base.device) if dims is None else torch.as_tensor(dims, device=base.device)
    rows = len(dims)
    values = torch.linspace(-span, span, steps, device=base.device)
    z = base.repeat(rows, steps, 1)  # (rows, steps, d)
    z[torch.arange(rows, device=base.device), :, dims] = values
    path = {key: value.expand(rows * steps, *value.shape[1:]) for key, value in codes.items() if key != name}
    path[name] = z.reshape(-1, d)
    return model.decode(path).view(rows, steps, -1)


def factor_notes(disentanglement: dict) -> list[str]:
    """For each code dimension, the ground-truth factor it carries most information about and how much (from an
    eval-disentanglement.json's I(z_j; v_k) matrix), e.g. 'position_x 1.9 nats'."""
    names = disentanglement["factors"]
    return [f"{names[max(range(len(row)), key=row.__getitem__)]} {max(row):.2g} nats" for row in disentanglement["code_factor_information"]]


INACTIVE_KL = 0.01
"""nats: a latent dimension whose mean KL is below this carries (almost) nothing; its traversal row is marked so."""


def traversal_figure(model, x: torch.Tensor, path, title: str, span: float = 3.0, steps: int = 9, y=None,
                     notes: list[str] | None = None, kl: dict[str, torch.Tensor] | None = None) -> Path:
    """notes: one per latent dimension, added to its row's label (the factor it captures: factor_notes); kl: the
    mean KL per dimension of each latent group (kl_per_dimension), shown per row, and inactive rows say so instead
    (binned information between a near-constant code and a factor is not zero, so its note would mislead). A latent
    of more than MAX_TRAVERSAL_ROWS dimensions shows that many, those of largest KL, and the title says so."""
    check_traversal(model)
    codes = model.encode(model_batch(model, x, y, 0, 1))
    name = _continuous(codes)
    dims_kl = (kl or {}).get(name)
    d = codes[name].shape[1]
    shown = traversal_dimensions(d, dims_kl)
    if len(shown) < d:
        title += f" ({len(shown)} of {d} dimensions: {'those of largest KL' if dims_kl is not None else 'the first'})"
    check_labelled_grid(len(shown), steps, tuple(model.config.image_shape), "traversal")
    images = traversal(model, x, span, steps, y, codes, shown)
    values = torch.linspace(-span, span, steps).tolist()
    rows = []
    for j in shown:
        note = notes[j] if notes and j < len(notes) else ""
        label = f"{name}[{j}]"
        if dims_kl is not None:
            label += f" (KL {float(dims_kl[j]):.2f})"
            note = "inactive" if dims_kl[j] < INACTIVE_KL else note
        rows.append(label + (f": {note}" if note else ""))
    return labelled_grid(path, images, tuple(model.config.image_shape), title,
                         row_labels=rows, col_labels=[f"{v:+.2g}" for v in values],
                         xlabel="value of the latent (the others at the posterior mean of one test image)",
                         ylabel="latent dimension varied")


def interpolation_figure(model, x: torch.Tensor, path, title: str, pairs: int = 8, steps: int = 10, y=None) -> Path:
    images = interpolation(model, x, pairs, steps, y).view(pairs, steps, -1)
    return labelled_grid(path, images, tuple(model.config.image_shape), title,
                         row_labels=[f"{2 * i}->{2 * i + 1}" for i in range(pairs)], col_labels=[f"{t:.2g}" for t in torch.linspace(0, 1, steps).tolist()],
                         xlabel="t: (1 - t) mean(z|x_a) + t mean(z|x_b)", ylabel="test images a->b")


@torch.no_grad()
def lossy_codes(model, x: torch.Tensor, images: int = 8, redraws: int = 6, y: torch.Tensor | None = None) -> torch.Tensor:
    """Row i: test image i, then `redraws` decodings of its code (encode once, decode `redraws` times): (images,
    1 + redraws, D). A decoder that draws pixels (PixelCNN) redraws what the code left out, so the columns show what
    z keeps (PixelVAE's and VLAE's lossy codes); a factorised decoder repeats one image."""
    batch = model_batch(model, x, y, 0, images)
    codes = model.encode(batch)
    repeated = {name: value.repeat_interleave(redraws, 0) for name, value in codes.items()}
    decoded = model.decode(repeated).view(batch["x"].shape[0], redraws, -1)
    return torch.cat([batch["x"].unsqueeze(1).to(decoded.dtype), decoded], 1)


def lossy_codes_figure(model, x: torch.Tensor, path, title: str, images: int = 8, redraws: int = 6, y=None) -> Path:
    grid = lossy_codes(model, x, images, redraws, y)
    return labelled_grid(path, grid, tuple(model.config.image_shape), title, row_labels=[str(i) for i in range(grid.shape[0])],
                         col_labels=["input"] + [f"draw {j + 1}" for j in range(redraws)],
                         xlabel="the test image, then decodings of its code (posterior mean)", ylabel="test image")


def pca_2d(points: torch.Tensor) -> torch.Tensor:
    """Project points (N, D) on their first two principal components (identity for D = 2)."""
    if points.shape[1] <= 2:
        return points
    centred = points - points.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    return centred @ v[:2].T


def latent_scatter(model, x: torch.Tensor, labels: torch.Tensor, path, title: str = "") -> Path:
    """Scatter of posterior means coloured by label: directly for 2-D latents, else a PCA projection
    (of all continuous latent groups side by side)."""
    import matplotlib.pyplot as plt

    means = torch.cat(list(posterior_means(model, x, labels if model.spec.labels == "all" else None).values()), -1).cpu()
    xy = pca_2d(means).numpy()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=3, alpha=0.7, vmin=-0.5, vmax=9.5)
    fig.colorbar(sc, ax=ax, ticks=range(10), label="label")
    kind = "z" if means.shape[1] <= 2 else f"PCA of {means.shape[1]}-d posterior means"
    ax.set(xlabel=f"{kind} 1" if means.shape[1] > 2 else "z1", ylabel=f"{kind} 2" if means.shape[1] > 2 else "z2", title=title)
    return _save(fig, path)


MAX_NAMED_BARS = 64
"""Bars of a per-dimension chart that get a tick each and widen the figure; more share its width."""


def kl_bar_chart(kl: torch.Tensor, path, title: str = "", threshold: float = 0.01) -> Path:
    import matplotlib.pyplot as plt

    values = kl.cpu().numpy()
    fig, ax = plt.subplots(figsize=(max(4, 0.35 * min(len(values), MAX_NAMED_BARS) + 1), 3.5))
    ax.bar(range(len(values)), values, color=["tab:blue" if v > threshold else "tab:gray" for v in values])
    ax.set(xlabel="latent dimension", ylabel="mean KL (nats)", title=title or f"KL per dimension (total {values.sum():.2f} nats)")
    if len(values) <= MAX_NAMED_BARS:
        ax.set_xticks(range(len(values)))
    return _save(fig, path)


def kl_diagnostics_figure(per_dimension: torch.Tensor, per_dimension_is_kl: bool, surgery: dict | None, path,
                          title: str = "", threshold: float = 0.01, groups: list[tuple[str, int]] | None = None) -> Path:
    """Left: the KL per latent dimension (or, where q and p do not factorise, the activity Var_x E[z_j | x]
    of each dimension against Burda et al.'s 0.01 threshold). Right, for models with ELBO surgery: the
    average KL split into the mutual information I(x; z) and the marginal KL(q(z) || p(z)), with I's
    ceiling log N for the N images of the estimate."""
    import matplotlib.pyplot as plt

    values = per_dimension.cpu().numpy()
    named = len(values) <= MAX_NAMED_BARS  # beyond, bars get thinner, not the figure wider, and ticks are matplotlib's
    widths = [max(4.0, 0.3 * min(len(values), MAX_NAMED_BARS) + 1.5), 3.8][: 2 if surgery else 1]  # inches: bars, then the surgery panel
    fig, axes = plt.subplots(1, len(widths), figsize=(sum(widths), 3.8), squeeze=False, gridspec_kw={"width_ratios": widths})
    ax = axes[0, 0]
    active = int((values > threshold).sum())
    ax.bar(range(len(values)), values, color=["tab:blue" if v > threshold else "tab:gray" for v in values])
    if named:
        ax.set_xticks(range(len(values)))
    ax.set_xlabel("latent dimension")
    if groups and len(groups) > 1:  # several latent groups side by side: name each, a line between them
        start = 0
        for name, size in groups:
            ax.text(start + (size - 1) / 2, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=9)
            if start:
                ax.axvline(start - 0.5, color="black", lw=0.8)
            start += size
        if named:
            ax.set_xticks(range(len(values)), [str(j) for _, size in groups for j in range(size)], fontsize=7)
        ax.set_xlabel("latent dimension within each group" if named else "latent dimension, groups side by side")
    if per_dimension_is_kl:
        ax.set(ylabel="mean KL(q(z_j|x) || p(z_j)), nats", title=f"KL per dimension: total {values.sum():.2f} nats, {active} above {threshold}")
    else:
        ax.axhline(threshold, color="tab:red", lw=0.8, ls="--")
        ax.set(ylabel="Var_x E[z_j | x]", yscale="log", title=f"activity per dimension: {active} active units (> {threshold})")
    if surgery:
        ax = axes[0, 1]
        mi, marginal = surgery["mutual_information"], surgery["marginal_kl"]
        ax.bar(["KL"], [mi], color="tab:orange", label=f"I(x; z) = {mi:.2f}")
        ax.bar(["KL"], [marginal], bottom=[mi], color="tab:purple", label=f"KL(q(z) || p(z)) = {marginal:.2f}")
        ax.axhline(surgery["log_images"], color="black", lw=0.8, ls=":", label=f"log N = {surgery['log_images']:.2f}")
        ax.set(ylabel="nats", title=f"ELBO surgery, N = {surgery['images']} images")
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# What each logged quantity is, for curve titles. The NELBO is the true (beta = 1) bound whatever the
# objective trained, so runs of different objectives (beta-VAE, IWAE, free bits) compare on one scale.
CURVE_TITLES = {
    "nelbo": "NELBO = Rec + KL (beta = 1)",
    "kl": "KL(q(z|x) || p(z))",
    "rec": "Rec = -E_q log p(x|z)",
    "loss": "training loss (the run's own objective)",
}


def training_curves_figure(histories: dict, keys=("nelbo", "kl", "rec")):
    """One panel per metric, one line per run (histories: run name -> metrics.jsonl records), in nats
    per training image, averaged over each logging interval."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, records in histories.items():
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, label=name, lw=1.2)
        ax.set(xlabel="training step", ylabel="nats per image (training batches)", title=CURVE_TITLES.get(key, key))
        if key in ("loss", "nelbo", "rec"):
            _clip_to_tail(ax, histories, key)
    axes[0][0].legend(fontsize=7, title="run")
    return fig


def training_curves(histories: dict, path, keys=("nelbo", "kl", "rec")) -> Path:
    return _save(training_curves_figure(histories, keys), path)


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
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long row labels (traversal factors) must not push axis labels off
    plt.close(fig)
    return path
