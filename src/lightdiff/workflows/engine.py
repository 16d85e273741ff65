"""The engine: one way to turn a request into saved images, shared by the CLI, server and benchmark.

It picks the device, keeps loaded models in a pool, finds the workflow named by the request, runs
it, and saves images atomically with their metadata.
"""

from __future__ import annotations

from pathlib import Path

from lightdiff import outputs, specs, workflows
from lightdiff.runtime.device import cap_vram, pick_device
from lightdiff.runtime.pool import PipelinePool
from lightdiff.workflows.base import GenerationResult, parse, resolve


class Engine:
    def __init__(self, device: str | None = None, vram_budget_gb: float | None = None, max_loaded: int = 1,
                 allow_unsafe_pickle: bool | None = None):
        self.device = pick_device(device)
        self.vram_budget_gb = vram_budget_gb
        cap_vram(vram_budget_gb, self.device)
        self.pool = PipelinePool(self.device, max_loaded=max_loaded, allow_unsafe_pickle=allow_unsafe_pickle)

    def parse(self, request: dict):
        """Validate a request (a dict with an optional 'workflow' key) before anything runs."""
        name = (request.get("workflow") if isinstance(request, dict) else request.workflow) or "txt2img"
        wf = workflows.get(name)
        req = parse(wf.Request, request)
        spec = specs.get(req.model)
        resolve(req, spec)  # sizes, scheduler, guidance: fail before any weights are loaded
        if hasattr(wf, "validate"):
            wf.validate(req, spec)
        return wf, req

    def run(self, request: dict, progress=None, cancel=None) -> GenerationResult:
        wf, req = self.parse(request)
        loaded = self.pool.get(req.model, req.weights, progress=progress)
        return wf.run(loaded, req, progress=progress, cancel=cancel)

    @staticmethod
    def save(result: GenerationResult, out_dir: str | Path) -> list[str]:
        paths = []
        for i, (image, meta) in enumerate(zip(result.images, result.metadata)):
            path = outputs.output_path(out_dir, meta, meta.get("index", i))
            paths.append(str(outputs.save_png(image, path, meta)))
        result.paths = paths
        for name, image in result.extras.items():  # e.g. the ControlNet edge map, beside the first image
            if hasattr(image, "save") and paths:
                outputs.save_png(image, Path(paths[0]).with_suffix(f".{name}.png"), {"of": paths[0], "kind": name})
        return paths
