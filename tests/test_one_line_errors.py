"""Bad input through the command line or the Python API ends in one line naming the option, argument or file, never
a traceback: output paths that cannot be written, a run directory that cannot be written (eval prints its results
first), any OSError at the command boundary, too few disentanglement points, evaluate_images and the model's
sample and forward given counts out of range."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.cli import COMMANDS, main
from vaelab.errors import ArgumentError, DataError, RunDirError, VaelabError
from vaelab.evaluation import evaluate_images
from vaelab.models import MODELS, build_model, model_config




def one_line(proc, *needles) -> str:
    """Exit 1 and one line on stderr (after any progress lines), holding every needle."""
    lines = [line for line in proc.stderr.splitlines() if line.strip() and not line.endswith(" ...")]  # eval's progress lines
    assert proc.returncode == 1, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def run(tiny_data, tmp_path_factory):
    path = tmp_path_factory.mktemp("runs") / "vae"
    assert main(["train", "vae", "--steps", "20", "--batch-size", "20", "--hidden", "16", "--z-dim", "2", "--log-every", "10",
                 "--checkpoint-every", "20", "--data-dir", str(tiny_data), "--out", str(path), "--device", "cpu",
                 "--no-progress"]) == 0
    return path


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only: by its permissions, or, for root (whom they do not stop), by refusing every
    open for writing, creation and rename inside it as the kernel would."""
    folders: list[Path] = []

    def make(folder: Path) -> None:
        if os.geteuid() != 0:
            os.chmod(folder, 0o555)
            folders.append(folder)
            return

        def inside(path) -> bool:
            return isinstance(path, (str, os.PathLike)) and Path(os.path.abspath(path)).is_relative_to(folder.resolve())

        def refuse(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))

        real_open, real_os_open, real_replace, real_mkdir = builtins.open, os.open, os.replace, os.mkdir

        def opener(real):
            def patched(file, mode="r", *args, **kwargs):
                if inside(file) and any(c in mode for c in "wax+"):
                    refuse(file)
                return real(file, mode, *args, **kwargs)
            return patched

        def os_open(path, flags, *args, **kwargs):
            if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
                refuse(path)
            return real_os_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", opener(real_open))
        monkeypatch.setattr(io, "open", opener(real_open))
        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "replace", lambda a, b, *r, **k: refuse(b) if inside(b) else real_replace(a, b, *r, **k))
        monkeypatch.setattr(os, "mkdir", lambda p, *r, **k: refuse(p) if inside(p) else real_mkdir(p, *r, **k))

    yield make
    for folder in folders:
        os.chmod(folder, 0o755)


# ---------------------------------------------------------------- the command boundary
@pytest.mark.parametrize("exc, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/some/file"), "/some/file: Permission denied"),
    (OSError(errno.ENOSPC, "No space left on device", "/disk/x.png"), "/disk/x.png: No space left on device"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/a/dir"), "/a/dir: Is a directory"),
    (OSError(errno.EIO, "Input/output error"), "Input/output error"),
])
def test_an_os_error_no_layer_turned_into_a_vaelab_error_is_one_line_naming_the_file(cli, monkeypatch, exc, line):
    def fail(args):
        raise exc

    monkeypatch.setitem(COMMANDS, "compare", fail)
    proc = cli("compare", "a", "--out", "b")
    assert one_line(proc) == f"vaelab compare: error: {line}"


# ---------------------------------------------------------------- output paths
def _bad_outputs(run: Path, tmp: Path) -> dict:
    blocker = tmp / "file"
    return {
        "sample --out under a file": (["sample", run, "--no-recon", "--out", blocker / "s.png"], ["--out", blocker, "is a file"]),
        "sample --recon-out under a file": (["sample", run, "--recon-out", blocker / "sub" / "r.png"], ["--recon-out", blocker]),
        "sample --out not an image": (["sample", run, "--no-recon", "--out", tmp / "config.json"], ["--out", "not an image file name"]),
        "sample --out and --recon-out the same": (["sample", run, "--out", tmp / "x.png", "--recon-out", tmp / "x.png"],
                                                  ["--out and --recon-out", "x.png"]),
        "plot --out under a file": (["plot", run, "--kind", "curves", "--out", blocker / "c.png"], ["--out", blocker]),
        "compare --out a file": (["compare", run, "--out", blocker], ["--out", blocker, "is a file"]),
        "compare --out under a file": (["compare", run, "--out", blocker / "sub"], ["--out", blocker]),
        "train --out a file": (["train", "vae", "--steps", "2", "--out", blocker], ["--out", blocker, "is a file"]),
        "train --out under a file": (["train", "vae", "--steps", "2", "--out", blocker / "sub" / "run"], ["--out", blocker]),
        "reproduce --out a file": (["reproduce", "cs236", "--quick", "--out", blocker], ["--out", blocker]),
    }


