"""TensorBoard event files beside metrics.jsonl: the logged scalars, the validation bounds, sample grids."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from .. import data as data_mod
from ..errors import RunDirError
from .config import RunConfig


def _quiet_tensorboard_thread(args) -> None:
    # TensorBoard writes from a thread of its own; a failed write (a full disk) would print that thread's
    # traceback. The writer raises the same error in the main thread at its next call, where
    # TensorBoard._guard turns it into one line, so the thread's copy is dropped.
    if type(args.thread).__name__ != "_AsyncWriterThread":
        _default_thread_hook(args)


_default_thread_hook = threading.excepthook


class TensorBoard:
    """TensorBoard event files beside metrics.jsonl: the logged scalars, and a grid of samples from
    the model at every checkpoint (one column per label for models that generate given a label)."""

    def __init__(self, folder: Path, model: torch.nn.Module, cfg: RunConfig, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        threading.excepthook = _quiet_tensorboard_thread
        self.folder = folder
        # purge_step drops events a killed run logged after its last checkpoint.
        self.writer = self._guard(lambda: SummaryWriter(str(folder), purge_step=purge_step))
        self.model, self.cfg = model, cfg

    def _guard(self, write):
        try:
            return write()
        except OSError as exc:
            raise RunDirError(f"cannot write {self.folder}: {exc.strerror or exc}") from None

    def scalars(self, step: int, record: dict, group: str = "train") -> None:
        for key, value in record.items():
            if key not in ("step", "seconds"):
                self._guard(lambda: self.writer.add_scalar(f"{group}/{key}", value, step))

    @torch.no_grad()
    def samples(self, step: int) -> None:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        # Forked RNG: drawing these samples must not change the training run's random stream.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)  # the same z at every checkpoint, so the grids show training progress
            images = self.model.label_grid(6) if self.model.spec.label_code else self.model.sample(60).view(6, 10, -1)
        self.model.train(was_training)
        ncol = images.shape[1]
        grid = data_mod.image_grid(images.clamp(0, 1), ncol, tuple(self.cfg.model.image_shape), pad_value=0.5)
        self._guard(lambda: self.writer.add_image("samples", grid, step, dataformats="HWC" if grid.ndim == 3 else "HW"))
        self._guard(self.writer.flush)

    def close(self) -> None:
        self._guard(self.writer.close)
