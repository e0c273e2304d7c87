"""Typed configs: presets, checked overrides, validation naming the option."""

from __future__ import annotations

import pytest

from vaelab.training.config import RunConfig, list_presets, load_json, load_preset, parse_override, save_json, set_key, validate
from vaelab.errors import ConfigError


def test_vae_preset_matches_reference_defaults():
    cfg = load_preset("vae")
    assert (cfg.model.z_dim, cfg.model.hidden, cfg.model.activation) == (10, (300, 300), "elu")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr, cfg.train.seed) == (20000, 100, 1e-3, 0)
    assert (cfg.objective.kind, cfg.objective.beta, cfg.objective.k) == ("elbo", 1.0, 1)
    assert "vae" in list_presets()


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_is_valid_and_builds(name):
    from vaelab.models import build_model, model_class

    cfg = load_preset(name)
    if model_class(cfg.model.name).spec.starts_from is not None:  # a second stage: --from RUN gives its source
        with pytest.raises(ConfigError, match="model.source_run: .* give --from RUN"):
            validate(cfg)
        cfg.model.source_run = "stage-one"
    validate(cfg)
    assert cfg.train.label == name

    assert sum(p.numel() for p in build_model(cfg.model).parameters()) > 0


def test_set_key_converts_types():
    cfg = RunConfig()
    set_key(cfg, "train.steps", "500")
    set_key(cfg, "objective.beta", "4")
    set_key(cfg, "model.hidden", "512,256")
    set_key(cfg, "data.download", "false")
    set_key(cfg, "data.data_dir", "none")
    assert cfg.train.steps == 500 and cfg.objective.beta == 4.0 and cfg.model.hidden == (512, 256)
    assert cfg.data.download is False and cfg.data.data_dir is None


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("train.stepz", "5", "unknown setting 'train.stepz'"),
        ("nope.steps", "5", "unknown setting"),
        ("train", "5", "is a section"),
        ("train.steps", "many", "train.steps: cannot read 'many' as int"),
        ("train.steps", "2.5", "train.steps"),
        ("objective.beta", "x", "objective.beta"),
        ("model.hidden", "3,a", "model.hidden"),
        ("data.download", "maybe", "data.download"),
        ("train.steps", "1e400", "train.steps: cannot read"),  # an overflow, not a traceback
    ],
)
def test_bad_overrides_are_errors_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message):
        set_key(RunConfig(), key, value)


def test_parse_override_requires_equals():
    assert parse_override("train.steps = 5") == ("train.steps", "5")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.steps")