@pytest.mark.parametrize("name", list(_bad_outputs(Path("r"), Path("t"))))
def test_a_bad_output_path_is_one_line_naming_the_option_and_nothing_is_written(cli, run, tmp_path, tiny_data, name):
    (tmp_path / "file").write_text("kept")
    args, needles = _bad_outputs(run, tmp_path)[name]
    before, run_before = snapshot(tmp_path), snapshot(run)
    one_line(cli(*args, *(["--data-dir", tiny_data] if args[0] in ("train", "sample") else [])), *needles)
    assert snapshot(tmp_path) == before and snapshot(run) == run_before


def test_an_existing_folder_as_out_receives_the_default_file_name(cli, run, tmp_path):
    folder = tmp_path / "figures"
    folder.mkdir()
    proc = cli("plot", run, "--kind", "curves", "--out", folder)
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {folder / 'curves.png'}"
    proc = cli("sample", run, "--no-recon", "--n", "4", "--out", folder)
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {folder / 'samples.png'}"
    proc = cli("sample", run, "--no-recon", "--n", "4", "--out", tmp_path / "grid")  # no suffix: the default's
    assert proc.returncode == 0 and proc.stdout.strip() == f"wrote {tmp_path / 'grid.png'}"
    assert sorted(p.name for p in folder.iterdir()) == ["curves.png", "samples.png"] and (tmp_path / "grid.png").stat().st_size > 100


# ---------------------------------------------------------------- a run directory that cannot be written
def test_a_read_only_run_directory_is_one_line_and_eval_prints_its_results_first(cli, run, tmp_path, tiny_data, read_only):
    before = snapshot(run)
    read_only(run)
    proc = cli("eval", run, "--iw", "1", "--data-dir", tiny_data)
    one_line(proc, "cannot write", run / "eval-cs236.json", "Permission denied")
    assert "NELBO" in proc.stdout and "-IWAE-1" in proc.stdout  # the results, then the error
    proc = cli("eval", run, "--iw", "1", "--data-dir", tiny_data, "--json")
    one_line(proc, run / "eval-cs236.json")
    assert "nelbo" in __import__("json").loads(proc.stdout)
    one_line(cli("sample", run, "--n", "4", "--data-dir", tiny_data), run, "Permission denied")
    one_line(cli("plot", run, "--kind", "curves"), run, "Permission denied")
    assert snapshot(run) == before
    assert cli("sample", run, "--n", "4", "--no-recon", "--out", tmp_path / "s.png").returncode == 0  # elsewhere it works


def test_a_failed_figure_write_leaves_the_old_file_and_no_partial_one(tmp_path):
    from vaelab.cli.paths import written

    old = tmp_path / "samples.png"
    old.write_bytes(b"old figure")
    with pytest.raises(RunDirError, match=f"cannot write {old}: No space left on device"):
        with written(old) as (partial,):
            partial.write_bytes(b"half a fig")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert old.read_bytes() == b"old figure" and sorted(tmp_path.iterdir()) == [old]
    with pytest.raises(PermissionError):  # an error reading another file is not called a failed write
        with written(old):
            raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "t10k-images-idx3-ubyte"))
    with written(old) as (partial,):
        partial.write_bytes(b"new figure")
    assert old.read_bytes() == b"new figure" and sorted(tmp_path.iterdir()) == [old]


# ---------------------------------------------------------------- disentanglement points
@pytest.mark.parametrize("points", ["1", "0", "-5", "9"])
def test_too_few_disentanglement_points_is_one_line_stating_the_minimum(cli, run, points):
    one_line(cli("eval", run, "--disentanglement", "--metric-points", points), "--metric-points", "at least 10", points)


