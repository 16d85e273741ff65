"""Model registry as data. ``get(id)`` returns a spec; ``all_specs()`` lists them.

Built-in models register through the same path as a user's own entries (a models file).
"""

from lightdiff.specs.model_spec import FAMILIES, ComponentSpec, Defaults, FamilyRules, ModelSpec
from lightdiff.specs.registry import all_specs, get, known_ids, register, reload_user_models

__all__ = [
    "FAMILIES", "ComponentSpec", "Defaults", "FamilyRules", "ModelSpec",
    "all_specs", "get", "known_ids", "register", "reload_user_models",
]
