"""TensorBoard event files beside metrics.jsonl: the logged scalars, the validation bounds, sample grids."""

from __future__ import annotations

import threading
from contextlib import nullcontext
from pathlib import Path

import torch

from .. import data as data_mod
from ..errors import RunDirError
from .config import RunConfig
from .stopping import Signalled, StopRequest, phase

GRID_ROWS, GRID_COLUMNS = 6, 10  # a grid of 60 samples (rows x labels for models that generate given a label)


def sampling_passes(model: torch.nn.Module) -> int:
    """Network passes one after another that drawing from `model` takes: 1, or the positions of an autoregressive
    part, which such a module declares as `sampling_passes` (a PixelCNN likelihood: one pass per pixel; a code
    prior: one per code). A measure of the cost, read from the modules, never from the model's name."""
    return max((getattr(module, "sampling_passes", 1) for module in model.modules()), default=1)


def _quiet_tensorboard_thread(args) -> None:
    # TensorBoard writes from a thread of its own; a failed write (a full disk) would print that thread's
    # traceback. The writer raises the same error in the main thread at its next call, where
    # TensorBoard._guard turns it into one line, so the thread's copy is dropped.
    if type(args.thread).__name__ != "_AsyncWriterThread":
        _default_thread_hook(args)


_default_thread_hook = threading.excepthook


class TensorBoard:
    """TensorBoard event files beside metrics.jsonl: the logged scalars, and a grid of samples from
    the model at every checkpoint and at the end (one column per label for models that generate given a label),
    as train.sample_grids says: auto leaves the grids out for a model whose sampling is autoregressive."""

    def __init__(self, folder: Path, model: torch.nn.Module, cfg: RunConfig, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        threading.excepthook = _quiet_tensorboard_thread
        self.folder = folder
        # purge_step drops events a killed run logged after its last checkpoint.
        self.writer = self._guard(lambda: SummaryWriter(str(folder), purge_step=purge_step))
        self.model, self.cfg = model, cfg
        self.passes = sampling_passes(model)
        self.draws_samples = cfg.train.sample_grids == "always" or (cfg.train.sample_grids == "auto" and self.passes == 1)

    def _guard(self, write):
        try:
            return write()
        except OSError as exc:
            raise RunDirError(f"cannot write {self.folder}: {exc.strerror or exc}") from None

    def scalars(self, step: int, record: dict, group: str = "train") -> None:
        for key, value in record.items():
            if key not in ("step", "seconds"):
                self._guard(lambda: self.writer.add_scalar(f"{group}/{key}", value, step))

    def samples(self, step: int, stop: StopRequest) -> None:
        """The grid of samples at `step`, unless train.sample_grids leaves it out. Drawing it stops at once on SIGINT
        or SIGTERM, which stays in stop.signum for the caller, and nothing is written; a drawing of many passes says
        so on stderr as it starts and ends."""
        if not self.draws_samples:
            return
        n = GRID_ROWS * (self.model.classes if self.model.spec.label_code else GRID_COLUMNS)
        what = f"drawing the TensorBoard sample grid of step {step} ({n} samples, {self.passes} network passes each)"
        try:
            with stop.interruptible(), phase(what) if self.passes > 1 else nullcontext():
                images = self._draw()
        except Signalled:
            return
        ncol = images.shape[1]
        grid = data_mod.image_grid(images.clamp(0, 1), ncol, tuple(self.cfg.model.image_shape), pad_value=0.5)
        self._guard(lambda: self.writer.add_image("samples", grid, step, dataformats="HWC" if grid.ndim == 3 else "HW"))
        self._guard(self.writer.flush)

    @torch.no_grad()
    def _draw(self) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:  # forked RNG: drawing these samples must not change the training run's random stream
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(0)  # the same z at every checkpoint, so the grids show training progress
                if self.model.spec.label_code:
                    return self.model.label_grid(GRID_ROWS)
                return self.model.sample(GRID_ROWS * GRID_COLUMNS).view(GRID_ROWS, GRID_COLUMNS, -1)
        finally:
            self.model.train(was_training)

    def close(self) -> None:
        self._guard(self.writer.close)
