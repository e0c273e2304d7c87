"""Models defined outside vaelab: plugins, which register their models (register_model) when imported.

A plugin is named by a module (`my_models`, importable from sys.path) or a Python file (`path/to/my_models.py`):
`vaelab --plugin`, the VAELAB_PLUGINS environment variable, and a run directory's config.json (`plugins`) name
them. An installed package declares its models in the entry-point group `vaelab.models`; each entry point names
a module (registers on import), a function (registers when called) or a Model subclass (registered under the
entry point's name). Entry points are read lazily: when a model name is not registered (models.model_class).

Each plugin is imported once per process; which plugin registered each model is kept (plugin_of), so a run
directory records it and `vaelab eval` of the run imports it again.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

from ..errors import ConfigError, warn
from . import MODELS, Model, register_model

ENTRY_POINT_GROUP = "vaelab.models"

_LOADED: set[str] = set()  # plugins imported, by spec as given (a file by its absolute path)
_ORIGIN: dict[str, tuple[str, type]] = {}  # model name -> (the plugin that registered it: a module or an absolute file path, its class)
_ENTRY_POINTS_SEEN: set[tuple[str, str]] = set()  # (name, value) of entry points loaded or failed


class PluginError(ConfigError):
    """A plugin that cannot be imported: a missing file or module, or an error raised while it ran."""


def is_file_spec(spec: str) -> bool:
    """A plugin named by a file (ends in .py or holds a path separator), not by a module."""
    return spec.endswith(".py") or "/" in spec or os.sep in spec


def absolute(spec: str, base: Path | None = None) -> str:
    """A file plugin as an absolute path (relative ones against `base`, else the working folder); a module as it is."""
    if not is_file_spec(spec):
        return spec
    path = Path(spec).expanduser()
    return str(((base or Path.cwd()) / path).resolve() if not path.is_absolute() else path.resolve())


def split_specs(text: str) -> list[str]:
    """The plugins of an os.pathsep-separated list (VAELAB_PLUGINS), empty entries dropped."""
    return [part.strip() for part in text.split(os.pathsep) if part.strip()]


def load_plugins(specs, origin: str) -> None:
    """Import each plugin of `specs` once (see load_plugin)."""
    for spec in specs:
        load_plugin(spec, origin)


def load_recorded_plugins(specs, origin: str) -> None:
    """The plugins a run directory's config.json names: modules are imported (they are code installed in this
    environment); a .py file must have been given by the user (--plugin, VAELAB_PLUGINS) — a run directory copied
    from elsewhere could name any file, and reading a run never runs code it brought along."""
    for spec in specs:
        if is_file_spec(spec) and absolute(spec) not in _LOADED:
            raise PluginError(f"{origin}: the model is defined in the plugin file {spec}, which vaelab does not run on a run "
                              f"directory's word: pass --plugin {spec} (or add it to VAELAB_PLUGINS)")
        load_plugin(spec, origin)


def load_plugin(spec: str, origin: str) -> None:
    """Import the plugin `spec` (a module name or a .py file) unless it was imported already, noting which models
    it registered. Anything that goes wrong is one PluginError line starting with `origin` (where it was named)."""
    spec = absolute(spec)
    if spec in _LOADED:
        return
    before = dict(MODELS)
    if is_file_spec(spec):
        _import_file(Path(spec), origin)
    else:
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", spec):
            raise PluginError(f"{origin}: {spec!r} is neither a module name nor a .py file")
        _run(lambda: importlib.import_module(spec), spec, origin, module=spec)
    _LOADED.add(spec)
    _note_origin(before, spec)


def _import_file(path: Path, origin: str) -> None:
    if not path.is_file():
        raise PluginError(f"{origin}: plugin file {path} {'is not a file' if path.exists() else 'does not exist'}")
    # A module name of its own per file, kept in sys.modules while it runs (dataclasses look their module up there).
    stem = re.sub(r"\W", "_", path.stem)
    name = f"_vaelab_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        _run(lambda: module_spec.loader.exec_module(module), str(path), origin)
    except PluginError:
        del sys.modules[name]
        raise


def _run(action, spec: str, origin: str, module: str | None = None):
    """`action()`, with any exception it raises as one PluginError line naming the plugin."""
    try:
        return action()
    except ModuleNotFoundError as exc:
        if module is not None and exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise PluginError(f"{origin}: no module named {module!r} (not installed, and not on sys.path / PYTHONPATH)") from None
        raise PluginError(f"{origin}: plugin {spec} failed: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 (a plugin is anyone's code: whatever it raises is reported in one line)
        raise PluginError(f"{origin}: plugin {spec} failed: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _note_origin(before: dict, spec: str) -> None:
    for name, cls in MODELS.items():
        if before.get(name) is not cls:
            _ORIGIN[name] = (spec, cls)


def load_entry_points() -> None:
    """Load the `vaelab.models` entry points not loaded yet. One that fails is one warning line naming it, so
    that a broken package does not hide the models of the others."""
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in _ENTRY_POINTS_SEEN:
            continue
        _ENTRY_POINTS_SEEN.add((ep.name, ep.value))
        where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}" + (
            f", package {ep.dist.name})" if getattr(ep, "dist", None) is not None else ")")
        before = dict(MODELS)
        try:
            target = _run(ep.load, ep.value, where, module=ep.module)
            if isinstance(target, type) and issubclass(target, Model):
                register_model(ep.name, target)
            elif callable(target):
                _run(target, ep.value, where)
        except PluginError as exc:
            warn(str(exc))
            continue
        _note_origin(before, ep.module)


def available_models() -> list[str]:
    """Every model name: vaelab's own, those registered so far, and those of the installed entry points."""
    load_entry_points()
    return sorted(MODELS)


def plugin_of(name: str) -> str | None:
    """What to import to register model `name` again in another process: the plugin (module or file) that
    registered it, else the module its class is defined in; None for vaelab's own models and for classes
    defined in a script (__main__), which no import can find."""
    if name not in MODELS:
        return None
    spec, cls = _ORIGIN.get(name, (None, None))
    if cls is MODELS[name]:
        return spec
    module = MODELS[name].__module__
    if module in ("__main__", "vaelab") or module.startswith("vaelab."):
        return None
    return module
