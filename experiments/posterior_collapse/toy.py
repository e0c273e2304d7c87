"""Seed 003's posterior-collapse toy example, measured.

Data x ~ N(mu, Sigma) in 2 dimensions; the model is vaelab's VAE with p(z) = N(0, I) (z in 2 dimensions),
a Gaussian decoder p(x | z) = N(mu_theta(z), diag v) (learned per-coordinate variance: the likelihood
`gaussian-learned`) and a diagonal Gaussian posterior. Two cases:
  diagonal      Sigma = diag(1.0, 0.3): the decoder can model the data without z (mu_theta = mu, v = diag Sigma),
                so the optimum sets q(z | x) = p(z): the latents should go unused;
  non-diagonal  Sigma = [[1.0, 0.8], [0.8, 1.0]]: a diagonal decoder cannot produce the correlation alone, so
                the model must put it in z (probabilistic PCA: one latent direction).
Each case trains --seeds times (Adam 1e-3, batch 256, --steps steps on 20,000 draws) and is measured on 5,000
fresh draws with vaelab.evaluation: KL, ELBO surgery's mutual information I(x; z) and marginal KL (first 1,000
draws), active units, KL per latent dimension, NELBO and -IWAE-1000 against the data's true entropy.

  python experiments/posterior_collapse/toy.py [--steps 4000] [--seeds 3] [--out experiments/posterior_collapse]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from vaelab import objectives  # noqa: E402
from vaelab.evaluation import active_units, elbo_terms, iwae_per_image  # noqa: E402
from vaelab.evaluation.diagnostics import elbo_surgery, kl_per_dimension  # noqa: E402
from vaelab.models import build_model, model_config  # noqa: E402
from vaelab.training.runs import provenance  # noqa: E402

CASES = {
    "diagonal": torch.tensor([[1.0, 0.0], [0.0, 0.3]]),
    "non-diagonal": torch.tensor([[1.0, 0.8], [0.8, 1.0]]),
}
MEAN = torch.tensor([0.5, -0.5])


def draws(sigma: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=generator) @ torch.linalg.cholesky(sigma).T


def train(sigma: torch.Tensor, seed: int, steps: int):
    torch.manual_seed(seed)
    data = draws(sigma, 20000, torch.Generator().manual_seed(1000 + seed))
    model = build_model(model_config(x_dim=2, z_dim=2, hidden=(64, 64), likelihood="gaussian-learned", decoder_variance=1.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(steps):
        batch = data[torch.randint(0, len(data), (256,))]
        loss = objectives.loss(model({"x": batch})).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def measure(model, sigma: torch.Tensor, seed: int) -> dict:
    x = draws(sigma, 5000, torch.Generator().manual_seed(2000 + seed))
    torch.manual_seed(0)
    terms = elbo_terms(model, x, repeats=10)
    surgery = elbo_surgery(model, x[:1000])["z"]
    variances = active_units(model, x)["z"]
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * sigma).item()  # the best possible NLL, nats
    return {"nelbo": terms["nelbo"], "kl": terms["kl"], "rec": terms["rec"],
            "niwae_1000": float(-iwae_per_image(model, x, 1000).mean()), "true_entropy": entropy,
            "mutual_information": surgery["mutual_information"], "marginal_kl": surgery["marginal_kl"],
            "active_units": int((variances > 0.01).sum()), "posterior_mean_variance": [round(float(v), 4) for v in variances],
            "kl_per_dimension": [round(float(v), 4) for v in kl_per_dimension(model, x)["z"]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    results, models = {}, {}
    for case, sigma in CASES.items():
        results[case] = []
        for seed in range(args.seeds):
            model = train(sigma, seed, args.steps)
            results[case].append(measure(model, sigma, seed))
            print(case, seed, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in results[case][-1].items()}, flush=True)
            models.setdefault(case, model)
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": f"python experiments/posterior_collapse/toy.py --steps {args.steps} --seeds {args.seeds}",
              "mean": MEAN.tolist(), "covariances": {k: v.tolist() for k, v in CASES.items()}, "results": results,
              "provenance": provenance()}
    (args.out / "toy.json").write_text(json.dumps(report, indent=2) + "\n")

    fig, axes = plt.subplots(2, 3, figsize=(13, 8), constrained_layout=True)
    for row, (case, sigma) in enumerate(CASES.items()):
        model, first = models[case], results[case][0]
        x = draws(sigma, 1500, torch.Generator().manual_seed(7))
        with torch.no_grad():
            samples = model.likelihood(model.prior().sample((1500,))).sample()
            codes = model.encode({"x": x})["z"]
        ax = axes[row, 0]
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.4, label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.4, label="model samples")
        ax.set(title=f"{case} covariance: data and model", xlabel="x1", ylabel="x2")
        ax.legend(markerscale=4)
        ax = axes[row, 1]
        ax.scatter(codes[:, 0], codes[:, 1], s=3, alpha=0.4, c=x[:, 0] + x[:, 1], cmap="viridis")
        ax.set(title="posterior means E[z | x] (colour: x1 + x2)", xlabel="z1", ylabel="z2", xlim=(-3, 3), ylim=(-3, 3))
        ax = axes[row, 2]
        ax.bar(["z1", "z2"], first["kl_per_dimension"])
        ax.set(title=f"KL per latent dimension (nats)\nI(x; z) {first['mutual_information']:.2f}, active units {first['active_units']}",
               ylabel="KL(q(z_j | x) || p(z_j)), nats")
    fig.suptitle("Posterior collapse toy (seed 003): seed 0 of each case")
    fig.savefig(args.out / "toy.png", dpi=110)
    print(f"wrote {args.out / 'toy.json'} and {args.out / 'toy.png'}")


if __name__ == "__main__":
    main()
