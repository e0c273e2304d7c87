"""config.json files written by earlier versions of vaelab, read in today's layout."""

from __future__ import annotations

import dataclasses

from ..models import MODELS

# Before per-model settings (issue 13) every model section held these keys, at these defaults when the
# model had no use for them, and M2's weights were objective settings.
_LEGACY_MODEL_DEFAULTS = {"classes": 10, "prior": "normal", "prior_components": 500, "posterior": "diagonal"}
_LEGACY_MOVED = {"gen_weight": 1.0, "class_weight": 100.0}


def migrate_legacy(data):
    """A config.json written before per-model settings, in today's layout: settings the model has no
    longer are dropped where they hold the old default (they carried no information), M2's weights
    move from objective to model; anything else is left for the checks to refuse."""
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("objective"), dict):
        return data
    model, objective = dict(data["model"]), dict(data["objective"])
    name = model.get("name", "vae")
    if name not in MODELS:
        return data
    fields = {f.name for f in dataclasses.fields(MODELS[name].Config)}
    for key, default in _LEGACY_MODEL_DEFAULTS.items():
        if key in model and key not in fields and model[key] == default:
            del model[key]
    for key, default in _LEGACY_MOVED.items():
        if key in objective:
            value = objective.pop(key)
            if key in fields:
                model.setdefault(key, value)
            elif value != default:
                objective[key] = value  # refused by the checks, naming it
    return {**data, "model": model, "objective": objective}
