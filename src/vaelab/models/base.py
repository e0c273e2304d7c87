"""The model contract: what every generative story gives the rest of vaelab, and what it declares.

A model maps a batch to named per-sample terms; it never computes its own loss. For k draws from its
inference model it returns (`Terms`):
    log_px_z            log p(x | latents), shape (P, B): P points, B inputs;
    latents[name]       one `LatentGroup` per group of latent variables (z; M2's y; later one per
                        layer of a hierarchy): log p and log q at the points, shape (P, B), and the
                        analytic KL (B,) and KL per dimension (B, d) where they exist;
    aux_losses[name]    extra losses that are not part of the bound (M2's labelled cross-entropy,
                        later VQ-VAE's codebook and commitment terms), each with its weight;
    statistics[name]    batch statistics that are neither bound nor loss (a codebook's perplexity), logged;
    log_mass            for discrete latents that are enumerated rather than sampled: the log
                        probability of each point within its draw (P = k * values); None when every
                        point is one draw (P = k).
`vaelab.objectives` turns terms into ELBO, IWAE, beta, free-bits losses and bounds;
`vaelab.evaluation` into the reported numbers; neither knows which model produced them.

What a model needs and supports is data on its class (`ModelSpec`), read by training, evaluation,
figures and the config checks; nothing is discovered with getattr. Its settings are a dataclass
(`Config`, a subclass of ModelConfig), so `--set model.KEY=VALUE` is typed and checked per model.
Adding a model is one file defining a Model subclass plus one entry in models/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Union

import torch
from torch import nn

from ..distributions import BINARY_LIKELIHOODS, EIGHT_BIT_LIKELIHOODS, LIKELIHOODS, outputs_per_pixel
from ..errors import ArgumentError, require_count
from ..nets import NETS

LazyTensor = Union[torch.Tensor, Callable[[], torch.Tensor]]


@dataclass
class ModelConfig:
    """Settings every model has. A model adds its own by subclassing (e.g. VAEConfig)."""

    name: str = "vae"
    """Registry key of the generative story (see vaelab.models.MODELS)."""
    x_dim: int = 784
    """Flattened input size; set from the dataset at training time."""
    image_shape: tuple[int, ...] = (28, 28)
    """Shape of one input, (H, W), (C, H, W), or (D,) for vectors; set from the dataset at training time."""
    z_dim: int = 10
    """Latent dimensionality."""
    net: str = "mlp"
    """Encoder and decoder networks: mlp (fully connected, `hidden`) or conv (stride-2 convolutions, `channels`)."""
    hidden: tuple[int, ...] = (300, 300)
    """Hidden layer widths of the MLPs ("v1": 300, 300); with net = conv, of the fully connected layers
    between the feature maps and the code."""
    channels: tuple[int, ...] = (32, 64)
    """Channels of the stride-2 convolutions when net = conv (encoder order; the decoder mirrors them)."""
    activation: str = "elu"
    """Hidden activation: elu, relu, tanh, or gated: every hidden layer of the networks is then the VampPrior paper's
    gated layer h = (W x + b) * sigmoid(V x + c) (convolutions: to twice the channels, a * sigmoid(b)); output
    layers stay linear."""
    likelihood: str = "bernoulli"
    """p(x|z): bernoulli (binarized data), gaussian (fixed variance), gaussian-learned (learned per-pixel
    variance), pixelcnn (autoregressive, binarized data), dlogistic (discretized logistic mixture) or dgaussian
    (discretized Gaussian) over 8-bit pixels; all but bernoulli and pixelcnn train and evaluate on the pixels / 255,
    not binarized (docs/likelihoods.md)."""
    decoder_variance: float = 0.1
    """Variance of the gaussian likelihood (the reference FSVAE uses 0.1); initial value for gaussian-learned."""
    pixel_layers: int = 3
    """Gated layers of the pixelcnn likelihood (kernel 3: each sees about this many rows above and columns
    to the left; few layers keep the decoder weak, so z carries the global structure)."""
    pixel_channels: int = 32
    """Channels of each pixelcnn layer."""
    mixtures: int = 10
    """Logistic components per pixel of the dlogistic likelihood (10, as PixelCNN++ and NVAE); the decoder gives
    3 x mixtures outputs per pixel."""

    @property
    def binary_pixels(self) -> bool:
        """Whether the likelihood is over binarized pixels (then data are binarized) or continuous ones."""
        return self.likelihood in BINARY_LIKELIHOODS

    @property
    def eight_bit_pixels(self) -> bool:
        """Whether the likelihood is a distribution over the 256 values of a pixel (its bounds also go in bits per dimension)."""
        return self.likelihood in EIGHT_BIT_LIKELIHOODS

    @property
    def decoder_shape(self) -> tuple[int, ...]:
        """The decoder's output shape: the image's, with one channel per likelihood parameter of each pixel channel
        (a likelihood with P parameters per pixel reads the flat output as P blocks of x_dim)."""
        p = outputs_per_pixel(self.likelihood, self.mixtures)
        shape = tuple(self.image_shape)
        if p == 1:
            return shape
        return (p * shape[0], *shape[1:]) if len(shape) != 2 else (p, *shape)

    def likelihood_options(self) -> dict:
        """The keyword arguments of distributions.build_likelihood besides its name and x_dim."""
        return {"variance": self.decoder_variance, "image_shape": tuple(self.image_shape), "pixel_layers": self.pixel_layers,
                "pixel_channels": self.pixel_channels, "mixtures": self.mixtures}

    def net_options(self) -> dict:
        """The keyword arguments of nets.build_encoder / build_decoder besides the net kind."""
        return {"hidden": tuple(self.hidden), "channels": tuple(self.channels), "activation": self.activation}


@dataclass(frozen=True)
class ModelSpec:
    """What a model needs from the data and what it supports, declared on its class."""

    labels: str = "none"
    """What it needs from data: none; all (a label for every image: it models p(x | y), and its bounds
    are on log p(x | y)); subset (a labelled subset beside unlabelled images: semi-supervised)."""
    objectives: tuple[str, ...] = ("elbo", "iwae")
    """Training objectives (objective.kind) it supports."""
    objective_settings: tuple[str, ...] = ("k", "beta", "kl_warmup_steps", "free_bits", "free_bits_group")
    """objective.* settings it supports; the others must keep their defaults."""
    likelihoods: tuple[str, ...] = LIKELIHOODS
    """model.likelihood values it supports."""
    nets: tuple[str, ...] = NETS
    """model.net values it supports."""
    label_code: str | None = None
    """The code (in encode / decode / sample_codes) holding a class label that the decoder takes, for
    models that generate given a label; figures then draw one column per label."""
    classifier: bool = False
    """Whether it has classify(batch) -> logits of q(y | x); evaluation then reports test accuracy."""
    aggregate_posterior: bool = False
    """Whether it has posteriors(batch) and priors(), the distributions q(z | x) and p(z) of its latent
    groups; evaluation then reports ELBO surgery (mutual information, marginal KL) for each group."""
    deterministic_posterior: bool = False
    """Whether q puts all its mass on one point per input (VQ-VAE): then every draw is the same, IWAE-m equals the
    ELBO for every m, and evaluation computes the bound once."""
    codebook: bool = False
    """Whether it has code_counts(batch), how often each of its discrete codes is used; evaluation then reports
    the codebook's perplexity and the share of codes in use."""
    starts_from: str | None = None
    """The model whose finished run it starts from (`vaelab train MODEL --from RUN`, config.source_run); training
    a new run loads that run and hands its model to start_from(), which takes what it needs (frozen)."""


