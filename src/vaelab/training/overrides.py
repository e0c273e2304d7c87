"""Reading settings into a RunConfig: dotted keys (`--set train.steps=500`), nested dicts (presets,
config.json) and the conversion of each value to its field's type. Unknown keys, settings of another
model and values that do not convert are errors naming the key; ranges are checked by config.validate."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..models import MODELS, model_class

if TYPE_CHECKING:
    from .config import RunConfig


def _field_types(obj) -> dict:
    return typing.get_type_hints(type(obj))


def _coerce(value, tp, key: str):
    """Convert `value` (from TOML, JSON or a --set string) to the annotated type `tp`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        return _coerce(value, next(a for a in args if a is not type(None)), key)
    if origin is tuple:
        items = _list_items(value, key) if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, args[0], key) for v in items if v != "")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("1", "true", "yes", "on"):
                return True
            if str(value).lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(float(value)) if isinstance(value, str) and "e" in value.lower() else int(value)
        if tp is float:
            return float(value)
        if tp is str:
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    raise ConfigError(f"{key}: unsupported type {tp}")


def _list_items(text: str, key: str) -> list[str]:
    """The items of a list written on the command line: 32,32 or [32, 32] or (32, 32); [] is empty."""
    text = text.strip()
    if not text:  # `--set model.hidden=` is more likely a slip than a request for no layers
        raise ConfigError(f"{key}: empty value; write {key}=[] for an empty list")
    if text[0] + text[-1] in ("[]", "()"):
        text = text[1:-1].strip()
        if not text:
            return []
    elif text[0] in "[(" or text[-1] in ")]":
        raise ConfigError(f"{key}: unbalanced brackets in {text!r}; write a list as [32, 32] or 32,32")
    return [item.strip() for item in text.split(",")]


def set_key(cfg: RunConfig, key: str, value) -> None:
    """Set a dotted key such as `train.steps`, checking that it exists and converting its type.

    `model.name` switches the model section to that model's Config class, keeping the shared settings;
    a setting of another model (`model.prior` for a model without a prior) is refused by name."""
    parts = key.split(".")
    if parts == ["model", "name"]:
        _switch_model(cfg, _coerce(value, str, key))
        return
    obj = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(obj) or part not in {f.name for f in dataclasses.fields(obj)}:
            owners = sorted(name for name, m in MODELS.items() if part in _field_names(m.Config)) if parts[:1] == ["model"] else []
            if i == 1 and len(parts) == 2 and owners:  # the one case where the order of model.name and a setting matters
                raise ConfigError(f"{key}: not a setting of model {cfg.model.name!r} but of {', '.join(owners)} "
                                  f"(set model.name to one of them before model settings); "
                                  f"{cfg.model.name}'s settings: "
                                  f"{', '.join(sorted(_field_names(type(cfg.model)) - {'name', 'x_dim', 'image_shape'}))}")
            raise ConfigError(f"unknown setting {key!r}{_suggest(key, _all_keys(cfg))}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise ConfigError(f"{key!r} is a section; set one of its keys, e.g. {key}.{dataclasses.fields(getattr(obj, part))[0].name}")
            setattr(obj, part, _coerce(value, _field_types(obj)[part], key))
        else:
            obj = getattr(obj, part)


def _all_keys(obj, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(key: str, keys: list[str]) -> str:
    """'; did you mean ...?' with the keys nearest to `key`, else where the keys are listed."""
    name = key.rsplit(".", 1)[-1]
    same_name = [k for k in keys if k.rsplit(".", 1)[-1] == name]  # the right name in another section: train.beta
    close = [*same_name, *(k for k in difflib.get_close_matches(key, keys, n=3) if k not in same_name)][:3]
    if not close:  # the name alone, misspelt under a misspelt section
        leaves = {k.rsplit(".", 1)[-1]: k for k in keys}
        close = [leaves[leaf] for leaf in difflib.get_close_matches(name, list(leaves), n=3, cutoff=0.75)]
    if close:
        return f"; did you mean {' or '.join(close)}?"
    sections = sorted({k.split(".")[0] for k in keys if "." in k})
    return f" (a key is SECTION.NAME, SECTION one of {', '.join(sections)}: the fields documented in vaelab.training.config)"


def _field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _switch_model(cfg: RunConfig, name: str) -> None:
    """Make cfg.model the Config of model `name`, carrying over every setting both classes have; a
    setting the new model lacks may only be carried over at its default value."""
    new_cls = model_class(name).Config
    old = cfg.model
    if type(old) is new_cls:
        old.name = name
        return
    shared = _field_names(new_cls) & _field_names(type(old))
    defaults = type(old)()
    for f in dataclasses.fields(old):
        if f.name not in shared and getattr(old, f.name) != getattr(defaults, f.name):
            raise ConfigError(f"model.{f.name}: not a setting of model {name!r}, and it is {getattr(old, f.name)!r} here, "
                              f"not its default {getattr(defaults, f.name)!r}")
    cfg.model = new_cls(**{field: getattr(old, field) for field in shared if field != "name"}, name=name)


def apply_dict(cfg: RunConfig, d: dict, source: str) -> None:
    """Apply a nested dict (from a preset or config.json); unknown keys are errors naming `source`.
    model.name is applied first, since it decides which model settings exist."""
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: expected sections of settings, got {type(d).__name__}")
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: {section!r} must be a section of settings")
    items = [(section, key, value) for section, values in d.items() for key, value in values.items()]
    items.sort(key=lambda item: (item[0], item[1]) != ("model", "name"))
    for section, key, value in items:
        try:
            set_key(cfg, f"{section}.{key}", value)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.steps=500")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
