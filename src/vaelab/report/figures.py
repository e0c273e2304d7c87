"""Figures of a model's latent space and training, through the model contract: interpolations, traversals,
lossy codes, latent scatters, KL per dimension and training curves, as PNG (image grids: grids.py)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.image  # noqa: E402
import torch  # noqa: E402

from ..errors import VaelabError  # noqa: E402
from ..evaluation import continuous_codes, model_batch, posterior_means  # noqa: E402
from .grids import check_labelled_grid, labelled_grid, save_figure  # noqa: E402


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


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
    return save_figure(training_curves_figure(histories, keys), path)


def _clip_to_tail(ax, histories, key):
    # Early steps are far above the rest; show the range of the last 90% of training.
    tails = [r[key] for records in histories.values() for r in records[len(records) // 10 :] if key in r]
    if tails:
        low, high = min(tails), max(tails)
        ax.set_ylim(low - 0.05 * (high - low + 1), high + 0.05 * (high - low + 1))
