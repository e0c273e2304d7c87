"""Hierarchical VAE with L stochastic layers, bottom-up (VampPrior paper's HVAE), top-down (Ladder VAE) or chain
(IWAE paper's) inference, as one model whose inference is a setting.

Generative story: z_L ~ p(z_L) (N(0, I) or the VampPrior), z_l | z_{l+1} ~ N(mu_l(z_{l+1}), diag sigma_l^2(z_{l+1})),
                  x | z_1 ~ p(x | f_theta(z_1))  (Bernoulli or Gaussian).
Inference, bottom-up: q(z_L | x) q(z_{L-1} | z_L, x) ... q(z_1 | z_2, x): each layer's Gaussian from an encoder of
                  x with the layer above as context (Tomczak & Welling 2018, section 3: q(z_2 | x) q(z_1 | z_2, x)).
Inference, ladder: a deterministic pass d_1 = enc(x), d_l = g_l(d_{l-1}) gives each layer a Gaussian
                  N(mu_hat_l, sigma_hat_l^2); sampling goes top-down, q(z_L | x) = N(mu_hat_L, sigma_hat_L^2) and,
                  below, the precision-weighted merge of N(mu_hat_l, sigma_hat_l^2) with p(z_l | z_{l+1}):
                  sigma_q^-2 = sigma_hat^-2 + sigma_p^-2, mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2
                  (Sonderby et al. 2016).
Inference, chain: q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}): each layer's Gaussian from the layer below alone,
                  sampled upwards (the recognition network of Burda et al. 2016).
One latent group per layer ("z1" at the bottom ... "zL" at the top): log p, log q, and the analytic KL of each
layer's Gaussians given the sampled layer above (the chain rule: the expected conditional KLs sum to the KL). Under
chain inference p(z_l | z_{l+1}) depends on a layer drawn after z_l, so below the top layer there is no such KL and
each layer's KL is the Monte Carlo estimate E_q[log q - log p].

Networks: model.hidden sizes those between x and z_1 (the decoder, and every encoder reading x); model.upper_hidden,
those between consecutive stochastic layers (the IWAE paper's two-layer model: 200, 200 and 100, 100).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from ..distributions import VARIANCE_FLOOR, build_likelihood, diagonal_gaussian, full_precision, kl_terms
from ..distributions.priors import StandardNormalPrior, VampPrior
from ..nets import build_decoder, build_encoder, mlp
from ..nets.mlp import gate_factor
from .base import LatentGroup, Model, ModelConfig, ModelSpec, Terms

INFERENCES = ("bottom-up", "ladder", "chain")


@dataclass
class HVAEConfig(ModelConfig):
    z_dims: tuple[int, ...] = (40, 40)
    """Latent sizes from the bottom layer z_1 (next to x) to the top z_L; their number is L (the VampPrior
    paper's HVAE: 40, 40). model.z_dim is ignored in favour of this."""
    inference: str = "bottom-up"
    """bottom-up (q(z_L | x) ... q(z_1 | z_2, x)), ladder (top-down with precision-weighted merging) or chain
    (q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}), the IWAE paper's)."""
    upper_hidden: typing.Optional[tuple[int, ...]] = None
    """Hidden widths of the networks between consecutive stochastic layers z_l and z_{l+1}: the conditional priors
    p(z_l | z_{l+1}), chain inference's q(z_{l+1} | z_l) and the ladder's deterministic steps g_l; None: model.hidden.
    model.hidden sizes the networks between x and z_1 (and bottom-up inference's encoders, which all read x). The
    IWAE paper's two-layer model: hidden = 200, 200 and upper_hidden = 100, 100."""
    prior: str = "normal"
    """p(z_L): normal (N(0, I)) or vamp (VampPrior over the top layer's posterior; bottom-up inference)."""
    prior_components: int = 500
    """Pseudo-inputs when prior = vamp."""
    prior_variance_floor: float = 0.0025
    """Smallest variance of the learned conditional priors p(z_l | z_{l+1}) (the VampPrior authors' code clamps their
    log-variance at -6: e^-6 = 0.0025). Without a floor a conditional prior can narrow until one batch's
    KL(q || p) ~ (mu_q - mu_p)^2 / var_p overflows (seen at step 3,500 of a two-layer MNIST run with 1e-8)."""


def gaussian_from(h: torch.Tensor, floor: float = VARIANCE_FLOOR) -> Independent:
    """N(mean, diag var) from a network output [mean, pre-variance] (distributions.diagonal_gaussian)."""
    return diagonal_gaussian(*full_precision(h).chunk(2, dim=-1), floor=floor)


def precision_weighted(up: Independent, down: Independent) -> Independent:
    """The Ladder VAE's merge of the bottom-up and top-down Gaussians, dimension by dimension."""
    up_precision, down_precision = up.base_dist.scale.pow(-2), down.base_dist.scale.pow(-2)
    variance = (up_precision + down_precision).reciprocal()
    mean = (up.base_dist.loc * up_precision + down.base_dist.loc * down_precision) * variance
    return Independent(Normal(mean, variance.sqrt(), validate_args=False), 1, validate_args=False)


class HierarchicalVAE(Model):
    """p(z_L) prod_l p(z_l | z_{l+1}) p(x | z_1); q bottom-up q(z_L|x) prod q(z_l | z_{l+1}, x), ladder
    (top-down, precision-weighted merge of bottom-up and top-down Gaussians), or chain q(z_1|x) prod q(z_{l+1} | z_l)."""

    Config = HVAEConfig
    spec = ModelSpec()

    def __init__(self, cfg: HVAEConfig):
        super().__init__(cfg)
        dims, options = tuple(cfg.z_dims), cfg.net_options()
        self.dims = dims
        self.upper_hidden = upper = tuple(cfg.hidden if cfg.upper_hidden is None else cfg.upper_hidden)
        self.decoder = build_decoder(cfg.net, dims[0], cfg.decoder_shape, **options)
        self.observation = build_likelihood(cfg.likelihood, cfg.x_dim, **cfg.likelihood_options())
        # p(z_l | z_{l+1}) for l = 1 .. L-1, index l - 1.
        self.conditional_priors = nn.ModuleList(mlp(dims[l + 1], upper, 2 * dims[l], cfg.activation) for l in range(len(dims) - 1))
        if cfg.inference == "bottom-up":
            # encoders[l]: q(z_{l+1} | x, z_{l+2}) (index l for layer l + 1); the top layer's sees x alone.
            self.encoders = nn.ModuleList(
                build_encoder(cfg.net, cfg.image_shape, 2 * dims[l], context_features=dims[l + 1] if l + 1 < len(dims) else 0, **options)
                for l in range(len(dims)))
        elif cfg.inference == "chain":
            # encoders[0]: q(z_1 | x); encoders[l]: q(z_{l+1} | z_l).
            self.encoders = nn.ModuleList([build_encoder(cfg.net, cfg.image_shape, 2 * dims[0], **options),
                                           *(mlp(dims[l - 1], upper, 2 * dims[l], cfg.activation) for l in range(1, len(dims)))])
        else:
            # d_1 has the width of x's last hidden layer, d_2 .. d_L that of upper_hidden's (300 where there is none).
            widths = [cfg.hidden[-1] if cfg.hidden else 300, *((upper[-1] if upper else 300) for _ in dims[1:])]
            self.up_first = build_encoder(cfg.net, cfg.image_shape, widths[0], **options)
            self.up = nn.ModuleList(mlp(widths[l], upper, widths[l + 1], cfg.activation) for l in range(len(dims) - 1))
            self.up_heads = nn.ModuleList(nn.Linear(width, 2 * d) for width, d in zip(widths, dims))
            # ELU whatever model.activation (trained ladder runs compute d_1 so), so every activation, gated too, applies
            # here as to any encoder: to up_first's hidden layers.
            self.up_activation = nn.ELU()
        self.prior = VampPrior(cfg.x_dim, cfg.prior_components) if cfg.prior == "vamp" else StandardNormalPrior(dims[-1])

    @classmethod
    def settings_checks(cls, cfg: HVAEConfig, objective) -> list[tuple[bool, str, str]]:
        return [
            (len(cfg.z_dims) >= 1 and all(d >= 1 for d in cfg.z_dims), "model.z_dims", "must be one or more sizes >= 1"),
            (cfg.inference in INFERENCES, "model.inference", f"must be one of {', '.join(INFERENCES)}"),
            (cfg.prior in ("normal", "vamp"), "model.prior", "must be normal or vamp"),
            (cfg.prior != "vamp" or cfg.inference == "bottom-up", "model.prior",
             "vamp needs the top layer's q(z_L | x) of the image alone: use model.inference = bottom-up"),
            (cfg.prior_components >= 1, "model.prior_components", "must be >= 1"),
            (cfg.prior_variance_floor > 0, "model.prior_variance_floor", "must be > 0"),
            (cfg.upper_hidden is None or all(h >= 1 for h in cfg.upper_hidden), "model.upper_hidden", "widths must be >= 1"),
            (cfg.upper_hidden is None or len(cfg.z_dims) >= 2, "model.upper_hidden",
             "sizes the networks between stochastic layers: needs two or more model.z_dims"),
            (objective.free_bits == 0 or objective.free_bits_group == 0 or cfg.inference != "chain" or len(cfg.z_dims) == 1,
             "objective.free_bits_group", "chain inference has no per-dimension KL below the top layer: use 0 (one block per layer)"),
        ]

    @property
    def layers(self) -> int:
        return len(self.dims)

    @property
    def elements_per_sample(self) -> int:
        prior = self.prior.elements_per_sample()
        upper = (gate_factor(self.config.activation) * width for width in self.upper_hidden)
        return max(self.decoder.activation_elements, prior, self.observation.elements_per_sample(), *(2 * d for d in self.dims),
                   *upper)

    def top_posterior(self, x: torch.Tensor) -> Distribution:
        """q(z_L | x) of bottom-up inference (what the VampPrior mixes over its pseudo-inputs; the VampPrior is refused
        under the other inferences, whose top layer does not read x alone)."""
        return gaussian_from(self.encoders[-1](x))

    def top_prior(self) -> Distribution:
        return self.prior(self.top_posterior)

    def conditional_prior(self, layer: int, above: torch.Tensor) -> Independent:
        """p(z_layer | z_{layer+1}), layer counted from 1."""
        return gaussian_from(self.conditional_priors[layer - 1](above), self.config.prior_variance_floor)

    def likelihood(self, z1: torch.Tensor) -> Distribution:
        return self.observation(self.decoder(z1))

    @staticmethod
    def _draw(q: Independent, k: int, first: bool, mean: bool) -> torch.Tensor:
        """z from q: k draws (or the mean k times) for the first layer drawn; for the others one per draw of the layer
        drawn before, which q already carries."""
        if first:
            return q.mean.expand(k, *q.mean.shape) if mean else q.rsample((k,))
        return q.mean if mean else q.rsample()

    def _posterior_draws(self, x: torch.Tensor, k: int, mean: bool = False):
        """(name, z, q, p) per layer, z1 first, drawn top-down (chain inference: upwards); z of shape (k, B, d) (or the
        means, k = 1)."""
        if self.config.inference == "chain":
            return self._chain_draws(x, k, mean)
        draws, above = [], None
        if self.config.inference == "ladder":
            d = self.up_activation(self.up_first(x))
            ups = [d]
            for g in self.up:
                d = g(d)
                ups.append(d)
            ups = [gaussian_from(head(u)) for head, u in zip(self.up_heads, ups)]
        for layer in range(self.layers, 0, -1):
            p = self.top_prior() if layer == self.layers else self.conditional_prior(layer, above)
            if self.config.inference == "ladder":
                up = ups[layer - 1]
                q = up if layer == self.layers else precision_weighted(up, p)
            else:
                q = gaussian_from(self.encoders[layer - 1](x, above) if layer < self.layers else self.encoders[layer - 1](x))
            z = self._draw(q, k, above is None, mean)
            draws.append((f"z{layer}", z, q, p))
            above = z
        return draws[::-1]

    def _chain_draws(self, x: torch.Tensor, k: int, mean: bool):
        """Chain inference's (name, z, q, p) per layer: z_1 ~ q(z_1 | x), then z_{l+1} ~ q(z_{l+1} | z_l) upwards; each
        p(z_l | z_{l+1}) at the drawn layer above, p(z_L) on top."""
        zs, qs, below = [], [], x
        for layer in range(1, self.layers + 1):
            q = gaussian_from(self.encoders[layer - 1](below))
            below = self._draw(q, k, layer == 1, mean)
            zs.append(below)
            qs.append(q)
        ps = [*(self.conditional_prior(layer, zs[layer]) for layer in range(1, self.layers)), self.top_prior()]
        return [(f"z{layer}", z, q, p) for layer, z, q, p in zip(range(1, self.layers + 1), zs, qs, ps)]

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """k draws top-down; one latent group per layer with the analytic KL given the layer above."""
        x = batch["x"]
        draws = self._posterior_draws(x, k)
        groups = {}
        for name, z, q, p in draws:
            # Chain inference below the top: p(z_l | z_{l+1}) depends on a layer drawn after z_l, so no analytic KL.
            below_top_of_chain = self.config.inference == "chain" and name != f"z{self.layers}"
            kl, kl_dims = (None, None) if below_top_of_chain else kl_terms(q, p)
            if kl is not None and kl.dim() == 2:  # given a sampled layer above: average over its k draws
                kl, kl_dims = kl.mean(0), kl_dims.mean(0) if kl_dims is not None else None
            groups[name] = LatentGroup(lambda p=p, z=z: p.log_prob(z), lambda q=q, z=z: q.log_prob(z), kl, kl_dims)
        return Terms(self.likelihood(draws[0][1]).log_prob(x), groups)

    @torch.no_grad()
    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """Each layer's posterior mean, the layers drawn before it (above; chain inference: below) fixed at their means."""
        return {name: z[0] for name, z, _, _ in self._posterior_draws(batch["x"], 1, mean=True)}

    @torch.no_grad()
    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.likelihood(codes["z1"]).mean

    @torch.no_grad()
    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        z = self.top_prior().sample((n,))
        codes = {f"z{self.layers}": z}
        for layer in range(self.layers - 1, 0, -1):
            z = self.conditional_prior(layer, z).sample()
            codes[f"z{layer}"] = z
        return dict(reversed(codes.items()))  # z1 .. zL
