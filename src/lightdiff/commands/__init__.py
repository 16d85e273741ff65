"""CLI subcommands, one module each, discovered by name.

A command module defines NAME, HELP, add_arguments(parser) and run(args) -> int. Importing it must be
cheap (no torch): heavy imports go inside run(), so `lightdiff --help` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil


def command_modules():
    mods = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            mods.append(importlib.import_module(f"{__name__}.{info.name}"))
    return mods
