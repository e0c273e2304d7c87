"""CelebA on a tiny synthetic copy the tests write in its published layout (img_align_celeba/*.jpg of 178 x 218 and
list_eval_partition.txt): each split loaded by name, center-cropped to 148 x 148 and resized to 64 x 64, split as the
partition file says, read from the cache the second time, trained on from the CLI, and each missing or bad file
refused in one line naming it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vaelab import data
from vaelab.data import celeba, user
from vaelab.data.catalog import describe
from vaelab.errors import DataError

FAST = ["--set", "train.steps=3", "--set", "train.batch_size=2", "--set", "train.log_every=1", "--no-progress", "--device", "cpu"]
# (image number, split code): train 1, 2, 5; valid 3; test 4, 6
PARTITION = [(1, 0), (2, 0), (3, 1), (4, 2), (5, 0), (6, 2)]
SPLIT_OF = {"train": [1, 2, 5], "valid": [3], "test": [4, 6]}
BOX = (15, 35, 163, 183)  # the centre 148 x 148 of 178 x 218: (178 - 148) / 2 = 15 left, (218 - 148) / 2 = 35 top
RED = (230, 20, 20)


def centre_colour(number):
    return (40 * number, 250 - 30 * number, 60 + 25 * number)


def write_celeba(root, partition=PARTITION):
    """Image n is its own colour in the centre 148 x 148 and red around it, so a crop that took any border shows red."""
    folder = root / "celeba"
    (folder / celeba.IMAGES).mkdir(parents=True)
    for number, _ in PARTITION:
        pixels = np.empty((218, 178, 3), dtype=np.uint8)
        pixels[:] = RED
        pixels[BOX[1] : BOX[3], BOX[0] : BOX[2]] = centre_colour(number)
        Image.fromarray(pixels).save(folder / celeba.IMAGES / f"{number:06d}.jpg", quality=95, subsampling=0)
    (folder / celeba.PARTITION).write_text("".join(f"{n:06d}.jpg {code}\n" for n, code in partition))
    return folder


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def one_line(proc, *needles):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])


def test_each_split_is_the_partition_files_images_center_cropped_to_148_and_resized_to_64(tmp_path):
    folder = write_celeba(tmp_path)
    dataset = data.lookup("celeba")
    assert dataset.splits == ("train", "valid", "test") and dataset.image_shape == (3, 64, 64) and dataset.classes == ()
    for split, numbers in SPLIT_OF.items():
        images = data.load("celeba", split, tmp_path, download_missing=False)
        assert images.images.shape == (len(numbers), 3, 64, 64) and images.images.dtype == torch.uint8
        assert images.labels.dtype == torch.int64 and not images.labels.any() and images.classes == ()
        for i, number in enumerate(numbers):
            got = images.images[i].numpy().transpose(1, 2, 0)
            # exactly PyTorch-VAE's CenterCrop(148) then Resize(64) of the same decoded JPEG
            with Image.open(folder / celeba.IMAGES / f"{number:06d}.jpg") as im:
                expected = np.asarray(im.convert("RGB").crop(BOX).resize((64, 64), Image.Resampling.BILINEAR))
            assert np.array_equal(got, expected), (split, number)
            # only the centre: no red border on any edge (a square crop of the whole width would show it left and right)
            # (JPEG blurs the colours a pixel or two across the border, so nearer the centre's colour than red, not equal)
            colour, red = np.asarray(centre_colour(number), dtype=float), np.asarray(RED, dtype=float)
            for edge in (got[0], got[-1], got[:, 0], got[:, -1]):
                edge = edge.astype(float)
                assert (np.abs(edge - colour).sum(1) < np.abs(edge - red).sum(1)).all(), (split, number)
            assert np.abs(got[8:-8, 8:-8].astype(float) - colour).max() < 12, (split, number)


def test_the_second_load_reads_the_cache(tmp_path, monkeypatch):
    write_celeba(tmp_path)
    first = data.load("celeba", "train", tmp_path, download_missing=False)
    cached = list((tmp_path / "cache" / "vaelab" / user.CACHE_FOLDER).glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["images"] == [3, 3, 64, 64]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(user, "decode_folder", no_decoding)
    second = data.load("celeba", "train", tmp_path, download_missing=False)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # another split is its own cache entry
        data.load("celeba", "test", tmp_path, download_missing=False)


def test_celeba_trains_a_conv_vae_from_the_cli(cli, tmp_path):
    write_celeba(tmp_path)
    proc = cli("train", "vae", "--dataset", "celeba", "--data-dir", tmp_path, "--net", "conv", "--likelihood", "dlogistic",
               "--mixtures", "1", "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data"]["dataset"] == "celeba" and saved["model"]["image_shape"] == [3, 64, 64]


@pytest.mark.parametrize("remove", ["both", celeba.IMAGES, celeba.PARTITION])
def test_missing_files_are_one_line_saying_where_to_put_them(cli, tmp_path, remove):
    folder = tmp_path / "celeba"
    if remove == "both":
        tmp_path.joinpath("elsewhere").mkdir()
    else:
        write_celeba(tmp_path)
        target = folder / remove
        if target.is_dir():
            for f in target.iterdir():
                f.unlink()
            target.rmdir()
        else:
            target.unlink()
    with pytest.raises(DataError) as err:
        data.load("celeba", "train", tmp_path)
    message = str(err.value)
    assert "\n" not in message and str(folder) in message and celeba.SOURCE in message and "not downloaded" in message
    for name in ([celeba.IMAGES, celeba.PARTITION] if remove == "both" else [remove]):
        assert f"missing {name}" in message or f"and {name}" in message, message
    one_line(cli("train", "vae", "--dataset", "celeba", "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST), folder,
             celeba.SOURCE)
    assert not (tmp_path / "run").exists()


def test_a_partition_file_naming_an_absent_image_is_one_line(cli, tmp_path):
    folder = write_celeba(tmp_path, partition=[*PARTITION, (7, 0)])
    with pytest.raises(DataError, match="names 000007.jpg, which is not in") as err:
        data.load("celeba", "train", tmp_path)
    assert str(folder / celeba.PARTITION) in str(err.value) and "\n" not in str(err.value)
    one_line(cli("train", "vae", "--dataset", "celeba", "--data-dir", tmp_path, "--out", tmp_path / "run", *FAST),
             folder / celeba.PARTITION, "000007.jpg")


@pytest.mark.parametrize("line, message", [("000003.jpg 3", "line 3 is '000003.jpg 3'"), ("000003.jpg", "line 3 is"),
                                           ("000003.jpg 1 x", "line 3 is"), ("../000003.jpg 1", "line 3 is"),
                                           ("000001.jpg 1", "line 3 lists 000001.jpg a second time")])
def test_a_malformed_partition_line_is_one_line_naming_the_file(tmp_path, line, message):
    folder = write_celeba(tmp_path)
    lines = (folder / celeba.PARTITION).read_text().splitlines()
    lines[2] = line
    (folder / celeba.PARTITION).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message) as err:
        data.load("celeba", "test", tmp_path)
    assert str(folder / celeba.PARTITION) in str(err.value) and "\n" not in str(err.value)


def test_celeba_is_listed_with_its_files_and_whether_they_are_there(cli, tmp_path):
    entry = describe(data.lookup("celeba"), tmp_path)
    assert entry.present is False and entry.splits == ("train", "valid", "test") and entry.image_shape == (3, 64, 64)
    assert entry.downloaded is False
    listed = cli("data", "--data-dir", tmp_path).stdout
    assert f"missing {celeba.PARTITION}, {celeba.IMAGES} (not downloaded: put them there by hand" in listed, listed
    write_celeba(tmp_path)
    entry = describe(data.lookup("celeba"), tmp_path)
    assert entry.present is True and entry.folder == tmp_path / "celeba"
    assert entry.files == [tmp_path / "celeba" / celeba.PARTITION, tmp_path / "celeba" / celeba.IMAGES]
    with pytest.raises(DataError, match="unknown split 'extra'"):
        data.load("celeba", "extra", tmp_path)
