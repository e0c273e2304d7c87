"""Caches live in the cache folder, never in the data folder (which may be read-only); rendering dSprites says what it
does and stops cleanly on a signal; progress bars write a bounded log where stderr is not a terminal; files written
atomically get open()'s mode; the reproduce report and evaluation's progress count in words (1 thread, 2 threads)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
from pathlib import Path

import numpy as np
import pytest

from vaelab import data, progress
from vaelab.data import caches, dsprites
from vaelab.errors import TrainingInterrupted

TINY_TRAIN = ["--batch-size", "20", "--hidden", "8", "--z-dim", "2", "--device", "cpu"]


def listing(root: Path) -> dict:
    """Every path under root with its mode, size and modification time: anything written there changes it."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *root.rglob("*")]}


@pytest.fixture
def read_only_data(tmp_path):
    """A data root holding a file, made read-only (as root, where chmod stops no write, it stays writable: the
    listing before and after is the check)."""
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    (root / "mnist" / "README").write_text("shared\n")
    for path in (root / "mnist" / "README", root / "mnist", root):
        path.chmod(path.stat().st_mode & ~0o222)
    yield root
    for path in (root, root / "mnist"):
        path.chmod(path.stat().st_mode | 0o200)


def test_dsprites_is_cached_in_the_cache_folder_and_the_data_folder_is_left_alone(tiny_factors, read_only_data, tmp_path,
                                                                                     monkeypatch, capsys):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "my-cache"))
    before = listing(read_only_data)
    if os.geteuid() != 0:
        with pytest.raises(PermissionError):
            (read_only_data / "probe").write_text("")
    test = data.load("dsprites", "test", read_only_data)
    err = capsys.readouterr().err
    cache = tmp_path / "my-cache" / "dsprites" / dsprites.CACHE_NAME
    assert f"vaelab: rendering dSprites (128 images, once: a few minutes) into {cache}" in err
    assert f"vaelab: dSprites cached in {cache}" in err and len(err.splitlines()) == 2
    assert sorted(p.name for p in cache.parent.iterdir()) == [dsprites.CACHE_NAME, dsprites.CACHE_NAME + ".sha256"]
    assert listing(read_only_data) == before
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o666 & ~umask  # a shared cache stays readable
    # the second load reads the cache, for dSprites and colour dSprites and the metrics' factor data
    monkeypatch.setattr(dsprites, "generate", lambda: pytest.fail("rendered again instead of reading the cache"))
    again = data.load("dsprites", "test", read_only_data)
    assert np.array_equal(again.images.numpy(), test.images.numpy())
    data.load("color-dsprites", "train", read_only_data)
    assert data.factor_data("dsprites", read_only_data).packed.shape == (128, 512)
    assert capsys.readouterr().err == "" and listing(read_only_data) == before


def test_a_cache_left_in_the_data_folder_is_read_and_nothing_new_written(tiny_factors, tmp_path, monkeypatch):
    old = tmp_path / "data" / "dsprites"
    dsprites.cached(old)  # where earlier versions cached it
    monkeypatch.setattr(dsprites, "generate", lambda: pytest.fail("rendered again instead of reading the old cache"))
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "new-cache"))
    assert len(data.load("dsprites", "train", tmp_path / "data")) == 100
    assert not (tmp_path / "new-cache").exists()


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("VAELAB_CACHE")
    assert caches.cache_dir() == tmp_path / "home" / ".cache" / "vaelab"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert caches.cache_dir() == tmp_path / "xdg" / "vaelab" == dsprites.cache_folder().parent
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "mine"))
    assert caches.cache_dir() == tmp_path / "mine"


@pytest.mark.parametrize("when", ["rendering", "writing"])
def test_a_signal_stops_the_rendering_at_once_and_leaves_no_file(tiny_factors, tmp_path, monkeypatch, when):
    real = {name: getattr(dsprites, name) for name in ("generate", "file_digest")}
    # while rendering, or while writing: the images' temporary written, their checksum's being written
    monkeypatch.setattr(dsprites, "generate" if when == "rendering" else "file_digest",
                        lambda *path: os.kill(os.getpid(), signal.SIGTERM) or pytest.fail("not stopped"))
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted, match="SIGTERM while rendering dSprites into .*: nothing was cached") as stopped:
        data.load("dsprites", "test", tmp_path)
    assert stopped.value.exit_code == 143
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    folder = dsprites.cache_folder()
    assert not folder.exists() or list(folder.iterdir()) == []  # no half-written file, no temporary
    for name, value in real.items():
        monkeypatch.setattr(dsprites, name, value)
    assert len(data.load("dsprites", "test", tmp_path)) == 28  # the next load renders as if nothing had happened


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_rendering_shows_a_bar_on_a_terminal_only(monkeypatch, capsys):
    monkeypatch.setattr(dsprites, "IMAGES", 2048)
    monkeypatch.setattr(dsprites, "FACTOR_SIZES", (2, 2, 2, 16, 16))
    dsprites.generate()
    assert capsys.readouterr().err == ""  # not a terminal: the start and end lines of cached() say it all
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    dsprites.generate()
    assert "rendering dSprites" in terminal.getvalue() and "\r" in terminal.getvalue()


