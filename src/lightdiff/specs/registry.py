"""The registry: built-in entries and the user's own, loaded through one path.

A user entry (TOML or YAML) needs only id, family and source; it borrows the architecture
configs of its family's base model, so fit predictions and synthetic builds work for it too.

    [[model]]
    id = "dreamshaper-8"
    family = "sd15"
    source = "~/models/dreamshaper_8.safetensors"   # a hub id, a diffusers folder or a .safetensors file
"""

from __future__ import annotations

import difflib
import json
import tomllib
from pathlib import Path

from lightdiff import settings
from lightdiff.errors import InvalidRequest, UnknownModel
from lightdiff.specs.builtin import BUILTIN
from lightdiff.specs.model_spec import FAMILIES, Defaults, ModelSpec

_REGISTRY: dict[str, ModelSpec] = {}
_FAMILY_BASE = {"sd15": "sd15", "qwen-image": "qwen-image"}
_loaded_user = False


def register(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    if spec.id in _REGISTRY and not replace:
        raise InvalidRequest("id", f"model id {spec.id!r} is already registered.",
                             "Choose another id for your entry.")
    if spec.family not in FAMILIES:
        raise InvalidRequest("family", f"model {spec.id!r} has unknown family {spec.family!r}.",
                             f"Use one of: {', '.join(sorted(FAMILIES))}.")
    _REGISTRY[spec.id] = spec
    return spec


def spec_from_entry(entry: dict, origin: str = "models file") -> ModelSpec:
    """Turn a user's {id, family, source, ...} entry into a spec based on its family's base model."""
    missing = [k for k in ("id", "family", "source") if not entry.get(k)]
    if missing:
        raise InvalidRequest(missing[0], f"{origin}: entry {entry!r} lacks {', '.join(missing)}.",
                             "Each [[model]] entry needs id, family and source.")
    family = entry["family"]
    if family not in _FAMILY_BASE:
        raise InvalidRequest("family", f"{origin}: model {entry['id']!r} has unknown family {family!r}.",
                             f"Use one of: {', '.join(sorted(_FAMILY_BASE))}.")
    base = _REGISTRY[_FAMILY_BASE[family]]
    source = str(entry["source"])
    looks_local = source.startswith(("/", "~", ".")) or source.endswith(".safetensors")
    defaults = base.defaults
    overrides = {k: entry[k] for k in ("steps", "guidance", "width", "height", "scheduler", "negative_prompt")
                 if k in entry}
    if overrides:
        defaults = Defaults(**{**defaults.__dict__, **overrides})
    return base.with_changes(
        id=str(entry["id"]),
        description=str(entry.get("description", f"user model ({family}) from {source}")),
        hub_repo=None if looks_local else source,
        source=source if looks_local else "hub",
        defaults=defaults,
        user_defined=True,
    )


def _read_models_file(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".toml":
        data = tomllib.loads(text)
    elif path.suffix in (".yaml", ".yml"):
        import yaml  # only when a YAML file is used

        data = yaml.safe_load(text) or {}
    elif path.suffix == ".json":
        data = json.loads(text)
    else:
        raise InvalidRequest("models_file", f"models file {path} has an unknown extension.",
                             "Use .toml, .yaml or .yml.")
    entries = data.get("model", data.get("models", [])) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise InvalidRequest("models_file", f"models file {path}: expected a list of [[model]] entries.",
                             "See the README section 'Your own models'.")
    return entries


def reload_user_models(extra_file: str | Path | None = None) -> list[ModelSpec]:
    """(Re)read the user's models files; return the specs they added."""
    global _loaded_user
    for mid in [m for m, s in _REGISTRY.items() if s.user_defined]:
        del _REGISTRY[mid]
    files = [settings.home() / "models.toml", settings.home() / "models.yaml"]
    if settings.get("models_file"):
        files.append(Path(settings.get("models_file")).expanduser())
    if extra_file:
        files.append(Path(extra_file).expanduser())
    added = []
    for path in files:
        if path.is_file():
            for entry in _read_models_file(path):
                added.append(register(spec_from_entry(entry, str(path))))
    _loaded_user = True
    return added


def _ensure_loaded() -> None:
    if not _REGISTRY:
        for spec in BUILTIN:
            register(spec)
    if not _loaded_user:
        reload_user_models()


def known_ids() -> list[str]:
    _ensure_loaded()
    return list(_REGISTRY)


def all_specs() -> list[ModelSpec]:
    _ensure_loaded()
    return list(_REGISTRY.values())


def get(model_id: str) -> ModelSpec:
    _ensure_loaded()
    try:
        return _REGISTRY[model_id]
    except KeyError:
        close = difflib.get_close_matches(model_id, list(_REGISTRY), n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise UnknownModel(
            f"Unknown model {model_id!r}. Known models: {', '.join(_REGISTRY)}.",
            hint + "Run `lightdiff models`, or add your own in ~/.lightdiff/models.toml.",
            details={"model": model_id, "known": list(_REGISTRY)},
        ) from None