def _resolve(value: LazyTensor) -> torch.Tensor:
    return value() if callable(value) else value


class LatentGroup:
    """One group of latent variables in a model's terms.

    log_p, log_q: log p and log q of the group at each point, (P, B). Either may be given as a
    zero-argument function, computed when first read (and kept): a loss that needs only log p(x|z)
    and the analytic KL, the ELBO, then never pays for them.
    kl: analytic KL(q || p) per input, (B,), or None where only Monte Carlo exists. For a group whose
    posterior depends on another group's value (q(z | x, y) in M2), it is the expectation over that
    value under the model's inference.
    kl_dims: the analytic KL per dimension, (B, d), where q and p both factorise; else None."""

    def __init__(self, log_p: LazyTensor, log_q: LazyTensor, kl: torch.Tensor | None = None,
                 kl_dims: torch.Tensor | None = None):
        self._log_p, self._log_q, self.kl, self.kl_dims = log_p, log_q, kl, kl_dims

    @property
    def log_p(self) -> torch.Tensor:
        self._log_p = _resolve(self._log_p)
        return self._log_p

    @property
    def log_q(self) -> torch.Tensor:
        self._log_q = _resolve(self._log_q)
        return self._log_q


@dataclass
class Auxiliary:
    """A loss beside the bound: `weight * value` is added to the training loss; `value` is logged."""

    value: torch.Tensor
    weight: float = 1.0


