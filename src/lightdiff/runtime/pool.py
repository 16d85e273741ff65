"""The pool of loaded pipelines: load once, reuse, evict the least recently used beyond a limit.

A modest card holds one big model at a time, so the default limit is one: asking for another
model frees the first (and its VRAM) before loading.
"""

from __future__ import annotations

import gc
from collections import OrderedDict

from lightdiff.runtime import loader
from lightdiff.runtime.loader import LoadedModel


class PipelinePool:
    def __init__(self, device: str, max_loaded: int = 1, allow_unsafe_pickle: bool | None = None):
        self.device = device
        self.max_loaded = max_loaded
        self.allow_unsafe_pickle = allow_unsafe_pickle
        self._models: OrderedDict[tuple, LoadedModel] = OrderedDict()

    def get(self, model_id: str, weights: str = "auto", progress=None) -> LoadedModel:
        key = (model_id, weights)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        while len(self._models) >= self.max_loaded:
            self.evict(next(iter(self._models)))
        if progress:
            progress({"stage": "loading", "model": model_id})
        loaded = loader.load(model_id, weights, device=self.device, allow_unsafe_pickle=self.allow_unsafe_pickle)
        self._models[key] = loaded
        return loaded

    def evict(self, key: tuple) -> None:
        self._models.pop(key, None)
        gc.collect()
        if str(self.device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    def clear(self) -> None:
        for key in list(self._models):
            self.evict(key)