def test_the_api_states_the_minimum_too_and_one_factor_in_the_sample_still_scores():
    from vaelab.evaluation.disentanglement import MIN_METRIC_POINTS, beta_vae_score, evaluate_disentanglement, uniform_factors

    with pytest.raises(ArgumentError, match=f"points: each metric needs at least {MIN_METRIC_POINTS}"):
        evaluate_disentanglement(None, None, points=3)

    class OneFactor:
        factor_sizes = (4,)

        def sample_factors(self, n, rng):
            return uniform_factors(self.factor_sizes, n, rng)

    scores = beta_vae_score(OneFactor(), lambda v: v.astype(float), np.random.default_rng(0), batch=4, train=10, evaluate=5)
    assert scores == {"beta_vae_train": 1.0, "beta_vae": 1.0}


# ---------------------------------------------------------------- evaluate_images
@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return build_model(model_config("vae", hidden=(8,), z_dim=2))


@pytest.mark.parametrize("kwargs, error, needle", [
    (dict(images=torch.zeros(0, 28, 28)), DataError, "images: none given"),
    (dict(images=torch.full((3, 28, 28), float("nan"))), DataError, "NaN"),
    (dict(iws=(0,)), ArgumentError, "iws"),
    (dict(iws=(10, -1)), ArgumentError, "iws"),
    (dict(iws=(1.5,)), ArgumentError, "iws"),
    (dict(iws="ten"), ArgumentError, "iws"),
    (dict(repeats=0), ArgumentError, "repeats"),
    (dict(budget=-1), ArgumentError, "budget"),
    (dict(labels=[1, 2]), DataError, "labels"),
])
def test_evaluate_images_refuses_bad_arguments_naming_them(small_model, kwargs, error, needle):
    kwargs = {"images": torch.rand(4, 28, 28), "iws": (1,), **kwargs}
    with pytest.raises(error, match=needle) as caught:
        evaluate_images(small_model, **kwargs)
    assert isinstance(caught.value, VaelabError) and len(str(caught.value).splitlines()) == 1
    assert evaluate_images(small_model, torch.rand(4, 28, 28), iws=2)["niwae_2"] > 0  # one count given bare


# ---------------------------------------------------------------- the model's counts
@pytest.mark.parametrize("name", sorted(MODELS))
def test_sample_and_forward_refuse_counts_out_of_range_and_sample_zero_is_empty(name):
    net = dict(hidden=(8,)) if "mlp" in MODELS[name].spec.nets else dict(net="conv", channels=(4,))
    model = build_model(model_config(name, image_shape=(8, 8), x_dim=64, z_dim=2, **net))
    assert model.sample(0).shape == (0, 64)
    for n in (-1, 2.5, "3"):
        with pytest.raises(ArgumentError, match=r"^n \(images to sample\): expected an integer >= 0"):
            model.sample(n)
    batch = {"x": torch.zeros(2, 64), "y": torch.zeros(2, dtype=torch.long)}
    for k in (-1, 0):
        with pytest.raises(ValueError, match=r"^k \(draws per input\): expected an integer >= 1"):
            model(batch, k=k)
    if model.spec.label_code is not None:
        with pytest.raises(ArgumentError, match="labels: expected one label for each of n = 3"):
            model.sample(3, labels=torch.tensor([0, 1]))


def test_a_conditional_prior_checks_the_labels_it_samples_given():
    model = build_model(model_config("cvae", image_shape=(8, 8), x_dim=64, z_dim=2, hidden=(8,), conditional_prior=True))
    with pytest.raises(ArgumentError, match="labels: expected one label for each of n = 3"):
        model.sample(3, labels=torch.tensor([0, 1]))
    with pytest.raises(ArgumentError, match="labels: expected values in 0..9"):
        model.sample(2, labels=torch.tensor([0, 10]))
    assert model.sample(2, labels=torch.tensor([3, 4])).shape == (2, 64)
    assert model.sample(0, labels=torch.zeros(0, dtype=torch.long)).shape == (0, 64)
