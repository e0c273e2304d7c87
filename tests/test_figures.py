"""Figures read without a legend elsewhere: named rows and columns, titles that say what is plotted, units."""

from __future__ import annotations

import torch

from vaelab.models import build_model, model_config
from vaelab.report import figures, grids
from vaelab.training.config import load_preset


def _texts(ax):
    return [t.get_text() for t in ax.get_xticklabels()], [t.get_text() for t in ax.get_yticklabels()]


def test_traversal_names_each_latent_and_value(captured):
    model = build_model(model_config(z_dim=3, hidden=(8,))).eval()
    figures.traversal_figure(model, torch.bernoulli(torch.rand(4, 784)), "t.png", "run: traversal", span=2.0, steps=5)
    ax = captured[0].axes[0]
    columns, rows = _texts(ax)
    assert rows == ["z[0]", "z[1]", "z[2]"] and columns == ["-2", "-1", "+0", "+1", "+2"]
    assert "value of the latent" in ax.get_xlabel() and ax.get_ylabel() == "latent dimension varied" and ax.get_title() == "run: traversal"
    assert captured[0].get_size_inches()[0] * captured[0].dpi >= 300


def test_traversal_rows_show_each_latents_kl_and_mark_the_inactive_ones(captured):
    """A dimension with no KL carries nothing, whatever binned information its factor note claims: its row says so."""
    model = build_model(model_config(z_dim=3, hidden=(8,))).eval()
    notes = ["position_x 0.9 nats", "shape 0.3 nats", "scale 0.2 nats"]
    figures.traversal_figure(model, torch.bernoulli(torch.rand(4, 784)), "t.png", "run", steps=3, notes=notes,
                             kl={"z": torch.tensor([2.31, 0.004, 0.5])})
    _, rows = _texts(captured[0].axes[0])
    assert rows == ["z[0] (KL 2.31): position_x 0.9 nats", "z[1] (KL 0.00): inactive", "z[2] (KL 0.50): scale 0.2 nats"]


def test_interpolation_names_its_end_points_and_t(captured):
    model = build_model(model_config(z_dim=3, hidden=(8,))).eval()
    figures.interpolation_figure(model, torch.bernoulli(torch.rand(8, 784)), "i.png", "run: interpolation", pairs=4, steps=3)
    columns, rows = _texts(captured[0].axes[0])
    assert rows == ["0->1", "2->3", "4->5", "6->7"] and columns == ["0", "0.5", "1"]


def test_the_conditional_grid_names_fashion_mnist_classes(captured, tmp_path):
    cfg = load_preset("cvae")
    cfg.data.dataset = "fashion-mnist"
    cfg.model.x_dim, cfg.model.image_shape, cfg.model.hidden = 784, (28, 28), (8,)
    model = build_model(cfg.model).eval()
    grids.write_sample_grids(model, cfg, None, tmp_path / "s.png", tmp_path / "r.png", n=20)
    ax = captured[0].axes[0]
    columns, _ = _texts(ax)
    assert columns[:3] == ["T-shirt/top", "Trouser", "Pullover"] and columns[-1] == "Ankle boot"
    assert ax.get_xlabel() == "label y (content)" and ax.get_ylabel() == "draw of z (style)" and ax.get_title().startswith("cvae")


def test_curves_plot_the_true_nelbo_with_units(captured):
    history = [{"step": s, "loss": 200.0 - s, "nelbo": 210.0 - s, "kl": 10.0, "rec": 200.0 - s} for s in range(10, 110, 10)]
    figures.training_curves({"beta4": history, "iwae": history}, "c.png")
    axes = captured[0].axes
    assert [ax.get_title() for ax in axes] == ["NELBO = Rec + KL (beta = 1)", "KL(q(z|x) || p(z))", "Rec = -E_q log p(x|z)"]
    assert all(ax.get_ylabel() == "nats per image (training batches)" and ax.get_xlabel() == "training step" for ax in axes)
    assert [t.get_text() for t in axes[0].get_legend().get_texts()] == ["beta4", "iwae"]