def test_a_bar_writes_a_bounded_number_of_whole_lines_where_stderr_is_not_a_terminal():
    out = io.StringIO()
    with progress.progress_bar(total=10_000, desc="work", file=out) as bar:
        for step in range(10_000):
            bar.update(1)
            bar.set_postfix({"loss": step})  # a new postfix waits for the next line
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and 21 <= len(lines) <= 22
    assert lines[0].startswith("work:   0%") and lines[-1].startswith("work: 100%") and "loss=9999" in lines[-1]
    # without a total: a line at most every LINE_SECONDS (on a clock that moves 10 ms a reading)
    out = io.StringIO()
    bar = progress.progress_bar(desc="open-ended", file=out)
    now = [bar.last_print_t]
    bar._time = lambda: now.__setitem__(0, now[0] + 0.01) or now[0]
    for _ in range(20_000):  # over 200 s: a line at the start, at most one each 30 s, one at the end
        bar.update(1)
    bar.close()
    assert 4 <= len(out.getvalue().splitlines()) <= 2 + 200 / progress.LINE_SECONDS
    with progress.progress_bar(total=3, file=Terminal()) as bar:
        assert type(bar) is progress.auto_tqdm  # on a terminal, tqdm's own bar


def test_a_training_log_stays_small_where_stderr_is_not_a_terminal(tiny_data, tmp_path, capsys):
    from vaelab.cli import main

    steps = 300
    assert main(["train", "vae", "--data-dir", str(tiny_data), "--steps", str(steps), "--log-every", "1", *TINY_TRAIN,
                 "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    bar = [line for line in err.splitlines() if line.startswith("train ")]
    assert "\r" not in err and 20 <= len(bar) <= 22 and len(err) < 6_000, err[-2_000:]
    assert f"{steps}/{steps}" in bar[-1] and "loss=" in bar[-1]


def test_files_written_atomically_get_the_mode_open_would(tiny_data, tmp_path, monkeypatch, capsys):
    from vaelab.cli import main
    from vaelab.training import files

    umask = os.umask(0o022)
    try:
        monkeypatch.setattr(files, "_FILE_MODE", 0o644)  # as read at import under this umask
        run = tmp_path / "run"
        assert main(["train", "vae", "--data-dir", str(tiny_data), "--steps", "20", "--checkpoint-every", "10", "--no-progress",
                     *TINY_TRAIN, "--out", str(run)]) == 0
        assert main(["eval", str(run), "--images", "20", "--iw", "1,2", "--device", "cpu"]) == 0
    finally:
        os.umask(umask)
    assert "IWAE-1 (1 repeat)" in capsys.readouterr().err  # counts in words: 1 repeat, 10 repeats
    written = {p.relative_to(run).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in run.rglob("*") if p.is_file()}
    for name in ("config.json", "model.safetensors", "eval-full-20.json"):
        assert written.pop(name) == 0o644, name
    checkpoints = [name for name in written if name.startswith("checkpoints/")]
    assert checkpoints and all(written[name] == 0o644 for name in checkpoints), written
    assert all(mode == 0o644 for mode in written.values()), written  # and every other file of the run


def test_the_reproduce_report_counts_threads_in_words(tmp_path):
    from vaelab.report import reproduce

    exp = reproduce.SUITES["cs236"][0]
    runs = []
    for threads in (1, 2):
        run = tmp_path / "runs" / f"threads-{threads}"
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"threads": threads, "steps": 10, "cpu": "test CPU"}))
        runs.append(run)
    reproduce.write_report("cs236", tmp_path / "out", [exp], {exp.name: runs})
    report = (tmp_path / "out" / "report.md").read_text()
    assert "test CPU, 1 thread)" in report and "test CPU, 2 threads)" in report and "1 threads" not in report
