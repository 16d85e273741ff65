"""The pool of loaded pipelines: load once under a memory plan, reuse, evict the least recently used.

A modest card holds one big model at a time, so the default limit is one: asking for another
model frees the first (and its VRAM) before loading. Asking for a model under a different plan
loads it afresh: fp8 storage and offload hooks cannot be undone in place.
"""

from __future__ import annotations

import gc
import time
from collections import OrderedDict

from lightdiff import specs
from lightdiff.runtime import host_memory, loader
from lightdiff.runtime.loader import LoadedModel


class PipelinePool:
    def __init__(self, device: str, max_loaded: int = 1, allow_unsafe_pickle: bool | None = None):
        self.device = device
        self.max_loaded = max_loaded
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()
        # how weights are loaded: loader.load's signature (tools/validate_planner.py supplies a prebuilt model)
        self.load_fn = loader.load

    def get(self, model_id: str, weights: str = "auto", progress=None, plan=None) -> LoadedModel:
        """The model loaded under ``plan`` (runtime.plan.Plan; None: resident at the model's defaults)."""
        from lightdiff.runtime import plan as plans

        key = (model_id, weights)
        if plan is None:
            spec = specs.get(model_id)
            plan = plans.plan_for(plans.Strategy.RESIDENT, spec, spec.defaults.width, spec.defaults.height)
        if key in self._models:
            loaded = self._models[key]
            if loaded.plan_state is not None and plans.plan_key(loaded.plan_state.plan) == plans.plan_key(plan):
                self._models.move_to_end(key)
                return loaded
            self.evict(key)
        while len(self._models) >= self.max_loaded:
            self.evict(next(iter(self._models)))
        if progress:
            progress({"stage": "loading", "model": model_id, "plan": plan.name})
        loaded = self._load(model_id, weights, plan)
        self._models[key] = loaded
        return loaded

    def _load(self, model_id: str, weights: str, plan) -> LoadedModel:
        """Load where the plan needs the weights first (host RAM for all but resident), then apply it."""
        from lightdiff.runtime.device import default_dtype

        t0 = time.perf_counter()
        spec = specs.get(model_id)
        source = loader.resolve_source(spec, weights)
        load_device = "cpu" if plan.loads_on_host else self.device
        dtype = None  # the loader's choice for the device it loads onto
        if load_device != self.device and source.kind != "twin":
            dtype = default_dtype(spec.rules.compute_dtype, self.device)  # build in the target dtype
        loaded = self.load_fn(spec, weights, device=load_device, dtype=dtype,
                              allow_unsafe_pickle=self.allow_unsafe_pickle)
        try:
            plan.strategy.apply(loaded, self.device, plan=plan)
        except BaseException:
            del loaded
            free_memory(self.device)
            raise
        host_memory.release_freed()  # host copies freed while placing stay resident otherwise (host_memory.py)
        loaded.load_s = time.perf_counter() - t0
        return loaded

    def peek(self, model_id: str, weights: str = "auto") -> LoadedModel | None:
        return self._models.get((model_id, weights))

    def evict(self, key: tuple) -> None:
        self._models.pop(key, None)
        free_memory(self.device)

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def clear(self) -> None:
        for key in list(self._models):
            self.evict(key)


def free_memory(device: str) -> None:
    """Drop unreferenced tensors and hand cached CUDA blocks back (after an eviction or an OOM)."""
    gc.collect()
    host_memory.release_freed()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
