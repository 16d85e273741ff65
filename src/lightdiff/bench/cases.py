"""What to measure: case groups and their items, and the grid the CLI expands into them. No torch here.

An *item* is one measurement (a speed case at a size and batch, the batch test, an OOM boundary
search, a workflow case); it becomes one row. A *group* is the items that share one subprocess:
one model, one variant, one memory budget, one weight source. Models, variants and budgets are never
mixed in a process, so one group's memory state or crash cannot touch another; inside a group the
items run in order, and the first one carries the cold-start figures. ``isolate=True`` gives every
item its own process (every row then has its own cold start).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from lightdiff import specs
from lightdiff.errors import InvalidRequest
from lightdiff.runtime.fastpath import check_step_cache

ITEM_KINDS = ("speed", "batch", "boundary", "workflow")
VARIANTS = ("lightdiff", "baseline")
# Weight modes the benchmark adds to the loader's own (auto, hub, hub:org/name, a folder, a file):
#   synthetic-disk  real-size random weights written once as safetensors under home()/synthetic/<model>/,
#                   then loaded from disk like a downloaded model (load time and GB/s are measured);
#   synthetic       real-size random weights built straight on the device (no disk read to time);
#   twin-disk/twin  the same two for the tiny twin (CPU tests).
DISK_MODES = {"synthetic-disk": "synthetic", "twin-disk": "twin"}
BUILT_MODES = ("synthetic", "twin")

# The article's first scenario: a realistic prompt length (text encoder FLOPs depend on it).
DEFAULT_PROMPT = "a realistic portrait of an Asian woman with long hair in natural light, clear skin detail"
# The batch test's "10 images of different subjects", one prompt per image.
BATCH_SUBJECTS = [
    "a realistic portrait of a woman with long hair in natural light",
    "a cyberpunk girl with a mechanical arm and a neon background",
    "a white ceramic coffee cup, minimalist product photography",
    "a snowy mountain lake at dusk, oil painting texture",
    "flowing metal, purple and gold interwoven, futuristic abstract art",
    "a red fox in a green forest, morning fog",
    "a lighthouse on a rocky coast at sunset",
    "a bowl of ramen with steam, close-up food photography",
    "an old library with tall wooden shelves and warm light",
    "a vintage car on an empty desert road",
]


@dataclass
class Item:
    kind: str  # speed | batch | boundary | workflow
    width: int
    height: int
    batch_size: int = 1
    workflow: str = "txt2img"
    images: int | None = None  # batch test: images requested
    inject: dict | None = None  # test-only failure injection, honoured only with LIGHTDIFF_BENCH_INJECT=1

    def label(self) -> str:
        what = self.workflow if self.kind == "workflow" else self.kind
        extra = f" {self.images}x{self.batch_size}" if self.kind == "batch" else f" b{self.batch_size}"
        return f"{what} {self.width}x{self.height}{extra}"


@dataclass
class Group:
    model: str
    variant: str  # lightdiff | baseline
    weights: str
    items: list[Item]
    device: str = "auto"
    vram_budget_gb: float | None = None
    steps: int = 20
    guidance: float | None = None  # None: the model's default (CFG 7 for sd15, true CFG 4 for Qwen)
    runs: int = 3
    prompt: str = DEFAULT_PROMPT
    plan: str | None = None  # None: the planner chooses (resident without one); baseline ignores it
    seed: int = 1234
    boundary_max_batch: int = 64
    boundary_steps: int = 2
    disk_read_gbps: float | None = None  # measured once by the parent
    inject: dict | None = None  # test-only, process level (e.g. {"sleep_s": 30} before the imports)
    fast: str = "off"  # lightdiff's speed path (engine.attach_fast_path): off, eager or auto; baseline ignores it
    # fbc | taylorseer (runtime/fastpath.step_cache): changes the output; baseline ignores it
    step_cache: str | None = None

    def label(self) -> str:
        budget = f"{self.vram_budget_gb:g}GB" if self.vram_budget_gb else "whole card"
        return f"{self.model} {self.variant} ({budget}, {self.weights})"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Group":
        data = json.loads(text)
        data["items"] = [Item(**i) for i in data["items"]]
        return cls(**data)

    def with_items(self, items: list[Item]) -> "Group":
        return dataclasses.replace(self, items=list(items))


@dataclass
class Grid:
    """What the CLI asked for, before expansion."""

    models: list[str]
    sizes: list[int] = field(default_factory=lambda: [512])
    steps: int = 20
    batches: list[int] = field(default_factory=lambda: [1])
    budgets: list[float | None] = field(default_factory=lambda: [None])
    weights: str = "synthetic-disk"
    device: str = "auto"
    runs: int = 3
    baseline: bool = False
    batch_test: tuple[int, int] | None = None  # (images, batch size)
    boundary: bool = False
    workflows: list[str] = field(default_factory=list)
    full_batch_grid: bool = False
    isolate: bool = False
    plan: str | None = None
    guidance: float | None = None
    prompt: str = DEFAULT_PROMPT
    fast: str = "off"
    step_cache: str | None = None


def parse_batch_test(text: str) -> tuple[int, int]:
    """'10x2' -> (10 images, batch 2)."""
    try:
        n, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InvalidRequest("batch_test", f"--batch-test {text!r} is not IMAGESxBATCH.",
                             "Write it like 10x2 (10 images at batch size 2).") from None
    if n < 1 or b < 1:
        raise InvalidRequest("batch_test", f"--batch-test {text!r} needs positive numbers.", "Use e.g. 10x2.")
    return n, b


def parse_budgets(text: str | None) -> list[float | None]:
    """'24' -> [24.0]; 'none,24' -> [None, 24.0] (none = the whole card)."""
    if not text:
        return [None]
    out: list[float | None] = []
    for part in text.split(","):
        part = part.strip().lower()
        if part in ("none", "full", "0", ""):
            out.append(None)
            continue
        try:
            value = float(part)
        except ValueError:
            raise InvalidRequest("vram_budget", f"--vram-budget {part!r} is not a number of GB.",
                                 "Use e.g. 24, or none,24 for the whole card and a 24 GB budget.") from None
        if value <= 0:
            raise InvalidRequest("vram_budget", f"--vram-budget {part!r} is not positive.", "Use e.g. 24.")
        out.append(value)
    return out


def _check_sizes(spec, sizes: list[int]) -> None:
    rules = spec.rules
    for s in sizes:
        if s % rules.size_multiple or not rules.min_size <= s <= rules.max_size:
            raise InvalidRequest("sizes", f"Size {s} does not suit {spec.id} ({spec.family} needs multiples of "
                                          f"{rules.size_multiple} in {rules.min_size}..{rules.max_size}).",
                                 f"Use sizes such as {rules.size_multiple * (512 // rules.size_multiple)}.")


def speed_items(sizes: list[int], batches: list[int], full_grid: bool) -> list[Item]:
    """Every size at batch 1, and the batch sizes at the first size (or at every size with full_grid).

    Sorted small to large, so the first item (the one with the cold start) is the cheapest case."""
    pairs = {(s, 1) for s in sizes}
    for b in batches:
        for s in (sizes if full_grid else sizes[:1]):
            pairs.add((s, b))
    return [Item("speed", s, s, b) for s, b in sorted(pairs, key=lambda p: (p[0] * p[0], p[1]))]


def build_groups(grid: Grid) -> list[Group]:
    """Expand the grid. Per model: each budget, each variant; items of a group share its process.

    Groups of one model stay together so the synthetic weight cache and the FLOP table are built once
    and then reused; the boundary search runs last in its group, since it pushes memory to the limit."""
    if not grid.models:
        raise InvalidRequest("models", "No model given.", "Use e.g. --models sd15,qwen-image-2512.")
    if grid.steps < 1 or grid.runs < 1:
        raise InvalidRequest("runs", "--steps and --runs must be at least 1.", "Use e.g. --steps 20 --runs 3.")
    sizes = sorted(set(grid.sizes), key=grid.sizes.index)
    variants = ["lightdiff", "baseline"] if grid.baseline else ["lightdiff"]
    groups: list[Group] = []
    for model in grid.models:
        try:
            spec = specs.get(model)
        except Exception:  # an unknown model becomes error rows (the case process says why), not a crash here
            spec = None
        if spec is not None:
            _check_sizes(spec, sizes)
            check_step_cache(grid.step_cache, spec)
        base = sizes[0]
        items = speed_items(sizes, grid.batches, grid.full_batch_grid)
        if grid.batch_test:
            n, b = grid.batch_test
            items.append(Item("batch", base, base, b, images=n))
        for wf in grid.workflows:
            items.append(Item("workflow", base, base, 1, workflow=wf))
        if grid.boundary:
            items.append(Item("boundary", base, base, 1))
        for budget in grid.budgets:
            for variant in variants:
                # workflow rows compare against lightdiff's own txt2img; plain diffusers has no such chain
                mine = [it for it in items if variant == "lightdiff" or it.kind != "workflow"]
                group = Group(model=model, variant=variant, weights=grid.weights, items=mine,
                              device=grid.device, vram_budget_gb=budget, steps=grid.steps, guidance=grid.guidance,
                              runs=grid.runs, prompt=grid.prompt, plan=grid.plan if variant == "lightdiff" else None,
                              fast=grid.fast if variant == "lightdiff" else "off",
                              step_cache=grid.step_cache if variant == "lightdiff" else None)
                if grid.isolate:
                    groups.extend(group.with_items([it]) for it in mine)
                else:
                    groups.append(group.with_items(mine))
    return groups
