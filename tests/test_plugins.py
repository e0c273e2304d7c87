"""Models defined outside vaelab, through the `vaelab` command: a plugin file (--plugin), a module trained from Python,
an installed package's `vaelab.models` entry points; the run directory records its model's plugin, so later commands
need no --plugin. Plus the one-line errors around them: a missing plugin, an unknown key (did you mean ...)."""

from __future__ import annotations

import inspect
import json
import sys
import textwrap

import pytest
from test_models import ToyConfig, ToyLinearGaussian

from vaelab import training
from vaelab.cli import main
from vaelab.errors import RunDirError
from vaelab.models import MODELS, plugins
from vaelab.training.config import load_preset, run_label, set_key

# A model in a file of its own: the toy of tests/test_models.py (the model contract alone), and a register_model call.
PLUGIN = "\n".join([
    "from dataclasses import dataclass",
    "import torch",
    "from torch.distributions import Independent, Normal",
    "from vaelab.models import LatentGroup, Model, ModelConfig, ModelSpec, Terms, register_model",
    "", "", inspect.getsource(ToyConfig), "", inspect.getsource(ToyLinearGaussian)])

TINY = ["--z-dim", "2", "--steps", "20", "--batch-size", "20", "--log-every", "10", "--no-progress"]


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def _plugin(path, name):
    return _write(path, PLUGIN + f"\nregister_model({name!r}, ToyLinearGaussian)\n")


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """The registry and the plugin loader's memory (plugins imported, models' origins, entry points seen) as a new
    process has them; restored afterwards, with the plugin modules the test imported dropped."""
    saved, modules = dict(MODELS), set(sys.modules)
    for name in ("_LOADED", "_ORIGIN", "_ENTRY_POINTS_SEEN"):
        monkeypatch.setattr(plugins, name, type(getattr(plugins, name))())
    yield
    forget()
    MODELS.update(saved)


