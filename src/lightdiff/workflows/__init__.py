"""Workflows: a typed request in, images and their metadata out.

One module per workflow; each defines NAME, ``Request`` (pydantic) and ``run(loaded, request,
progress=None, cancel=None) -> GenerationResult``. A new workflow is one file in this folder:
``get(name)`` finds it by NAME. Workflows never choose devices or memory plans (the engine does).
"""

from __future__ import annotations

import importlib
import pkgutil

from lightdiff.errors import InvalidRequest

_NOT_WORKFLOWS = {"base", "engine", "images", "templates"}


def names() -> list[str]:
    return [m.name for m in pkgutil.iter_modules(__path__)
            if not m.name.startswith("_") and m.name not in _NOT_WORKFLOWS]


def get(name: str):
    if name not in names():
        raise InvalidRequest("workflow", f"Unknown workflow {name!r}.", f"Use one of: {', '.join(names())}.")
    return importlib.import_module(f"{__name__}.{name}")
