"""Densities, the bottom layer: priors p(z), posterior families q(z|x), likelihoods p(x|z) and the
KL between them. Each is an nn.Module that returns a torch.distributions object; a model picks them
by name (its settings), so variants that share a generative story are settings, not classes."""

from .common import VARIANCE_FLOOR, diagonal_gaussian, full_precision
from .kl import factorised_normal, kl_terms
from .likelihoods import BINARY_LIKELIHOODS, EIGHT_BIT_LIKELIHOODS, LIKELIHOODS, build_likelihood, outputs_per_pixel
from .posteriors import POSTERIORS, build_posterior
from .priors import PRIORS, build_prior

__all__ = ["VARIANCE_FLOOR", "diagonal_gaussian", "full_precision", "factorised_normal", "kl_terms", "BINARY_LIKELIHOODS", "EIGHT_BIT_LIKELIHOODS", "LIKELIHOODS",
           "build_likelihood", "outputs_per_pixel",
           "POSTERIORS", "build_posterior", "PRIORS", "build_prior"]
