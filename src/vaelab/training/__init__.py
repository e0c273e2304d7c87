"""Training: typed run configuration and presets (config.py), batches drawn by index (batches.py),
the loop with resume and non-finite guards (loop.py), run directories and checkpoints (runs.py),
and data parallelism under torchrun (distributed.py)."""

from .config import DataConfig, ObjectiveConfig, RunConfig, TrainConfig, load_json, load_preset, save_json, set_key, validate
from .loop import gradients_finite, make_optimizer, train, training_loss
from .runs import load_run

__all__ = ["DataConfig", "ObjectiveConfig", "RunConfig", "TrainConfig", "load_json", "load_preset", "save_json", "set_key",
           "validate", "gradients_finite", "make_optimizer", "train", "training_loss", "load_run"]
