"""Your own images: a folder of PNG files (with class sub-folders) or a .npy / .npz array trains, evaluates and samples
from the CLI and from Python; the decoded folder is cached and read again when it changes; each bad input is one line
naming the file, and no run directory is written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from vaelab import data, evaluation, training
from vaelab.data import user
from vaelab.errors import DataError

FAST = ["--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.log_every=1", "--no-progress", "--device", "cpu"]


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def write_pngs(folder, classes=("cat", "dog"), n=6, size=(8, 8), rgb=False, seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = (rng.random((size[1], size[0], 3) if rgb else (size[1], size[0])) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / c / f"{i}.png")
    return folder


def one_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def test_a_folder_with_class_sub_folders_trains_evaluates_and_samples_from_the_cli(cli, tmp_path, monkeypatch):
    folder = write_pngs(tmp_path / "pictures", n=10)
    monkeypatch.chdir(tmp_path)
    proc = cli("train", "vae", "--dataset", "pictures", "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["dataset"] == "user" and saved["data"]["path"] == str(folder) and saved["data"]["test_fraction"] == 0.1
    assert saved["model"]["image_shape"] == [8, 8]
    monkeypatch.chdir(REPO)  # the run finds its images from config.json alone
    proc = cli("eval", tmp_path / "run", "--iw", "1,5", "--json", "--no-save", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["images"] == 2 and result["protocol"] == "full"  # 10 % of 20 images, held out; cs236 is MNIST's
    proc = cli("sample", tmp_path / "run", "--out", tmp_path / "samples.png", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "samples.png").is_file()


def test_settings_are_checked_against_the_shape_of_the_users_images(cli, tmp_path):
    """Four stride-2 convolutions need sides that divide by 16: 16 x 16 colour images train, where MNIST's 28 x 28
    would be refused; the shape comes from the images, before the run directory is made."""
    folder = write_pngs(tmp_path / "rgb", n=4, size=(16, 16), rgb=True)
    conv = ["--net", "conv", "--channels", "4,4,4,4", "--likelihood", "dlogistic", "--mixtures", "1"]
    proc = cli("train", "vae", "--dataset", folder, *conv, "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["image_shape"] == [3, 16, 16]
    write_pngs(tmp_path / "grey", n=4, size=(12, 12))
    proc = cli("train", "vae", "--dataset", tmp_path / "grey", *conv, "--out", tmp_path / "refused", *FAST)
    assert proc.returncode == 1 and "model.net" in proc.stderr and not (tmp_path / "refused").exists()


def test_class_names_come_from_the_sub_folders_and_colour_images_are_held_as_svhn_is(tmp_path):
    write_pngs(tmp_path / "rgb", classes=("b", "a"), n=5, size=(6, 4), rgb=True)
    images = data.load(tmp_path / "rgb", "train", test_fraction=0.2)
    assert images.classes == ("a", "b") and tuple(images.images.shape) == (8, 3, 4, 6)
    test = data.load(tmp_path / "rgb", "test", test_fraction=0.2)
    assert len(test) == 2
    both = np.concatenate([images.images.numpy(), test.images.numpy()])
    assert len({row.tobytes() for row in both}) == 10  # the two splits part the images


def test_an_array_trains_through_the_python_api_and_the_cli(cli, tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "floats.npy", rng.random((20, 8, 8, 1)).astype(np.float32))
    loaded = data.load(tmp_path / "floats.npy", "train")
    assert str(loaded.images.dtype) == "torch.uint8" and int(loaded.images.max()) <= 255
    assert tuple(loaded.images.shape) == (18, 8, 8)
    np.savez(tmp_path / "pairs.npz", images=(rng.random((20, 8, 8)) * 255).astype(np.uint8), labels=np.arange(20) % 3)
    cfg = training.load_preset("vae")
    cfg.data.path, cfg.data.test_fraction = str(tmp_path / "pairs.npz"), 0.25
    cfg.train.steps, cfg.train.batch_size, cfg.train.device = 3, 4, "cpu"
    training.train(cfg, tmp_path / "api-run", progress=False)
    model, cfg = training.load_run(tmp_path / "api-run")
    test = data.load_for(cfg.data, "test")
    assert len(test) == 5 and test.classes == ("0", "1", "2")
    assert "nelbo" in evaluation.evaluate_images(model, test.images, iws=(1, 5), repeats=1)
    proc = cli("train", "vae", "--dataset", tmp_path / "floats.npy", "--out", tmp_path / "cli-run", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert cli("sample", tmp_path / "cli-run", "--out", tmp_path / "s.png", "--device", "cpu").returncode == 0


def test_a_second_path_is_the_test_split_and_image_size_crops_and_resizes(tmp_path):
    write_pngs(tmp_path / "train", n=3, size=(10, 8))
    write_pngs(tmp_path / "train", classes=("dog",), n=2, size=(12, 12), seed=1)  # other sizes: resized
    write_pngs(tmp_path / "test", classes=("dog",), n=2, size=(5, 5))
    train = data.load(tmp_path / "train", "train", test_path=tmp_path / "test", image_size=4)
    test = data.load(tmp_path / "train", "test", test_path=tmp_path / "test", image_size=4)
    assert tuple(train.images.shape) == (6, 4, 4) and tuple(test.images.shape) == (2, 4, 4)
    assert test.labels.tolist() == [1, 1] and test.classes == ("cat", "dog")  # labelled by the training set's class names


def test_the_decoded_folder_is_cached_and_read_again_when_it_changes(tmp_path, monkeypatch):
    folder = write_pngs(tmp_path / "pictures", n=4)
    decoded = []
    real = user.decode_image
    monkeypatch.setattr(user, "decode_image", lambda path, *args: decoded.append(path) or real(path, *args))
    first = data.load(folder, "train")
    assert len(decoded) == 8
    cached = list((tmp_path / "cache" / "vaelab" / "user-images").iterdir())
    assert sorted(p.suffix for p in cached) == [".json", ".npz"]
    assert not [p for p in folder.rglob("*") if p.suffix not in (".png", "")]  # nothing written beside the images
    decoded.clear()
    again = data.load(folder, "train")
    assert decoded == [] and bool((again.images == first.images).all())
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "cat" / "9.png")
    changed = data.load(folder, "train")
    assert len(decoded) == 9 and len(changed) + len(data.load(folder, "test")) == 9
    assert len(list((tmp_path / "cache" / "vaelab" / "user-images").iterdir())) == 2  # the stale entry is gone
    entry = next((tmp_path / "cache" / "vaelab" / "user-images").glob("*.npz"))
    raw = bytearray(entry.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entry.write_bytes(bytes(raw))  # a damaged cache is read from the images again
    decoded.clear()
    assert bool((data.load(folder, "train").images == changed.images).all()) and len(decoded) == 9


def _bad(tmp_path):
    """(what to pass as --dataset, extra settings, what the one line says) for each bad input."""
    sizes = write_pngs(tmp_path / "sizes", classes=("a",), n=2)
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(sizes / "a" / "z.png")
    corrupt = write_pngs(tmp_path / "corrupt", classes=("a",), n=2)
    (corrupt / "a" / "1.png").write_bytes((corrupt / "a" / "1.png").read_bytes()[:30])
    (tmp_path / "empty").mkdir()
    np.save(tmp_path / "range.npy", np.full((4, 8, 8), 1.5, np.float32))
    nan = np.zeros((4, 8, 8), np.float32)
    nan[1, 2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "flat.npy", np.zeros(10, np.uint8))
    np.savez(tmp_path / "labels.npz", images=np.zeros((4, 8, 8), np.uint8), labels=np.arange(3))
    np.save(tmp_path / "two.npy", np.zeros((2, 8, 8), np.uint8))
    return [
        (sizes, [], ("sizes", "differ in size", "data.image_size")),
        (corrupt, [], ("1.png", "not a readable image")),
        (tmp_path / "empty", [], ("empty", "no PNG, JPEG or BMP images")),
        (tmp_path / "range.npy", [], ("range.npy", "[0, 1]")),
        (tmp_path / "nan.npy", [], ("nan.npy", "1 NaN pixels")),
        (tmp_path / "flat.npy", [], ("flat.npy", "(N, H, W)", "(10,)")),
        (tmp_path / "labels.npz", [], ("labels.npz", "labels has shape (3,)")),
        (tmp_path / "absent", [], ("absent", "does not exist")),
        (tmp_path / "two.npy", ["--set", "data.test_fraction=1.5"], ("data.test_fraction", "between 0 and 1")),
        (tmp_path / "two.npy", ["--set", "data.test_fraction=0.9"], ("two.npy", "leaves no training images")),
    ]


def test_each_bad_input_is_one_line_naming_it_and_no_run_directory_is_written(cli, tmp_path):
    for path, settings, needles in _bad(tmp_path):
        out = tmp_path / "runs" / path.name
        one_line(cli("train", "vae", "--dataset", path, "--out", out, *settings, *FAST), *needles)
        assert not out.exists()


def test_the_python_api_refuses_the_same_input_as_a_data_error(tmp_path):
    for path, settings, needles in _bad(tmp_path):
        fraction = float(settings[1].split("=")[1]) if settings else None
        with pytest.raises(DataError, match=re.escape(needles[-1])):
            data.load(path, "train", test_fraction=fraction)


def test_more_classes_than_the_model_has_room_for_is_one_line(cli, tmp_path):
    np.savez(tmp_path / "many.npz", images=np.zeros((24, 8, 8), np.uint8), labels=np.arange(24) % 12)
    one_line(cli("train", "cvae", "--dataset", tmp_path / "many.npz", "--out", tmp_path / "run", *FAST), "model.classes=12")
    assert not (tmp_path / "run").exists()
    proc = cli("train", "cvae", "--dataset", tmp_path / "many.npz", "--set", "model.classes=12", "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr


def test_a_mistyped_name_is_still_refused_as_a_name(cli, tmp_path):
    one_line(cli("train", "vae", "--dataset", "mnsit", "--out", tmp_path / "run", *FAST), "data.dataset", "a path to your images")
    assert not (tmp_path / "run").exists()


def test_the_page_on_your_data_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs" / "your-data.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    exec(compile(blocks[0], "docs/your-data.md", "exec"), namespace)
    assert namespace["train_set"].classes == ("circles", "squares") and len(namespace["test"]) == 4
    assert (tmp_path / "runs" / "my-vae" / "model.safetensors").is_file()