class Terms:
    """Per-sample terms of one batch (see the module docstring).

    draws: k, the number of draws from the inference model per input. Without enumeration each draw is
    one point (P = k); with it, `log_mass` (P, B) gives each point's probability within its draw (the
    masses of a draw's points sum to 1), and expectations over q weigh points by mass / k.
    bound_weight: the weight of the bound in the training loss (M2's gen_weight; 0 trains the
    auxiliary losses alone)."""

    def __init__(self, log_px_z: torch.Tensor, latents: dict[str, LatentGroup], draws: int | None = None,
                 aux_losses: dict[str, Auxiliary] | None = None, log_mass: torch.Tensor | None = None,
                 bound_weight: float = 1.0, statistics: dict[str, torch.Tensor] | None = None):
        self.log_px_z, self.latents, self.log_mass = log_px_z, latents, log_mass
        self.draws = log_px_z.shape[0] if draws is None else draws
        self.aux_losses = aux_losses or {}
        self.bound_weight = bound_weight
        self.statistics = statistics or {}

    @classmethod
    def one_group(cls, log_px_z: torch.Tensor, log_p: LazyTensor, log_q: LazyTensor, kl: torch.Tensor | None = None,
                  kl_dims: torch.Tensor | None = None, name: str = "z") -> "Terms":
        """Terms of a model with one latent group and one point per draw (the VAE's shape)."""
        return cls(log_px_z, {name: LatentGroup(log_p, log_q, kl, kl_dims)})

    @property
    def k(self) -> int:
        return self.draws

    @property
    def log_pz(self) -> torch.Tensor:
        """log p of all latent groups at each point, (P, B)."""
        return total(group.log_p for group in self.latents.values())

    @property
    def log_qz(self) -> torch.Tensor:
        """log q of all latent groups at each point, (P, B)."""
        return total(group.log_q for group in self.latents.values())


def total(tensors) -> torch.Tensor:
    """The sum of one or more tensors, without the extra pass `sum()` makes by starting from 0."""
    tensors = iter(tensors)
    result = next(tensors)
    for t in tensors:
        result = result + t
    return result


