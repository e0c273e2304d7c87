"""vaelab: variational autoencoders with trustworthy log-likelihood numbers."""

__version__ = "0.1.0"
