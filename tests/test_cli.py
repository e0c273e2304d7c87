"""The vaelab command end to end on tiny data, and its promised errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vaelab.cli import main
from vaelab.data import write_idx


def vaelab(*args, cwd=None):
    """Run `python -m vaelab ARGS` in a subprocess; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "vaelab", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)




def _one_line_error(proc, *needles):
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def trained_run(tiny_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "vae"
    args = ["train", "vae", "--steps", "40", "--batch-size", "50", "--z-dim", "4", "--hidden", "64,64",
            "--checkpoint-every", "20", "--log-every", "10", "--data-dir", tiny_data, "--out", run,
            "--device", "cpu", "--no-progress"]
    code = main([str(a) for a in args])
    assert code == 0
    return run


def test_train_writes_a_complete_run_directory(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"config.json", "model.safetensors", "metrics.jsonl", "summary.json", "checkpoints"} <= names
    cfg = json.loads((trained_run / "config.json").read_text())
    assert cfg["model"]["z_dim"] == 4 and cfg["model"]["hidden"] == [64, 64] and cfg["train"]["steps"] == 40
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [10, 20, 30, 40]
    assert all(np.isfinite(m["loss"]) and m["nelbo"] > 0 for m in metrics)
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == ["step-0000020.safetensors", "step-0000040.safetensors"]


def test_eval_cs236_json(cli, trained_run):
    proc = cli("eval", trained_run, "--protocol", "cs236", "--iw", "1,10,100", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["protocol"] == "cs236" and result["images"] == 100
    for key in ("nelbo", "kl", "rec", "niwae_1", "niwae_10", "niwae_100"):
        assert np.isfinite(result[key])
    assert abs(result["nelbo"] - (result["kl"] + result["rec"])) < 1e-3
    assert result["niwae_1"] >= result["niwae_10"] >= result["niwae_100"]
    assert json.loads((trained_run / "eval-cs236.json").read_text())["niwae_100"] == result["niwae_100"]
    # Same seed, same device, same numbers. Bit-identical repeats hold on the CPU; CUDA's reductions may
    # order sums differently, so the device is pinned (tests/test_device_step.py compares CUDA within 1e-3).
    again = json.loads(cli("eval", trained_run, "--iw", "1,10,100", "--json", "--no-save", "--device", "cpu").stdout)
    assert again["niwae_10"] == result["niwae_10"]


def test_eval_full_protocol_small_budget(trained_run, capsys):
    assert main(["eval", str(trained_run), "--protocol", "full", "--iw", "1,20", "--budget", "2000000", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 11000 and result["niwae_1"] >= result["niwae_20"]
    assert result["niwae_20_sem"] > 0


def test_eval_on_a_fixed_subset_of_the_test_split(cli, trained_run, tmp_path):
    """--images N: the full protocol on the same N test images every time (binarized as in the whole split),
    written beside the full evaluation under its own name, which compare shows as its own column."""
    import torch

    from vaelab import data
    from vaelab.evaluation import evaluation_set
    from vaelab.evaluation.protocols import subset_index

    proc = cli("eval", trained_run, "--protocol", "full", "--images", "300", "--iw", "1,5", "--json", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["protocol"], result["images"], result["subset_of"], result["subset_seed"]) == ("full", 300, 11000, 0)
    assert json.loads((trained_run / "eval-full-300.json").read_text())["niwae_5"] == result["niwae_5"]
    index = subset_index(11000, 300)
    assert len(set(index.tolist())) == 300 and bool((index[1:] > index[:-1]).all())  # distinct, in test-set order
    assert not torch.equal(index, torch.arange(300))  # drawn over the whole split, not its first images
    assert torch.equal(subset_index(11000, 300), index) and torch.equal(subset_index(11000, 100), subset_index(11000, 100))
    cfg_data = json.loads((trained_run / "config.json").read_text())["data"]
    test = data.load("mnist", "test", cfg_data["data_dir"])
    whole, _ = evaluation_set("full", test, True)
    part, labels = evaluation_set("full", test, True, images=300)
    assert torch.equal(part, whole[index]) and torch.equal(labels, test.labels[index])
    table = tmp_path / "cmp"
    assert cli("compare", trained_run, "--out", table).returncode == 0
    assert "full-300.nelbo" in (table / "compare.md").read_text()
    _one_line_error(cli("eval", trained_run, "--protocol", "cs236", "--images", "50", "--no-save"), "--images", "cs236")
    _one_line_error(cli("eval", trained_run, "--protocol", "full", "--images", "20000", "--no-save"), "--images", "11000")
    assert cli("eval", trained_run, "--images", "0").returncode == 2  # argparse: a positive count


def test_sample_writes_grids(cli, trained_run, tmp_path):
    out = tmp_path / "grid.png"
    proc = cli("sample", trained_run, "--n", "30", "--ncol", "10", "--out", out, "--recon-out", tmp_path / "r.png")
    assert proc.returncode == 0, proc.stderr
    import matplotlib.image

    grid = matplotlib.image.imread(out)
    assert grid.shape[:2] == (3 * 30 + 2, 10 * 30 + 2)  # 3 rows x 10 cols of 28px tiles with 2px padding
    assert matplotlib.image.imread(tmp_path / "r.png").shape[0] > 0


def test_module_entry_point_help_and_exit_code(tmp_path):
    proc = vaelab("train", "--help")
    assert proc.returncode == 0
    for option in ("--steps", "--batch-size", "--lr", "--seed", "--z-dim", "--beta", "--data-dir", "--out", "--device", "--set"):
        assert option in proc.stdout
    # The process itself exits non-zero with the one-line message.
    _one_line_error(vaelab("train", "vae", "--data-dir", tmp_path / "absent", "--out", tmp_path / "run"), tmp_path / "absent")


def test_train_missing_data_directory(cli, tmp_path):
    missing = tmp_path / "no-such-dir"
    proc = cli("train", "vae", "--steps", "2", "--data-dir", missing, "--out", tmp_path / "run")
    _one_line_error(proc, missing)
    assert not (tmp_path / "run").exists()


def test_train_corrupt_file(cli, tmp_path, tiny_data):
    import shutil

    shutil.copytree(tiny_data / "mnist", tmp_path / "data" / "mnist")
    bad = tmp_path / "data" / "mnist" / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:5000])
    proc = cli("train", "vae", "--steps", "2", "--data-dir", tmp_path / "data", "--out", tmp_path / "run")
    _one_line_error(proc, bad)
    assert not (tmp_path / "run").exists()


def test_train_missing_files_without_download(cli, tmp_path):
    (tmp_path / "data").mkdir()
    proc = cli("train", "vae", "--data-dir", tmp_path / "data", "--no-download", "--out", tmp_path / "run")
    _one_line_error(proc, tmp_path / "data" / "mnist", "train-images-idx3-ubyte")


def test_train_refuses_to_overwrite_a_run(cli, trained_run, tiny_data):
    before = (trained_run / "model.safetensors").read_bytes()
    proc = cli("train", "vae", "--steps", "2", "--data-dir", tiny_data, "--out", trained_run)
    _one_line_error(proc, "--out", trained_run)
    assert (trained_run / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "train.stepz=3"], "train.stepz"),
        (["--set", "train.steps"], "key=value"),
        (["--beta", "-1"], "objective.beta"),
        (["--k", "0"], "objective.k"),
        (["--batch-size", "100000"], "train.batch_size"),
        (["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"], "--device"),
    ],
)
def test_train_bad_options(cli, tmp_path, tiny_data, args, needle):
    proc = cli("train", "vae", "--steps", "2", "--data-dir", tiny_data, "--out", tmp_path / "run", *args)
    _one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


