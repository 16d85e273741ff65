"""The benchmark's view of the memory planner (lightdiff.runtime.plan), when this version has one.

Without runtime/plan.py the lightdiff variant runs the resident plan (everything on the device) and
rows carry "predicted": null. With it:
- the parent (torch-free) asks the planner for each lightdiff item's plan, for the budget (or the
  whole card) and this host's RAM; items are grouped by plan, so one process never mixes plans;
  an item no plan fits is refused as the engine would refuse it, and recorded as an "oom" row
  without running (reason: the planner's DoesNotFit message);
- the child applies the group's plan (sized for the group's largest item) when placing the weights,
  and each row carries the planner's prediction for its own item, beside the measurement;
- prediction rows cover cards that were not measured (RTX 4090D, RTX 3090, RTX A6000).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from dataclasses import dataclass, field

from lightdiff import specs
from lightdiff.errors import LightdiffError


def plan_module():
    if importlib.util.find_spec("lightdiff.runtime.plan") is None:
        return None
    return importlib.import_module("lightdiff.runtime.plan")


@dataclass(frozen=True)
class Hardware:
    """What the planner is told about this machine (from NVML and psutil, no torch)."""

    gpu: str | None = None
    vram_gb: float | None = None
    ram_gb: float | None = None

    @classmethod
    def detect(cls, device: str = "auto") -> "Hardware":
        import psutil

        from lightdiff.runtime.device import _nvml_gpus

        ram = psutil.virtual_memory().total / 2**30
        gpus = [] if str(device) == "cpu" else _nvml_gpus()
        if not gpus:
            return cls(None, None, ram)
        return cls(gpus[0]["name"], gpus[0]["total_gb"], ram)

    def card_name(self) -> str | None:
        from lightdiff.specs.cards import find_card

        if not self.gpu:
            return None
        try:
            return find_card(self.gpu).name
        except Exception:
            return None


def _vram_for(group, hw: Hardware) -> float | None:
    return group.vram_budget_gb if group.vram_budget_gb is not None else hw.vram_gb


def memory_of(spec, item) -> tuple[int, int, float]:
    """(width, height, extra_params_M) a plan must hold for ``item``: a workflow case plans as the engine
    does, for its largest pass (hires fix) and the weights it adds (a ControlNet)."""
    if item.kind != "workflow" or item.workflow == "txt2img":
        return item.width, item.height, 0.0
    from lightdiff import workflows
    from lightdiff.bench import workflow_requests
    from lightdiff.workflows.base import parse
    from lightdiff.workflows.engine import memory_request

    try:
        wf = workflows.get(item.workflow)
    except LightdiffError:  # not in this version: the case's own row says so
        return item.width, item.height, 0.0
    request = {"workflow": item.workflow, "model": spec.id, "prompt": "memory",
               **workflow_requests.request_for(item.workflow, spec, item)}
    r, extra = memory_request(wf, parse(wf.Request, request))
    return r.width, r.height, extra


def runs_compiled_loop(spec, item, group, gpu: bool) -> bool:
    """Does the engine run this item through SD1.5's compiled loop (as Engine._runs_compiled_loop decides)?"""
    from lightdiff.runtime.fastpath import runs_graph_loop

    guidance = getattr(group, "guidance", None)
    guidance = spec.defaults.guidance if guidance is None else guidance
    return runs_graph_loop(getattr(group, "fast", "off"), "cuda" if gpu else "cpu", item.workflow, spec.family,
                           spec.defaults.scheduler, guidance)


def plan_for_item(mod, spec, item, group, hw: Hardware, name: str | None = None):
    """The planner's Plan for one item: the named strategy, or the one it chooses (may raise DoesNotFit)."""
    width, height, extra = memory_of(spec, item)
    kw = dict(ram_gb=hw.ram_gb, card=hw.card_name(), steps=group.steps, extra_params_M=extra,
              compiled_loop=runs_compiled_loop(spec, item, group, bool(hw.gpu)))
    if name:
        return mod.plan_for(mod.Strategy.named(name), spec, width, height, item.batch_size,
                            _vram_for(group, hw), **kw)
    # as the engine chooses: only plans this device runs, and fp8 compute (priced compiled) only with --fast auto
    return mod.choose(spec, width, height, item.batch_size, _vram_for(group, hw), device="cuda" if hw.gpu else "cpu",
                      exclude=mod.excluded_for(getattr(group, "fast", "off")), **kw)


def predicted(plan) -> dict:
    e = plan.estimate.to_dict()
    return {"peak_vram_gb": e["peak_vram_gb"], "host_ram_gb": e["host_ram_gb"], "sec_per_image": e["sec_per_image"],
            "fits": e["fits"], "reason": e.get("reason"), "for_card": plan.card}


@dataclass
class Refusal:
    group: object
    item: object
    reason: str
    plan: str | None