def forget():
    """What a new process knows: vaelab's own models only, no plugin imported."""
    for name in [name for name, cls in MODELS.items() if not cls.__module__.startswith("vaelab.")]:
        del MODELS[name]
    plugins._LOADED.clear()
    plugins._ENTRY_POINTS_SEEN.clear()
    for name in [name for name in sys.modules if name.startswith(("_vaelab_plugin_", "my_"))]:
        del sys.modules[name]


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_a_plugin_file_trains_evaluates_samples_plots_and_compares(tiny_data, tmp_path, capsys):
    plugin = _plugin(tmp_path / "elsewhere" / "toy_plugin.py", "toy-plugin")
    run, base = tmp_path / "run", ["--data-dir", str(tiny_data), "--device", "cpu"]
    use = ["--plugin", str(plugin)]
    assert main(["train", "vae", *use, "--set", "model.name=toy-plugin", "--set", "model.scale_init=0.5", "--out", str(run),
                 *TINY, *base]) == 0
    assert capsys.readouterr().out.startswith("trained toy-plugin for 20 steps")  # not the preset's name, vae
    config = json.loads((run / "config.json").read_text())
    assert config["plugins"] == [str(plugin.resolve())] and config["model"]["scale_init"] == 0.5
    eval_args = ["eval", str(run), "--images", "100", "--iw", "1,5", "--json", "--no-save", *base]
    assert main([*eval_args, *use]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["label"] == result["model"] == "toy-plugin" and result["z_dim"] == 2
    assert main(["sample", str(run), "--n", "10", *use, *base]) == 0
    assert main(["plot", str(run), "--kind", "latents", "--images", "200", *use, *base]) == 0
    assert (run / "samples.png").is_file() and (run / "latents.png").is_file()
    assert main(["compare", str(run), "--out", str(tmp_path / "compared"), *use]) == 0
    assert "| toy-plugin, scale_init 0.5, ELBO, z=2, mnist |" in (tmp_path / "compared" / "compare.md").read_text()

    # Another process: the run directory's config.json names the plugin file, which is never run on its word: one
    # line says which file to pass, and nothing of it ran.
    capsys.readouterr()
    forget()
    (run / "ran.txt").unlink(missing_ok=True)
    assert main(eval_args) == 1
    line = _one_line(capsys)
    assert line.startswith("vaelab eval: error:") and f"--plugin {plugin.resolve()}" in line
    assert "config.json" in line and "toy-plugin" in line and "toy_plugin" not in "".join(sys.modules)
    # The plugin moved: --plugin with its new place reads the run.
    forget()
    moved = plugin.rename(tmp_path / "moved.py")
    assert main([*eval_args, "--plugin", str(moved)]) == 0
    assert main(["sample", str(run), "--n", "10", "--no-recon", "--plugin", str(moved), *base]) == 0
    capsys.readouterr()
    forget()
    assert main(["compare", str(run), "--out", str(tmp_path / "again")]) == 0  # the table, and one warning
    assert f"--plugin {plugin.resolve()}" in _one_line(capsys)


def test_vaelab_plugins_and_a_toml_preset_name_the_plugin(tiny_data, tmp_path, monkeypatch, capsys):
    plugin = _plugin(tmp_path / "models" / "toy_plugin.py", "toy-env")
    preset = _write(tmp_path / "presets" / "toy.toml", """
        plugins = ["../models/toy_plugin.py"]

        [model]
        name = "toy-env"
        hidden = [8]
        """)
    base = ["--data-dir", str(tiny_data), "--device", "cpu", *TINY]
    assert main(["train", str(preset), "--out", str(tmp_path / "from-toml"), *base]) == 0
    assert json.loads((tmp_path / "from-toml" / "config.json").read_text())["plugins"] == [str(plugin.resolve())]
    assert capsys.readouterr().out.startswith("trained toy for")  # a preset of its own keeps its name
    forget()
    monkeypatch.setenv("VAELAB_PLUGINS", f"{tmp_path / 'nowhere.py'}")
    assert main(["train", "vae", "--set", "model.name=toy-env", "--out", str(tmp_path / "no"), *base]) == 1
    assert "VAELAB_PLUGINS: plugin file" in _one_line(capsys)
    monkeypatch.setenv("VAELAB_PLUGINS", f"{plugin}")
    assert main(["train", "vae", "--set", "model.name=toy-env", "--out", str(tmp_path / "from-env"), *base]) == 0


def test_a_model_from_an_installed_package(tiny_data, tmp_path, monkeypatch, capsys):
    """An installed package's entry points (group vaelab.models), found by importlib.metadata on sys.path: a module
    that registers on import, a Model subclass registered under the entry point's name, and a broken one."""
    site = tmp_path / "site-packages"
    _plugin(site / "my_vaelab_models" / "toy.py", "ep-toy")
    _write(site / "my_vaelab_models" / "__init__.py", "")
    _write(site / "my_vaelab_models" / "broken.py", "raise RuntimeError('half installed')\n")
    _write(site / "my_vaelab_models-0.1.dist-info" / "METADATA", "Metadata-Version: 2.1\nName: my-vaelab-models\nVersion: 0.1\n")
    _write(site / "my_vaelab_models-0.1.dist-info" / "entry_points.txt", """
        [vaelab.models]
        toys = my_vaelab_models.toy
        ep-class = my_vaelab_models.toy:ToyLinearGaussian
        broken = my_vaelab_models.broken
        """)
    monkeypatch.syspath_prepend(str(site))
    run, base = tmp_path / "run", ["--data-dir", str(tiny_data), "--device", "cpu"]
    assert main(["train", "vae", "--set", "model.name=ep-toy", "--out", str(run), *TINY, *base]) == 0
    warning = _one_line(capsys)  # the broken entry point, named, does not hide the others
    assert "entry point broken = my_vaelab_models.broken" in warning and "RuntimeError: half installed" in warning
    assert {"ep-toy", "ep-class"} <= set(MODELS)
    assert json.loads((run / "config.json").read_text())["plugins"] == ["my_vaelab_models.toy"]
    forget()
    assert main(["sample", str(run), "--n", "10", "--no-recon", *base]) == 0
    forget()
    assert main(["train", "vae", "--set", "model.name=ep-class", "--out", str(tmp_path / "class"), *TINY, *base]) == 0


def test_a_run_trained_from_python_is_read_by_the_command(tiny_data, tmp_path, monkeypatch):
    """A model registered by a module imported in Python: the run records the module, which `vaelab eval` imports."""
    _plugin(tmp_path / "lib" / "my_models.py", "py-toy")
    monkeypatch.syspath_prepend(str(tmp_path / "lib"))
    import my_models  # noqa: F401 (registers py-toy)

    cfg = load_preset("vae")
    set_key(cfg, "model.name", "py-toy")
    cfg.model.z_dim, cfg.train.steps, cfg.train.batch_size, cfg.data.data_dir = 2, 10, 20, str(tiny_data)
    training.train(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["plugins"] == ["my_models"]
    with pytest.raises(RunDirError, match=r"run directory .*run already exists and is not empty; choose a new one \(--out\)"):
        training.train(cfg, tmp_path / "run", progress=False)  # the Python argument, named in words
    forget()
    assert main(["sample", str(tmp_path / "run"), "--n", "10", "--no-recon", "--device", "cpu"]) == 0


@pytest.mark.parametrize("plugin, says", [
    ("missing.py", "--plugin: plugin file {tmp}/missing.py does not exist"),
    ("no_such_module_anywhere", "--plugin: no module named 'no_such_module_anywhere' (not installed, and not on sys.path / PYTHONPATH)"),
    ("raises.py", "--plugin: plugin {tmp}/raises.py failed: ValueError: no torch here"),
    ("bad-name", "--plugin: 'bad-name' is neither a module name nor a .py file"),
])
def test_a_plugin_that_cannot_be_imported_is_one_line(tmp_path, monkeypatch, capsys, plugin, says):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "raises.py", "raise ValueError('no torch\\nhere')\n")
    assert main(["eval", str(tmp_path / "run"), "--plugin", plugin]) == 1
    assert _one_line(capsys) == f"vaelab eval: error: {says.format(tmp=tmp_path.resolve())}"


def test_unknown_names_say_what_was_meant(tiny_data, tmp_path, capsys):
    base = ["--out", str(tmp_path / "run"), "--data-dir", str(tiny_data), *TINY]
    assert main(["train", "vae", "--set", "model.zdim=3", *base]) == 1
    line = _one_line(capsys)
    assert "unknown setting 'model.zdim'; did you mean model.z_dim" in line and len(line) < 160
    assert main(["train", "vae", "--set", "model.name=nope", *base]) == 1
    assert "unknown model 'nope' (choose from" in _one_line(capsys)
    # A setting of the preset that the chosen model lacks: said where it came from, not "set model.name first".
    _plugin(tmp_path / "toy_plugin.py", "toy-hint")
    assert main(["train", "gmvae", "--plugin", str(tmp_path / "toy_plugin.py"), "--set", "model.name=toy-hint", *base]) == 1
    line = _one_line(capsys)
    assert line.startswith("vaelab train: error: model.prior: not a setting of model 'toy-hint'") and "the preset gmvae sets it" in line
    assert "before model settings" not in line  # model.name is applied first: no order of the options changes this
    assert main(["train", "vae", "--set", "model.classes=5", *base]) == 1  # where a model.name would make it a setting
    assert "not a setting of model 'vae' but of cvae, ssvae (set model.name to one of them before model settings)" in _one_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_preset_of_another_model_does_not_name_the_run():
    cfg = load_preset("vae")
    set_key(cfg, "model.name", "cvae")
    assert (cfg.train.label, run_label(cfg)) == ("vae", "cvae")
    assert run_label(load_preset("gmvae")) == "gmvae"  # a preset of the same model, other settings: its name
    cfg.train.label = "my experiment"
    assert run_label(cfg) == "my experiment"