def test_unknown_model_and_bad_iw(cli, tmp_path, trained_run):
    _one_line_error(cli("train", "nosuchmodel", "--out", tmp_path / "r"), "nosuchmodel")
    proc = cli("eval", trained_run, "--iw", "0,10")
    assert proc.returncode == 2 and "--iw" in proc.stderr
    _one_line_error(cli("eval", tmp_path / "absent"), tmp_path / "absent")


def test_eval_with_corrupt_test_file(cli, tmp_path, trained_run, tiny_data):
    import shutil

    shutil.copytree(tiny_data / "mnist", tmp_path / "mnist")
    write_idx(tmp_path / "mnist" / "t10k-labels-idx1-ubyte", np.zeros(3, dtype=np.uint8))
    _one_line_error(cli("eval", trained_run, "--data-dir", tmp_path), tmp_path / "mnist" / "t10k-labels-idx1-ubyte")


def test_train_settings_flags_reach_the_config(cli, tmp_path, tiny_data):
    run = tmp_path / "gm"
    proc = cli("train", "gmvae", "--steps", "6", "--log-every", "3", "--hidden", "32", "--components", "5", "--posterior", "full",
               "--kl-warmup", "4", "--free-bits", "0.1", "--free-bits-group", "0", "--data-dir", tiny_data, "--out", run, "--no-progress")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["model"]["prior"], cfg["model"]["prior_components"], cfg["model"]["posterior"]) == ("mog", 5, "full")
    assert (cfg["objective"]["kl_warmup_steps"], cfg["objective"]["free_bits"], cfg["objective"]["free_bits_group"]) == (4, 0.1, 0)
    betas = [json.loads(line)["beta"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert betas == [0.5, 1.0]  # annealed: beta at steps 3 and 6 of a 4-step warm-up
    proc = cli("eval", run, "--protocol", "full", "--iw", "2", "--json", "--no-save")
    result = json.loads(proc.stdout)
    assert 0 <= result["active_units"] <= result["z_dim"] == 10


@pytest.mark.parametrize("kind", ["interpolation", "traversal", "latents", "kl", "lossy", "curves"])
def test_plot_kinds(cli, trained_run, tmp_path, kind):
    import matplotlib.image

    out = tmp_path / f"{kind}.png"
    proc = cli("plot", trained_run, "--kind", kind, "--out", out, "--images", "300")
    assert proc.returncode == 0, proc.stderr
    image = matplotlib.image.imread(out)
    assert image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0.01  # not a blank canvas
    if kind in ("interpolation", "traversal"):
        assert image.shape[1] >= 600  # labelled and large enough to read (the bare grid was 272 px wide)


def test_plot_kl_draws_activity_where_the_kl_does_not_split_by_dimension(cli, tmp_path, tiny_data):
    """A full-covariance posterior has no KL per dimension: the plot shows each dimension's activity and the
    ELBO-surgery panel instead of refusing (tests/test_surgery.py checks the panels' labels)."""
    run = tmp_path / "full"
    assert cli("train", "vae", "--posterior", "full", "--steps", "2", "--hidden", "16", "--data-dir", tiny_data,
               "--out", run, "--no-progress").returncode == 0
    proc = cli("plot", run, "--kind", "kl", "--out", tmp_path / "kl.png")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "kl.png").stat().st_size > 0


def test_compare_runs(cli, trained_run, tmp_path, tiny_data):
    other = tmp_path / "beta4"
    assert cli("train", "vae", "--beta", "4", "--steps", "20", "--log-every", "10", "--hidden", "16", "--z-dim", "3",
               "--data-dir", tiny_data, "--out", other, "--no-progress").returncode == 0
    assert cli("eval", other, "--iw", "1,10").returncode == 0
    proc = cli("compare", trained_run, other, "--out", tmp_path / "cmp")
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert len(table) == 4 and "beta 4" in table[3] and "cs236.nelbo" in table[0]
    import csv

    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert [r["run"] for r in rows] == [trained_run.name, "beta4"]
    assert (tmp_path / "cmp" / "curves.png").stat().st_size > 1000
    _one_line_error(cli("compare", tmp_path / "nothing", "--out", tmp_path / "c2"), tmp_path / "nothing")


def test_tensorboard_events_hold_scalars_and_images(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss", "train/nelbo", "train/kl", "train/rec"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [10, 20, 30, 40]
    metrics = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert events.Scalars("train/nelbo")[-1].value == pytest.approx(metrics[-1]["nelbo"], rel=1e-5)
    assert "samples" in tags["images"] and [e.step for e in events.Images("samples")] == [20, 40]


def test_compile_without_a_cpp_compiler_is_a_one_line_error(cli, tiny_data, trained_run, tmp_path, monkeypatch):
    monkeypatch.setattr("vaelab.devices.shutil.which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    out = tmp_path / "compiled"
    proc = cli("train", "vae", "--steps", "5", "--compile", "--data-dir", tiny_data, "--out", out, "--device", "cpu", "--no-progress")
    _one_line_error(proc, "--compile", "C++ compiler")
    assert not out.exists()  # refused before the run directory was made
    before = sorted(p.name for p in trained_run.iterdir())
    proc = cli("eval", trained_run, "--compile", "--iw", "1", "--device", "cpu", "--data-dir", tiny_data)
    _one_line_error(proc, "--compile", "C++ compiler")
    assert sorted(p.name for p in trained_run.iterdir()) == before  # nothing written


def test_a_run_is_named_by_its_preset_everywhere(cli, tiny_data, tmp_path):
    """A GMVAE is a VAE with a mixture prior: its summary, evaluation and comparison say gmvae, not vae."""
    run = tmp_path / "gm"
    proc = cli("train", "gmvae", "--steps", "13", "--batch-size", "20", "--hidden", "16", "--components", "5", "--log-every", "10",
               "--data-dir", tiny_data, "--out", run, "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("trained gmvae for 13 steps") and "last 3 steps:" in proc.stdout  # 13 = 10 + 3
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["label"], summary["model"], summary["final_steps"]) == ("gmvae", "vae", 3)
    proc = cli("eval", run, "--data-dir", tiny_data, "--device", "cpu", "--iw", "1")
    assert proc.stdout.startswith("gmvae on mnist")
    assert json.loads((run / "eval-cs236.json").read_text())["label"] == "gmvae"
    proc = cli("compare", run, "--out", tmp_path / "cmp")
    assert "| gmvae (vae, hidden 16, prior mog, prior_components 5, ELBO" in proc.stdout


def test_iwae_objective_with_one_sample_is_refused(cli, tiny_data, tmp_path):
    proc = cli("train", "vae", "--objective", "iwae", "--data-dir", tiny_data, "--out", tmp_path / "r")
    assert proc.returncode == 1 and "objective.k: the IWAE objective with k = 1 is the ELBO" in proc.stderr
    assert not (tmp_path / "r").exists()
