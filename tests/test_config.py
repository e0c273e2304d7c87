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
