"""Disentanglement metrics on data whose generative factors are known, from the papers:

beta-VAE metric (Higgins et al. 2017): pairs of inputs share one factor k, the others drawn afresh; a linear
    classifier predicts k from the mean |z(x1) - z(x2)| over a batch of pairs. Score: its held-out accuracy.
FactorVAE metric (Kim & Mnih 2018): codes scaled by their standard deviation over the data; in a batch that shares
    factor k, the dimension of least variance votes for k; a majority-vote classifier maps dimension -> factor.
    Score: its held-out accuracy. Dimensions whose variance over the data is below 0.05 are left out (collapsed).
MIG (Chen et al. 2018): codes discretised into 20 bins per dimension; for each factor the gap between the two
    largest I(z_j; v_k), divided by H(v_k); averaged over factors.
DCI (Eastwood & Williams 2018): an importance R_jk of code j for factor k from a random forest predicting k from z;
    disentanglement = sum_j rho_j (1 - H_K(R_j. / sum)), completeness = sum_k rho_k (1 - H_D(R_.k / sum)),
    informativeness = the forests' held-out accuracy (the paper's random-forest variant; disentanglement_lib uses
    gradient boosting, which is slower).
Defaults follow disentanglement_lib's (batch 64, 10,000 training and 5,000 held-out points). Everything takes a
`FactorData` (factor sizes, a sampler of factor values and the inputs they make) and a function from inputs to codes
(a model's posterior means), so the metrics are tested on synthetic representations whose scores are known.
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ..errors import ArgumentError

MIN_METRIC_POINTS = 10
"""The fewest training points a metric is computed from (half as many held out): below it a held-out set of a few
points scores 0 or 1 by chance."""

Represent = Callable[[np.ndarray], np.ndarray]
"""Factor values (n, K) -> codes (n, d): the ground-truth data's inputs for those values, then a model's encoder."""


class FactorData(Protocol):
    factor_sizes: tuple[int, ...]

    def sample_factors(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """n draws of the factors' values, (n, K) integers, each uniform over its range."""

    def observations(self, factors: np.ndarray) -> np.ndarray:
        """The inputs (images) those factor values make, (n, ...) (only for evaluating a model)."""


def uniform_factors(sizes: tuple[int, ...], n: int, rng: np.random.Generator) -> np.ndarray:
    return np.stack([rng.integers(size, size=n) for size in sizes], axis=1)


