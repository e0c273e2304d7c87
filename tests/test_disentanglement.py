"""Disentanglement metrics on synthetic representations whose scores are known: a code that copies each factor
into its own dimension scores about 1 on all four; rotating two factors by 45 degrees into two dimensions makes
the pair indistinguishable (beta-VAE and FactorVAE metrics about 2/3, MIG about 1/3); a random rotation of all the
factors lowers MIG and DCI disentanglement."""

from __future__ import annotations

import numpy as np
import pytest

from vaelab.evaluation.disentanglement import dci_from_importance, disentanglement_scores, uniform_factors

SIZES = dict(batch=32, train=600, evaluate=400, points=3000)


class Toy:
    factor_sizes = (5, 6, 7)

    def sample_factors(self, n, rng):
        return uniform_factors(self.factor_sizes, n, rng)


def _perfect(seed: int = 1):
    noise = np.random.default_rng(seed)

    def represent(values):
        z = values / np.array(Toy.factor_sizes)
        # each factor in its own dimension, slightly noisy, plus a collapsed dimension
        return np.concatenate([z + 0.01 * noise.standard_normal(z.shape), 0.001 * noise.standard_normal((len(values), 1))], 1)

    return represent


def _scores(represent):
    return disentanglement_scores(Toy(), represent, seed=0, **SIZES)


def test_a_disentangled_code_scores_about_one():
    s = _scores(_perfect())
    for key in ("beta_vae", "factor_vae", "mig", "dci_disentanglement", "dci_completeness", "dci_informativeness"):
        assert s[key] > 0.95, (key, s[key])
    assert s["factor_vae_active_dimensions"] == 3  # the collapsed dimension is left out


def test_two_factors_mixed_in_two_dimensions_score_as_predicted():
    perfect = _perfect()

    def mixed(values):
        z = perfect(values)
        a, b = z[:, 0].copy(), z[:, 1].copy()
        z[:, 0], z[:, 1] = (a + b) / np.sqrt(2), (a - b) / np.sqrt(2)
        return z

    s = _scores(mixed)
    # fixing factor 0 or 1 shrinks both mixed dimensions alike: the classifiers tell them apart half the time
    assert s["beta_vae"] == pytest.approx(2 / 3, abs=0.1) and s["factor_vae"] == pytest.approx(2 / 3, abs=0.1)
    assert s["mig"] == pytest.approx(1 / 3, abs=0.06) and s["mig_per_factor"][2] > 0.95
    assert s["dci_disentanglement"] < 0.75 and s["dci_informativeness"] > 0.95  # still informative, not disentangled


def test_a_random_rotation_lowers_mig_and_dci():
    perfect = _perfect()
    rotation, _ = np.linalg.qr(np.random.default_rng(2).standard_normal((4, 4)))
    s = _scores(lambda values: perfect(values) @ rotation)
    assert s["mig"] < 0.6 and s["dci_disentanglement"] < 0.7 and s["dci_informativeness"] > 0.9


def test_dci_from_importance_closed_forms():
    assert dci_from_importance(np.eye(3)) == pytest.approx((1.0, 1.0))
    assert dci_from_importance(np.ones((3, 3))) == pytest.approx((0.0, 0.0), abs=1e-9)
    # code 0 explains factor 0 alone; code 1 splits evenly over both factors (entropy 1 in base 2)
    d, c = dci_from_importance(np.array([[2.0, 0.0], [1.0, 1.0]]))
    assert d == pytest.approx(0.5 * 1 + 0.5 * 0)
    # factor 0: importances (2, 1) over 2 codes; factor 1: (0, 1); weights 3/4 and 1/4
    h = -(2 / 3 * np.log2(2 / 3) + 1 / 3 * np.log2(1 / 3))
    assert c == pytest.approx(0.75 * (1 - h) + 0.25 * 1)
