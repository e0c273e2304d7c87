"""SIGINT and SIGTERM stop every phase of a command promptly, with exit 128 + the signal, one line, and no partial
file: the final sample grid of a PixelCNN run (which auto leaves out), `vaelab eval`, `vaelab sample`."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vaelab.cli import main

STOPS_WITHIN = 10  # seconds from the signal to the exit
TINY = ["--batch-size", "10", "--z-dim", "2", "--hidden", "16", "--log-every", "1", "--device", "cpu", "--threads", "1", "--no-progress"]
# A PixelVAE small enough to train in a second; drawing its 60-sample grid takes 784 passes of the PixelCNN. Eight
# layers keep a grid at a few seconds even on an idle machine (the sampler keeps its states: three take 0.3-0.6 s),
# so the signal lands while it draws.
PIXEL_TRAIN = ["--channels", "8,8", "--pixel-layers", "8", *TINY]


class Command:
    """`python -m vaelab ARGS` in a subprocess whose stderr is read line by line as it comes."""

    def __init__(self, *args):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "vaelab", *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)  # the end of stderr

    def wait_for(self, text: str, timeout: float = 120) -> None:
        """Until a line of stderr holds `text`; fails if the command ends first."""
        deadline = time.time() + timeout
        while not any(text in line for line in self.lines):
            line = self._queue.get(timeout=max(deadline - time.time(), 0.01))
            assert line is not None, f"ended ({self.proc.wait()}) before {text!r}: {''.join(self.lines)}"
            self.lines.append(line)

    def stop(self, signum: int) -> tuple[int, float, list[str]]:
        """Send `signum`; the exit code, the seconds to it, and the lines of stderr that followed."""
        before, sent = len(self.lines), time.time()
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=STOPS_WITHIN * 3)
        finally:
            self.proc.kill()
        seconds = time.time() - sent
        while (line := self._queue.get(timeout=5)) is not None:
            self.lines.append(line)
        return code, seconds, [line.strip() for line in self.lines[before:]]


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of atomic writes (.NAME.*.tmp) and figures (.NAME.partial-PID.png)."""
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial-" in p.name]


@pytest.fixture(scope="module")
def pixel_run(tiny_data, tmp_path_factory):
    """A finished PixelVAE run, trained with the default train.sample_grids (auto: no grid)."""
    run = tmp_path_factory.mktemp("signals") / "pixel"
    assert main(["train", "pixelvae", "--steps", "2", *PIXEL_TRAIN, "--data-dir", str(tiny_data), "--out", str(run)]) == 0
    return run


def _events(run: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (run / "tensorboard").iterdir())


def test_auto_leaves_out_the_grids_of_an_autoregressive_model_only(pixel_run, tiny_data, tmp_path):
    """Autoregressive is read from the modules' declared cost (sampling_passes), not from the model's name."""
    from vaelab.training.board import sampling_passes
    from vaelab.training.runs import load_run

    assert sampling_passes(load_run(pixel_run, "cpu")[0]) == 28 * 28  # one network pass per pixel
    assert b"samples" not in _events(pixel_run)  # the grid's tag: drawing it would have taken minutes
    vae = tmp_path / "vae"
    assert main(["train", "vae", "--steps", "2", *TINY, "--data-dir", str(tiny_data), "--out", str(vae)]) == 0
    assert sampling_passes(load_run(vae, "cpu")[0]) == 1 and b"samples" in _events(vae)


@pytest.mark.parametrize("signum, at", [(signal.SIGINT, "final"), (signal.SIGTERM, "checkpoint")],
                         ids=["SIGINT-final", "SIGTERM-checkpoint"])
def test_a_signal_during_a_grid_leaves_a_complete_or_resumable_run(tiny_data, tmp_path, capsys, signum, at):
    """train.sample_grids=always on a PixelCNN: a grid stops at the signal. The final one is drawn after the weights and
    summary, so the run is complete and --resume says it is finished; one at a checkpoint leaves that checkpoint."""
    run, name = tmp_path / "run", signal.Signals(signum).name
    command = Command("train", "pixelvae", "--steps", "4" if at == "checkpoint" else "2", "--checkpoint-every", "2", *PIXEL_TRAIN,
                      "--set", "train.sample_grids=always", "--data-dir", tiny_data, "--out", run)
    command.wait_for("vaelab: drawing the TensorBoard sample grid of step 2 (60 samples, 784 network passes each) ...")
    code, seconds, after = command.stop(signum)
    assert code == 128 + signum and seconds < STOPS_WITHIN and not leftovers(run), (code, seconds, after)
    if at == "checkpoint":
        assert after == [f"vaelab train: interrupted by {name} at step 2 of 4: checkpoint written; continue with "
                         f"vaelab train --resume {run}"], after
        assert (run / "checkpoints" / "step-0000002.safetensors").is_file() and not (run / "model.safetensors").exists()
        return
    assert after == [f"vaelab train: interrupted by {name} after the last step (2 of 2): the run is complete, "
                     f"model.safetensors and summary.json written"], after
    assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 1
    assert "already finished 2 of 2 steps" in capsys.readouterr().err


def test_sigterm_during_eval_stops_it_with_no_result_file(pixel_run):
    """SIGTERM used to end the process on the spot; now it is one line and exit 143, with no eval JSON."""
    command = Command("eval", pixel_run, "--protocol", "full", "--iw", "1,50", "--device", "cpu")
    command.wait_for("NELBO")
    code, seconds, after = command.stop(signal.SIGTERM)
    assert code == 143 and seconds < STOPS_WITHIN and after == ["vaelab eval: interrupted by SIGTERM"], (code, seconds, after)
    assert not list(pixel_run.glob("eval-*")) and not leftovers(pixel_run)


def test_sigint_during_sample_of_a_pixelcnn_stops_it_with_no_partial_figure(pixel_run):
    """Drawing from a PixelCNN (minutes) says so as it starts, and stops between two pixels with no figure."""
    command = Command("sample", pixel_run, "--n", "60", "--device", "cpu")
    command.wait_for("vaelab: drawing 60 samples and 60 reconstructions (784 network passes each) ...")
    code, seconds, after = command.stop(signal.SIGINT)
    assert code == 130 and seconds < STOPS_WITHIN and after == ["vaelab sample: interrupted by SIGINT"], (code, seconds, after)
    assert not list(pixel_run.glob("*.png")) and not leftovers(pixel_run)
