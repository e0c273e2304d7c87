"""Evaluation: bounds on log-likelihood (bounds.py), the cs236 and full protocols (protocols.py) and
latent-space diagnostics (diagnostics.py), for any model, through the model contract."""

from .bounds import DEFAULT_BUDGET, elbo_terms, iwae_per_image, model_batch, plan_chunks
from .diagnostics import accuracy, active_units, continuous_codes, elbo_surgery, kl_per_dimension, posterior_means
from .protocols import DEFAULT_IW, NELBO_REPEATS, PROTOCOLS, SURGERY_IMAGES, evaluate, evaluate_images, evaluation_set, latent_diagnostics

__all__ = ["DEFAULT_BUDGET", "elbo_terms", "iwae_per_image", "model_batch", "plan_chunks", "accuracy", "active_units",
           "continuous_codes", "elbo_surgery", "kl_per_dimension", "posterior_means", "DEFAULT_IW", "NELBO_REPEATS", "PROTOCOLS", "SURGERY_IMAGES", "latent_diagnostics", "evaluate",
           "evaluate_images", "evaluation_set"]