def assign_plans(groups: list, hw: Hardware) -> tuple[list, list[Refusal]]:
    """Split lightdiff groups by the plan the planner picks for each item (baseline groups unchanged)."""
    mod = plan_module()
    out, refused = [], []
    for g in groups:
        if g.variant != "lightdiff" or mod is None:
            out.append(g)
            continue
        try:
            spec = specs.get(g.model)
        except Exception:
            out.append(g)  # unknown model: the case process writes its error rows
            continue
        # one process per plan: items keep their order within a plan (the first, smallest, carries the
        # cold start), and a plan that recurs later joins its earlier process rather than reloading
        runs: dict[str, list] = {}
        for item in g.items:
            try:
                name = plan_for_item(mod, spec, item, g, hw, g.plan).name
            except Exception as e:
                code = getattr(e, "code", "")
                if code != "does_not_fit":
                    raise
                details = getattr(e, "details", {}) or {}
                refused.append(Refusal(g, item, f"refused by the planner before running: {e}", details.get("plan")))
                continue
            runs.setdefault(name, []).append(item)
        for name, items in runs.items():
            out.append(dataclasses.replace(g, items=items, plan=name))
    return out, refused


# --- in the case process ---------------------------------------------------------------------------

@dataclass
class PlanChoice:
    name: str = "resident"
    info: dict = field(default_factory=dict)
    plan: object = None  # runtime.plan.Plan, when a planner exists
    _mod: object = None
    _spec: object = None
    _group: object = None
    _hw: Hardware | None = None

    @property
    def on_host_first(self) -> bool:
        """Load into host RAM first (all plans but resident, or a streamed text encoder)."""
        return self.plan is not None and self.plan.loads_on_host

    def predicted(self, item) -> dict | None:
        """The prediction for ``item`` under the placement this process applied (sized for the group's most
        demanding item), as the engine re-estimates a loaded plan: not the layout ``item`` alone would get."""
        if self._mod is None:
            return None
        try:
            width, height, extra = memory_of(self._spec, item)
            loop = runs_compiled_loop(self._spec, item, self._group, bool(self._hw and self._hw.gpu))
            return predicted(self.plan.at(width, height, item.batch_size, self._group.steps, extra, loop))
        except Exception as e:  # a prediction must never cost a measurement
            return {"error": f"{type(e).__name__}: {e}"}


def choose(group, spec, device: str, env: dict) -> PlanChoice:
    """The plan of a group in its process: the parent already chose its name (assign_plans)."""
    if group.variant != "lightdiff":
        return PlanChoice("resident", {"why": "baseline: plain diffusers, pipeline.to(device)"})
    mod = plan_module()
    if mod is None:
        return PlanChoice("resident", {"why": "no memory planner in this version (runtime/plan.py)"})
    hw = Hardware.detect(device)
    # size the plan (block layout, tiling) for the most demanding item, so every item of the group fits it
    def demand(item):
        width, height, extra = memory_of(spec, item)
        return width * height * item.batch_size, extra

    plan = plan_for_item(mod, spec, max(group.items, key=demand), group, hw, group.plan)
    return PlanChoice(plan.name, plan.info(), plan, mod, spec, group, hw)


def apply(loaded, choice: PlanChoice, device: str):
    """Place the weights as the plan says (the planner's own apply), or pipeline.to(device)."""
    if choice.plan is None:
        loaded.pipe.to(device)
        loaded.device = device
        return loaded
    choice.plan.strategy.apply(loaded, device, plan=choice.plan)
    return loaded


# --- predictions for cards not measured ----------------------------------------------------------------

def prediction_rows(grid, cards, env: dict) -> list[dict]:
    """Rows of kind "prediction": the planner's choice and estimate for each model, size and batch on
    each card. [] without a planner. Host RAM is left unlimited (the cards' hosts are unknown)."""
    from lightdiff.bench.rows import SCHEMA
    from lightdiff.specs.cards import find_card

    mod = plan_module()
    if mod is None:
        return []
    rows = []
    for model in grid.models:
        try:
            spec = specs.get(model)
        except Exception:
            continue
        if spec.is_twin:  # tiny twins run anywhere; a card prediction says nothing about them
            continue
        cases = sorted({(s, 1) for s in grid.sizes} | {(grid.sizes[0], b) for b in grid.batches})
        for card_name in cards:
            card = find_card(card_name)
            for size, batch in cases:
                row = {"schema": SCHEMA, "kind": "prediction", "status": "ok", "reason": None, "model": spec.id,
                       "family": spec.family, "variant": "lightdiff", "workflow": "txt2img", "width": size,
                       "height": size, "steps": grid.steps, "guidance": grid.guidance or spec.defaults.guidance,
                       "batch_size": batch, "fallbacks": [], "weights": None, "synthetic": False,
                       "vram_budget_gb": None, "env": env, "card": card.name, "vram_gb": card.vram_gb}
                try:
                    plan = mod.choose(spec, size, size, batch, card.vram_gb, None, card.name, grid.steps)
                    row.update(fits=True, plan=plan.name, predicted=predicted(plan), plan_info=plan.info())
                except Exception as e:
                    if getattr(e, "code", "") != "does_not_fit":
                        row.update(status="error", reason=f"{type(e).__name__}: {e}", fits=None, plan=None)
                    else:
                        least = (getattr(e, "details", {}) or {}).get("plan")
                        fallback = mod.plan_for(mod.Strategy.named(least), spec, size, size, batch, card.vram_gb,
                                                None, card.name, grid.steps) if least else None
                        row.update(fits=False, plan=least, reason=str(e),
                                   predicted=predicted(fallback) if fallback else None)
                rows.append(row)
    return rows