@pytest.mark.parametrize(
    "key, value",
    [("model.z_dim", "0"), ("train.steps", "-1"), ("train.batch_size", "0"), ("train.lr", "0"),
     ("objective.beta", "-0.5"), ("objective.k", "0"), ("objective.kind", "mse"), ("model.hidden", "300,0"),
     ("train.seed", str(2**64))],
)
def test_out_of_range_settings_are_refused_by_name(key, value):
    cfg = RunConfig()
    set_key(cfg, key, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(cfg)


def test_unknown_preset_and_bad_preset_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown model or preset 'vea'"):
        load_preset("vea")
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nstepz = 3\n")
    with pytest.raises(ConfigError, match=f"{bad}.*unknown setting 'train.stepz'"):
        load_preset(str(bad))
    broken = tmp_path / "broken.toml"
    broken.write_text("[train\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_preset(str(broken))


def test_json_roundtrip(tmp_path):
    cfg = load_preset("vae")
    set_key(cfg, "model.hidden", "64,32")
    save_json(cfg, tmp_path / "c.json")
    assert load_json(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("key, value", [("model.hidden", "1000000,1000000"), ("model.hidden", "1000000000"),
                                        ("model.z_dim", "100000000"), ("model.prior_components", "1000000000")])
def test_models_too_large_to_build_are_refused_before_anything_is_allocated(key, value):
    cfg = RunConfig()
    if key == "model.prior_components":
        set_key(cfg, "model.prior", "mog")
    set_key(cfg, key, value)
    with pytest.raises(ConfigError, match="parameters, over the limit"):
        validate(cfg)


@pytest.mark.parametrize("text", ["[1, 2]", "[" * 100_000 + "]" * 100_000, '{"model": [1]}', "3"])
def test_config_json_that_is_not_sections_of_settings_is_one_error(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config.json"):
        load_json(path)


@pytest.mark.parametrize("value, hidden", [("[32,32]", (32, 32)), ("[32, 32]", (32, 32)), ("(32, 32)", (32, 32)), ("32,32", (32, 32)),
                                           ("[64]", (64,)), ("64", (64,)), ("[]", ()), ("()", ())])
def test_a_list_setting_is_read_with_or_without_brackets(value, hidden):
    cfg = RunConfig()
    set_key(cfg, "model.hidden", value)
    assert cfg.model.hidden == hidden
    validate(cfg)


@pytest.mark.parametrize("value", ["[32", "32]", "(32, 32", "[32,a]"])
def test_a_malformed_list_setting_is_an_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"model\.hidden: "):
        set_key(RunConfig(), "model.hidden", value)


def test_lists_in_toml_and_json_are_read(tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('[model]\nname = "vae"\nhidden = [32, 16]\n')
    assert load_preset(str(preset)).model.hidden == (32, 16)
    path = tmp_path / "config.json"
    path.write_text('{"model": {"name": "vae", "hidden": [8, 4]}}')
    assert load_json(path).model.hidden == (8, 4)


@pytest.mark.parametrize("key, value, message", [
    ("train.lr", "inf", "must be a finite number"), ("train.lr", "nan", "must be a finite number"),
    ("train.lr", "11", "must be > 0 and <= 10"), ("objective.beta", "inf", "must be a finite number"),
    ("objective.free_bits", "inf", "must be a finite number"), ("model.decoder_variance", "1e-300", r"must be in \[1e-06, 1e\+06\]"),
    ("model.decoder_variance", "1e9", r"must be in \[1e-06, 1e\+06\]"), ("train.checkpoint_seconds", "inf", "must be a finite number"),
    ("train.max_loss_per_element", "nan", "must be a finite number"), ("train.grad_clip", "-inf", "must be a finite number"),
])
def test_infinite_nan_and_absurd_values_are_refused_by_name(key, value, message):
    cfg = RunConfig()
    set_key(cfg, key, value)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ": " + message):
        validate(cfg)


def test_every_float_setting_of_every_model_must_be_finite():
    """Walks the fields of every section and of each model's own Config: no float setting escapes the check."""
    import dataclasses

    from vaelab.models import MODELS

    checked = set()
    for name in MODELS:
        base = RunConfig()
        set_key(base, "model.name", name)
        for section in ("model", "objective", "data", "train"):
            for f in dataclasses.fields(getattr(base, section)):
                if not isinstance(getattr(getattr(base, section), f.name), float):
                    continue
                for bad in ("nan", "inf"):
                    cfg = RunConfig()
                    set_key(cfg, "model.name", name)
                    set_key(cfg, f"{section}.{f.name}", bad)
                    with pytest.raises(ConfigError, match=rf"^{section}\.{f.name}: must be a finite number \(got {bad}\)"):
                        validate(cfg)
                checked.add(f"{section}.{f.name}")
    assert {"train.lr", "objective.beta", "model.decoder_variance", "model.commitment_weight"} <= checked


def test_an_infinite_option_is_one_line_before_the_run_directory_exists(tiny_data, tmp_path, capsys):
    from vaelab.cli import main

    run = tmp_path / "run"
    assert main(["train", "vae", "--lr", "inf", "--steps", "5", "--data-dir", str(tiny_data), "--out", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaelab train: error: train.lr: must be a finite number (got inf)"] and not run.exists()