def beta_vae_score(data: FactorData, represent: Represent, rng: np.random.Generator, batch: int = 64,
                   train: int = 10_000, evaluate: int = 5_000) -> dict:
    from sklearn.linear_model import LogisticRegression

    def points(n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs, labels = [], rng.integers(len(data.factor_sizes), size=n)
        for k in labels:
            first, second = data.sample_factors(batch, rng), data.sample_factors(batch, rng)
            second[:, k] = first[:, k]
            pairs.append(np.stack([first, second]))
        pairs = np.stack(pairs)  # (n, 2, batch, K); encoded at once: batches of 64 images keep a conv encoder idle
        codes = represent(pairs.reshape(-1, pairs.shape[-1])).reshape(n, 2, batch, -1)
        return np.abs(codes[:, 0] - codes[:, 1]).mean(1), labels

    x_train, y_train = points(train)
    x_eval, y_eval = points(evaluate)
    if len(np.unique(y_train)) == 1:  # few points can all fix one factor; the only classifier then names that factor
        return {"beta_vae_train": 1.0, "beta_vae": float(np.mean(y_eval == y_train[0]))}
    classifier = LogisticRegression(max_iter=2000).fit(x_train, y_train)
    return {"beta_vae_train": float(classifier.score(x_train, y_train)), "beta_vae": float(classifier.score(x_eval, y_eval))}


def factor_vae_score(data: FactorData, represent: Represent, rng: np.random.Generator, batch: int = 64,
                     train: int = 10_000, evaluate: int = 5_000, variance_points: int = 10_000,
                     collapsed_variance: float = 0.05) -> dict:
    scale = np.std(represent(data.sample_factors(variance_points, rng)), axis=0, ddof=1)
    active = scale**2 > collapsed_variance
    if not active.any():
        return {"factor_vae_train": 0.0, "factor_vae": 0.0, "factor_vae_active_dimensions": 0}
    factors = len(data.factor_sizes)

    def votes(n: int) -> np.ndarray:
        fixed, groups = rng.integers(factors, size=n), []
        for k in fixed:
            values = data.sample_factors(batch, rng)
            values[:, k] = values[0, k]
            groups.append(values)
        codes = represent(np.concatenate(groups)).reshape(n, batch, -1)
        variance = np.var(codes / np.where(active, scale, 1.0), axis=1, ddof=1)  # (n, d)
        counts = np.zeros((len(scale), factors), dtype=np.int64)
        np.add.at(counts, (np.flatnonzero(active)[np.argmin(variance[:, active], axis=1)], fixed), 1)
        return counts

    train_votes, eval_votes = votes(train), votes(evaluate)
    classifier = train_votes.argmax(1)  # dimension -> the factor it voted for most
    return {"factor_vae_train": float(train_votes.max(1).sum() / train),
            "factor_vae": float(eval_votes[np.arange(len(classifier)), classifier].sum() / evaluate),
            "factor_vae_active_dimensions": int(active.sum())}


def _discretise(codes: np.ndarray, bins: int) -> np.ndarray:
    """Each column cut into `bins` equal-width bins over its range (as disentanglement_lib's histogram)."""
    out = np.zeros(codes.shape, dtype=np.int64)
    for j in range(codes.shape[1]):
        edges = np.histogram_bin_edges(codes[:, j], bins)
        out[:, j] = np.digitize(codes[:, j], edges[:-1])
    return out


def mig_score(data: FactorData, represent: Represent, rng: np.random.Generator, points: int = 10_000, bins: int = 20) -> dict:
    """Also returns the matrix I(z_j; v_k) (d x K, nats), which says which factor each code dimension captures."""
    from sklearn.metrics import mutual_info_score

    values = data.sample_factors(points, rng)
    codes = _discretise(represent(values), bins)
    information = np.array([[mutual_info_score(values[:, k], codes[:, j]) for k in range(values.shape[1])]
                            for j in range(codes.shape[1])])  # (d, K), nats
    entropy = np.array([mutual_info_score(values[:, k], values[:, k]) for k in range(values.shape[1])])
    top = np.sort(information, axis=0)[::-1]
    # a factor that does not vary in the sample (entropy 0) has no gap to normalise: left out of the mean
    gaps = np.where(entropy > 0, (top[0] - (top[1] if len(top) > 1 else 0.0)) / np.where(entropy > 0, entropy, 1.0), np.nan)
    return {"mig": float(np.nanmean(gaps)), "mig_per_factor": [round(float(g), 4) for g in gaps],
            "code_factor_information": [[round(float(v), 4) for v in row] for row in information]}


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    p = p / np.clip(p.sum(1, keepdims=True), 1e-12, None)
    return -(p * np.log(np.clip(p, 1e-12, None))).sum(1) / np.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """Disentanglement and completeness of an importance matrix R (d codes, K factors), Eastwood & Williams' eq. 2-4."""
    total = importance.sum()
    if total <= 0:
        return 0.0, 0.0
    codes, factors = importance.shape
    disentanglement = 1 - _entropy_rows(importance, factors) if factors > 1 else np.ones(codes)
    completeness = 1 - _entropy_rows(importance.T, codes) if codes > 1 else np.ones(factors)
    return (float((importance.sum(1) / total * disentanglement).sum()),
            float((importance.sum(0) / total * completeness).sum()))


def dci_score(data: FactorData, represent: Represent, rng: np.random.Generator, train: int = 10_000, evaluate: int = 5_000,
              trees: int = 50) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    train_values, eval_values = data.sample_factors(train, rng), data.sample_factors(evaluate, rng)
    train_codes, eval_codes = represent(train_values), represent(eval_values)
    importance, accuracy = [], []
    for k in range(train_values.shape[1]):
        forest = RandomForestClassifier(n_estimators=trees, min_samples_leaf=5, max_features=None, random_state=int(rng.integers(2**31)))
        forest.fit(train_codes, train_values[:, k])
        importance.append(forest.feature_importances_)
        accuracy.append(forest.score(eval_codes, eval_values[:, k]))
    disentanglement, completeness = dci_from_importance(np.stack(importance, axis=1))
    return {"dci_disentanglement": disentanglement, "dci_completeness": completeness,
            "dci_informativeness": float(np.mean(accuracy))}


def disentanglement_scores(data: FactorData, represent: Represent, seed: int = 0, **sizes) -> dict:
    """All four metrics, each from its own stream of a generator seeded with `seed`. `sizes` (batch, train, evaluate,
    points) shrink them for tests."""
    take = lambda *names: {name: sizes[name] for name in names if name in sizes}  # noqa: E731
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
    return {**beta_vae_score(data, represent, streams[0], **take("batch", "train", "evaluate")),
            **factor_vae_score(data, represent, streams[1], **take("batch", "train", "evaluate")),
            **mig_score(data, represent, streams[2], **take("points")),
            **dci_score(data, represent, streams[3], **take("train", "evaluate"))}


def model_representation(model, data: FactorData, batch: int = 2000) -> Represent:
    """Factor values -> the model's posterior means (every continuous latent group, concatenated) of the images they make."""
    import torch

    from ..data import model_input
    from .diagnostics import continuous_codes

    device = next(model.parameters()).device

    @torch.inference_mode()
    def represent(values: np.ndarray) -> np.ndarray:
        parts = []
        for start in range(0, len(values), batch):
            x = model_input(data.observations(values[start : start + batch]), model.binary_pixels, 0, device)
            parts.append(torch.cat(list(continuous_codes(model.encode({"x": x})).values()), -1).float().cpu().numpy())
        return np.concatenate(parts)

    return represent


def check_metric_points(points, name: str = "points") -> int:
    """`points` as an int of at least MIN_METRIC_POINTS, else one error naming the argument (or option) and the minimum."""
    if isinstance(points, bool) or not isinstance(points, (int, np.integer)) or points < MIN_METRIC_POINTS:
        raise ArgumentError(f"{name}: each metric needs at least {MIN_METRIC_POINTS} training points, got {points!r}")
    return int(points)


def evaluate_disentanglement(model, data: FactorData, seed: int = 0, points: int = 10_000) -> dict:
    """The four metrics of a trained model on ground-truth data, with disentanglement_lib's sizes at points = 10,000
    (training points; half as many held out; batches of 64)."""
    import time

    points = check_metric_points(points)
    start = time.perf_counter()
    was_training = model.training
    model.eval()
    scores = disentanglement_scores(data, model_representation(model, data), seed, train=points, evaluate=max(points // 2, 1),
                                    points=points)
    model.train(was_training)
    return {"factors": list(getattr(data, "factor_names", [])), "factor_sizes": list(data.factor_sizes), "metric_points": points,
            "seed": seed, **scores, "seconds": round(time.perf_counter() - start, 2)}