class Model(nn.Module):
    """Base class of every model. Subclasses set `Config` and `spec`, build themselves from a config
    in __init__, and implement terms, encode, decode and sample_codes; the class docstring states
    the generative and inference story in a line or two of maths."""

    Config: ClassVar[type[ModelConfig]] = ModelConfig
    spec: ClassVar[ModelSpec] = ModelSpec()

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg

    @classmethod
    def settings_checks(cls, cfg: ModelConfig, objective) -> list[tuple[bool, str, str]]:
        """Model-specific checks of a run's settings as (ok, key, why); the generic ones (spec) are made
        by the config layer. `objective` is the run's ObjectiveConfig."""
        return []

    # --- what training, evaluation and figures call ---

    def forward(self, batch: dict, k: int = 1) -> Terms:
        """The terms (see `terms`): forward, so DistributedDataParallel and torch.compile see them."""
        require_count(k, "k (draws per input)")
        if self.spec.labels == "all" and "y" not in batch:
            raise ValueError(f"model {self.config.name!r} needs labels: batch['y'] with a label for every image")
        return self.terms(batch, k)

    def terms(self, batch: dict, k: int = 1) -> Terms:
        """Per-sample terms for k draws per input. batch["x"]: (B, D) flat inputs; batch["y"]: (B,)
        labels when spec.labels == "all"; batch["x_labelled"], batch["y_labelled"] when "subset"."""
        raise NotImplementedError

    def encode(self, batch: dict) -> dict[str, torch.Tensor]:
        """The posterior mean (or code) of each latent group, (B, d) floats, plus any integer label code
        the decoder takes (B,). Active units, latent plots and interpolations use it."""
        raise NotImplementedError

    def decode(self, codes: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean images E[x | codes], (n, D), for codes as encode or sample_codes return them."""
        raise NotImplementedError

    def sample_codes(self, n: int) -> dict[str, torch.Tensor]:
        """n draws of the codes from the prior (the label code, if any, cycles 0, 1, ..., C-1, 0, ...)."""
        raise NotImplementedError

    def code_counts(self, batch: dict) -> torch.Tensor:
        """How many times each discrete code is chosen for the batch, (K,) (models with spec.codebook)."""
        raise NotImplementedError

    def start_from(self, source: "Model") -> None:
        """Take the weights this model starts from out of the source run's model (models with spec.starts_from)."""
        raise NotImplementedError

    def posteriors(self, batch: dict) -> dict[str, "torch.distributions.Distribution"]:
        """q of each latent group given the batch, batch shape (B,) (models with spec.aggregate_posterior)."""
        raise NotImplementedError

    def priors(self) -> dict[str, "torch.distributions.Distribution"]:
        """p of each latent group, unconditional (models with spec.aggregate_posterior)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Mean images for n draws from the prior, (n, D) (n = 0 gives an empty (0, D)); `labels` (n,) fixes the
        label code."""
        n, labels = self.checked_sample_request(n, labels)
        if n == 0:  # not every decoder takes an empty batch (a codebook's grid cannot infer its side)
            return torch.empty(0, self.config.x_dim, device=next(self.parameters()).device)
        codes = self.sample_codes(n)
        if labels is not None:
            codes[self.spec.label_code] = labels
        return self.decode(codes)

    def checked_sample_request(self, n: int, labels: torch.Tensor | None) -> tuple[int, torch.Tensor | None]:
        """sample's arguments, checked: n a count >= 0, labels (if any) n integers in 0..C-1 on the model's device."""
        n = require_count(n, "n (images to sample)", minimum=0)
        if labels is not None and self.spec.label_code is None:
            raise ValueError(f"model {self.config.name!r} does not generate given a label")
        if labels is not None:
            labels = torch.as_tensor(labels, device=next(self.parameters()).device).long()
            if labels.shape != (n,):
                raise ArgumentError(f"labels: expected one label for each of n = {n} images, got shape {tuple(labels.shape)}")
            if n and not (0 <= int(labels.min()) and int(labels.max()) < self.classes):
                raise ArgumentError(f"labels: expected values in 0..{self.classes - 1}")
        return n, labels

    @torch.no_grad()
    def reconstruct(self, batch: dict) -> torch.Tensor:
        """Decoder means at the posterior means, E[x | codes = encode(batch)], (B, D)."""
        return self.decode(self.encode(batch))

    @torch.no_grad()
    def label_grid(self, rows: int) -> torch.Tensor:
        """For a model that generates given a label: rows draws of the other codes, each decoded under
        every label: (rows, C, D), so z carries style along a row and the label content down a column."""
        if self.spec.label_code is None:
            raise ValueError(f"model {self.config.name!r} does not generate given a label")
        rows = require_count(rows, "rows", minimum=0)
        classes = self.classes
        codes = {name: value.repeat_interleave(classes, 0) for name, value in self.sample_codes(rows).items()}
        codes[self.spec.label_code] = torch.arange(classes, device=codes[self.spec.label_code].device).repeat(rows)
        return self.decode(codes).view(rows, classes, -1)

    @property
    def classes(self) -> int:
        """Number of labels, for models with a label code (their config has `classes`)."""
        return self.config.classes

    @property
    def binary_pixels(self) -> bool:
        """Whether the likelihood is over binarized pixels (then data are binarized) or continuous ones."""
        return self.config.binary_pixels

    @property
    def elements_per_sample(self) -> int:
        """Largest per-draw intermediate in elements; evaluation sizes its chunks by it."""
        return self.config.x_dim

    @property
    def trains_every_parameter(self) -> bool:
        """False when some parameters get no gradient under the current settings (DDP must then look for them)."""
        return True

