"""Bad output paths, a run directory that cannot be written, odd inputs in place of files, too few disentanglement
points, and the Python API given counts out of range: each must be one error line naming the option, argument or
file (exit != 0, no traceback) with nothing already written changed, or, for a folder given as --out, the file
written inside it and named."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from harness import Probe, case, one_line_error, reference, snapshot

FULL = 1  # RLIMIT_FSIZE in bytes: every write of more than this fails (EFBIG), as on a full disk or a quota


def _copy(p: Probe, name: str) -> Path:
    run = p.fresh(name) / "run"
    shutil.copytree(reference(p), run)
    return run


def _with_blocker(p: Probe, name: str) -> tuple[Path, Path]:
    """A fresh folder holding one regular file, `file`, to give as (or above) an output path."""
    folder = p.fresh(name)
    (folder / "file").write_text("kept\n")
    return folder, folder / "file"


def _refused(p: Probe, folders, command, *needles, **run_kwargs) -> tuple[bool, str]:
    """One error line holding every needle, and no file under `folders` changed, added or removed."""
    before = [snapshot(f) for f in folders]
    done = p.run(*command, **run_kwargs)
    ok, detail = one_line_error(done)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    missing = [str(n) for n in needles if str(n) not in last]
    changed = [str(f) for f, b in zip(folders, before) if snapshot(f) != b]
    return ok and not missing and not changed, f"{detail}; missing from the line: {missing}; changed: {changed}"


def _api(p: Probe, body: str) -> tuple[bool, str]:
    """Run `body` (Python, with torch and a small model `model` at hand); it must raise a VaelabError of one line."""
    code = ("import torch\nfrom vaelab.errors import VaelabError\nfrom vaelab.models import build_model, model_config\n"
            "torch.manual_seed(0)\nmodel = build_model(model_config('vae', hidden=(8,), z_dim=2))\n"
            f"try:\n    {body}\n    print('NO ERROR')\n"
            "except VaelabError as exc:\n    print(type(exc).__name__, '|', isinstance(exc, ValueError), '|', exc)\n")
    done = subprocess.run([sys.executable, "-c", code], env=p.env, capture_output=True, text=True, timeout=300)
    return done.returncode == 0 and "Traceback" not in done.stderr and len(done.stdout.strip().splitlines()) == 1, \
        (done.stdout.strip() or done.stderr.strip()[-300:])


def _api_refuses(p: Probe, body: str, needle: str) -> tuple[bool, str]:
    ok, out = _api(p, body)
    return ok and out != "NO ERROR" and needle in out.split("|")[-1], out


# ---------------------------------------------------------------- an OSError no layer named: the command boundary
@case("one-line", "train PRESET.toml where the preset is a folder (an OSError that reaches the command boundary)")
def _(p):
    folder = p.fresh("preset-folder")
    (folder / "preset.toml").mkdir()
    return _refused(p, [folder], ["train", folder / "preset.toml", "--out", folder / "run"], folder / "preset.toml", "Is a directory")


# ---------------------------------------------------------------- a run directory that cannot be written
@case("one-line", "eval into a run directory on a full disk: the results are printed, then one line names the file")
def _(p):
    run = _copy(p, "eval-full-disk")
    before = snapshot(run)
    done = p.run("eval", run, "--iw", "1,10", file_size_limit=FULL)
    ok, detail = one_line_error(done, f"cannot write {run / 'eval-cs236.json'}")
    printed = "NELBO" in done.stdout and "-IWAE-10" in done.stdout
    return ok and printed and snapshot(run) == before, f"{detail}; results printed: {printed}; run unchanged: {snapshot(run) == before}"


@case("one-line", "eval --json into a run directory on a full disk: the JSON is printed, then one line")
def _(p):
    import json

    run = _copy(p, "eval-json-full-disk")
    done = p.run("eval", run, "--iw", "1", "--json", file_size_limit=FULL)
    ok, detail = one_line_error(done, "eval-cs236.json")
    try:
        printed = "nelbo" in json.loads(done.stdout)
    except ValueError:
        printed = False
    return ok and printed, f"{detail}; JSON printed: {printed}"


@case("one-line", "sample into a run directory on a full disk: one line, no partial or damaged file")
def _(p):
    run = _copy(p, "sample-full-disk")
    return _refused(p, [run], ["sample", run], f"cannot write {run / 'samples.png'}", file_size_limit=FULL)


@case("one-line", "plot into a run directory on a full disk: one line, no partial file")
def _(p):
    run = _copy(p, "plot-full-disk")
    return _refused(p, [run], ["plot", run, "--kind", "kl", "--images", "200"], f"cannot write {run / 'kl.png'}", file_size_limit=FULL)


@case("one-line", "eval, sample and plot on a read-only run directory (chmod 555; run as nobody when the probe is root)")
def _(p):
    folder = p.fresh("read-only")
    run = folder / "run"
    shutil.copytree(reference(p), run)
    (run / "eval-cs236.json").unlink(missing_ok=True)
    env = dict(p.env)
    prefix: list[str] = []
    if os.geteuid() == 0:  # root ignores permissions: the commands run as nobody, on a copy nobody owns
        if not shutil.which("setpriv"):
            return False, "running as root without setpriv: cannot make a folder read-only"
        mpl = folder / "mpl"
        shutil.copytree(Path.home() / ".cache" / "matplotlib", mpl, dirs_exist_ok=True)  # else the font cache is rebuilt, with a notice
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, 65534, 65534)
        env.update(HOME=str(folder), MPLCONFIGDIR=str(mpl))
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    os.chmod(run, 0o555)
    before = snapshot(run)
    results = []
    try:
        for command, needle in ((["eval", run, "--iw", "1"], f"cannot write {run / 'eval-cs236.json'}: Permission denied"),
                                (["sample", run], "Permission denied"), (["plot", run, "--kind", "curves"], "Permission denied")):
            code = f"import sys\nfrom vaelab.cli import main\nsys.exit(main({list(map(str, command))!r}))"
            done = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
            ok, detail = one_line_error(done, needle)
            if command[0] == "eval":
                ok = ok and "NELBO" in done.stdout
            results.append((ok and str(run) in detail, f"{command[0]}: {detail}"))
    finally:
        os.chmod(run, 0o755)
    same = snapshot(run) == before
    return all(ok for ok, _ in results) and same, "; ".join(d for _, d in results) + f"; run unchanged: {same}"


# ---------------------------------------------------------------- bad output paths
@case("one-line", "train --out FILE (an existing regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "train-out-file")
    return _refused(p, [folder], ["train", "vae", "--steps", "2", "--out", blocker], "--out", blocker, "is a file")


@case("one-line", "train --out FILE/sub/run (a path under a regular file): nothing created")
def _(p):
    folder, blocker = _with_blocker(p, "train-out-under-file")
    return _refused(p, [folder], ["train", "vae", "--steps", "2", "--out", blocker / "sub" / "run"], "--out", blocker)


@case("one-line", "sample --out FILE/sub.png (a path under a regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "sample-out-under-file")
    return _refused(p, [folder, reference(p)], ["sample", reference(p), "--no-recon", "--out", blocker / "s.png"], "--out", blocker)


@case("one-line", "sample --recon-out FILE/sub.png (a path under a regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "sample-recon-under-file")
    return _refused(p, [folder, reference(p)], ["sample", reference(p), "--out", folder / "s.png", "--recon-out", blocker / "r.png"],
                    "--recon-out", blocker)


@case("one-line", "sample --out RUN/config.json (not an image file name): the run's config is not overwritten")
def _(p):
    run = _copy(p, "sample-over-config")
    return _refused(p, [run], ["sample", run, "--no-recon", "--out", run / "config.json"], "--out", "not an image file name")


@case("one-line", "sample --out X.png --recon-out X.png (one file for both grids)")
def _(p):
    folder = p.fresh("sample-same-file")
    return _refused(p, [folder, reference(p)], ["sample", reference(p), "--out", folder / "x.png", "--recon-out", folder / "x.png"],
                    "--out and --recon-out")


@case("one-line", "sample --out DIR where DIR/samples.png is a folder")
def _(p):
    folder = p.fresh("sample-default-is-folder")
    (folder / "samples.png").mkdir()
    return _refused(p, [folder, reference(p)], ["sample", reference(p), "--no-recon", "--out", folder], "--out", "is a folder")


@case("one-line", "plot --out FILE/sub.png (a path under a regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "plot-out-under-file")
    return _refused(p, [folder, reference(p)], ["plot", reference(p), "--kind", "curves", "--out", blocker / "c.png"], "--out", blocker)


@case("one-line", "compare --out FILE (an existing regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "compare-out-file")
    return _refused(p, [folder, reference(p)], ["compare", reference(p), "--out", blocker], "--out", blocker, "is a file")


@case("one-line", "compare --out FILE/sub (a path under a regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "compare-out-under-file")
    return _refused(p, [folder, reference(p)], ["compare", reference(p), "--out", blocker / "sub"], "--out", blocker)


@case("one-line", "reproduce --out FILE (an existing regular file)")
def _(p):
    folder, blocker = _with_blocker(p, "reproduce-out-file")
    return _refused(p, [folder], ["reproduce", "cs236", "--quick", "--only", "vae", "--out", blocker], "--out", blocker)


# ---------------------------------------------------------------- too few disentanglement points
for _points in ("1", "0", "-3"):
    @case("one-line", f"eval --disentanglement --metric-points {_points}: one line stating the minimum")
    def _(p, points=_points):
        return _refused(p, [reference(p)], ["eval", reference(p), "--disentanglement", "--metric-points", points],
                        "--metric-points", "at least 10", f"got {points}")


# ---------------------------------------------------------------- the Python API
@case("one-line", "evaluate_images(model, no images)")
def _(p):
    return _api_refuses(p, "from vaelab.evaluation import evaluate_images; evaluate_images(model, torch.zeros(0, 28, 28))", "images")


@case("one-line", "evaluate_images(model, NaN pixels)")
def _(p):
    return _api_refuses(p, "from vaelab.evaluation import evaluate_images; evaluate_images(model, torch.full((4, 28, 28), float('nan')))",
                        "NaN")


for _iws in ("(0,)", "(10, -1)"):
    @case("one-line", f"evaluate_images(model, images, iws={_iws})")
    def _(p, iws=_iws):
        return _api_refuses(p, f"from vaelab.evaluation import evaluate_images; evaluate_images(model, torch.rand(4, 28, 28), iws={iws})",
                            "iws")


@case("one-line", "model.sample(-1)")
def _(p):
    return _api_refuses(p, "model.sample(-1)", "n (images to sample)")


@case("one-line", "model(batch, k=-1)")
def _(p):
    return _api_refuses(p, "model({'x': torch.zeros(2, 784)}, k=-1)", "k (draws per input)")


@case("messages", "model.sample(0) is an empty (0, 784) batch of images")
def _(p):
    ok, out = _api(p, "assert model.sample(0).shape == (0, 784)")
    return ok and out == "NO ERROR", out


# ---------------------------------------------------------------- a folder as --out
def _writes(p: Probe, command, expected: Path) -> tuple[bool, str]:
    done = p.run(*command)
    said = done.stdout.strip().splitlines()
    ok = done.returncode == 0 and said == [f"wrote {expected}"] and expected.is_file() and expected.stat().st_size > 100
    return ok, f"exit {done.returncode}; said {said}; {expected.name} written: {expected.is_file()}"


@case("messages", "plot --out DIR (an existing folder) writes DIR/<kind>.png and says so")
def _(p):
    folder = p.fresh("plot-out-folder")
    return _writes(p, ["plot", reference(p), "--kind", "curves", "--out", folder], folder / "curves.png")


@case("messages", "sample --out DIR (an existing folder) writes DIR/samples.png and says so")
def _(p):
    folder = p.fresh("sample-out-folder")
    return _writes(p, ["sample", reference(p), "--no-recon", "--out", folder], folder / "samples.png")


@case("messages", "sample --out NAME (no suffix) writes NAME.png and says so")
def _(p):
    folder = p.fresh("sample-out-no-suffix")
    return _writes(p, ["sample", reference(p), "--no-recon", "--out", folder / "grid"], folder / "grid.png")
