"""ModelSpec: a model described as data (no torch, no diffusers imports here).

A spec names the diffusers pipeline class per workflow, where the weights live, the real
architecture config of every component (so a real-size model can be built without a download),
and the defaults a user gets. Tiny twins are specs too, with tiny configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ComponentSpec:
    """One pipeline component.

    library: "diffusers" (a ModelMixin or scheduler built with from_config), "transformers"
    (model class plus config class) or "lightdiff" (the stand-in tokenizer).
    params_M: the parameter count in millions that a test checks against the built module.
    """

    library: str
    cls: str
    config: dict[str, Any]
    config_cls: str | None = None
    params_M: float | None = None

    @property
    def has_weights(self) -> bool:
        return self.params_M is not None


@dataclass(frozen=True)
class Defaults:
    steps: int
    guidance: float
    width: int
    height: int
    scheduler: str
    negative_prompt: str = ""
    max_prompt_tokens: int = 77


@dataclass(frozen=True)
class FamilyRules:
    """What a family accepts: size multiple, size range, schedulers and how guidance is applied."""

    name: str
    size_multiple: int
    min_size: int
    max_size: int
    schedulers: tuple[str, ...]
    guidance_kind: str  # "cfg" (classifier-free guidance) or "true_cfg" (two forwards, negative prompt)
    compute_dtype: str  # dtype the family runs in on a GPU


FAMILIES: dict[str, FamilyRules] = {
    "sd15": FamilyRules("sd15", 8, 64, 2048, ("euler", "euler_a", "dpm++2m", "ddim"), "cfg", "float16"),
    "qwen-image": FamilyRules("qwen-image", 16, 64, 2048, ("flow-euler",), "true_cfg", "bfloat16"),
}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    family: str
    description: str
    pipelines: dict[str, str]  # workflow name -> diffusers pipeline class
    components: dict[str, ComponentSpec]
    defaults: Defaults
    hub_repo: str | None = None
    source: str = "hub"  # default weight source: hub, twin, demo, or a path
    twin: str | None = None  # id of this spec's tiny twin
    is_twin: bool = False
    tags: tuple[str, ...] = field(default_factory=tuple)
    user_defined: bool = False

    @property
    def rules(self) -> FamilyRules:
        return FAMILIES[self.family]

    def params_M(self, component: str | None = None) -> float:
        if component:
            return self.components[component].params_M or 0.0
        return sum(c.params_M or 0.0 for c in self.components.values())

    def weight_components(self) -> list[str]:
        return [n for n, c in self.components.items() if c.has_weights]

    def with_changes(self, **kw) -> "ModelSpec":
        return replace(self, **kw)
