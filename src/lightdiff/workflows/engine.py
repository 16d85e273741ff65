"""The engine: one way to turn a request into saved images, shared by the CLI, server and benchmark.

It picks the device and the memory plan, keeps loaded models in a pool, finds the workflow named
by the request, runs it, and saves images atomically with their metadata.

Running out of GPU memory is an outcome it handles, not a crash: after a CUDA OOM in any stage it
frees memory and retries with the next cheaper step -- where the compiled blocks replay CUDA graphs,
first those graphs dropped (each image size records its own and keeps its pool), then the batch split
in halves, then VAE tiling/slicing, then the next cheaper memory plan (the model reloaded under it) -- a bounded
number of times. Every step taken is in each image's metadata ("fallbacks") and in the result's
warnings. When nothing is left it raises OutOfMemory saying what the request needs and what to
change; the engine stays usable for the next request. Decoded images are checked: NaN pixels
(caught at the VAE decode) or all-black images get one float32 VAE retry for sd15, then BadOutput.
"""

from __future__ import annotations

import dataclasses

import secrets
from collections import deque
from pathlib import Path

from lightdiff import outputs, specs, workflows
from lightdiff.errors import BadOutput, OutOfMemory
from lightdiff.runtime import plan as plans
from lightdiff.runtime.device import GiB, cap_vram, is_oom, pick_device
from lightdiff.runtime.fastpath import (STEP_CACHE_WARNING, check_step_cache, has_cuda_graph_blocks,
                                        reset_cuda_graphs, step_cache)
from lightdiff.runtime.pool import PipelinePool, free_memory
from lightdiff.workflows.base import GenerationResult, parse, resolve

# what loading (fp8 conversion) and the speed path record in a loaded model's plan_info: true of the loaded
# model for every request, so kept when the plan is re-estimated for one (with how its weights were pinned)
FAST_PATH_INFO = ("compiled", "cfg", "fp8", "attention")
LOAD_INFO = FAST_PATH_INFO + ("pinned",)


def memory_request(wf, req):
    """What the planner sizes a request's plan for: the workflow's largest pass (hires fix plans for
    its second pass) and the weights it adds on the GPU (a ControlNet), in millions of parameters."""
    r = resolve(req, specs.get(req.model))
    if hasattr(wf, "memory_size"):
        width, height = wf.memory_size(req, r.spec)
        r = dataclasses.replace(r, width=width, height=height)
    extra = wf.memory_extra_params_M(req, r.spec) if hasattr(wf, "memory_extra_params_M") else 0.0
    return r, extra


def attach_fast_path(loaded, fast: str, cuda_graph_blocks: bool = True, precompiled: bool = True) -> None:
    """Once per loaded model, the speed path that ``fast`` asks for (auto: on CUDA; eager: without compiling;
    off): SD1.5's graph-captured Euler loop (txt2img uses it when it applies), or a transformer's repeated
    blocks compiled (its weights stay where the plan put them; with ``precompiled``, Qwen-Image's from an artifact on
    disk; with ``cuda_graph_blocks`` they replay as CUDA graphs) and, where the plan streams its weights every step,
    its true CFG batched. The engine and the benchmark share it."""
    if hasattr(loaded, "fast_loop"):
        return
    loaded.fast_loop = None
    wanted = fast == "eager" or (fast == "auto" and str(loaded.device).startswith("cuda"))
    den = getattr(loaded.pipe, "transformer", None)
    if (fast == "auto" and wanted and getattr(den, "_repeated_blocks", None)
            and loaded.plan in ("resident", "fp8-compute")):  # weights that stay put: no offload hooks to trace
        from lightdiff.runtime.fastpath import (compile_blocks, persist_compile_cache, precompile_blocks,
                                                rewrite_attention)

        persist_compile_cache()
        attention = rewrite_attention(den)  # Qwen-Image: an attention processor Inductor compiles whole
        if attention:
            loaded.plan_info = {**loaded.plan_info, "attention": attention}
        # precompiled: Qwen-Image's blocks from one artifact on disk, so a later process skips Dynamo's tracing
        # (runtime/precompiled_blocks.py); regional torch.compile for other transformers and if that fails
        compile_fn = precompile_blocks if precompiled else compile_blocks
        loaded.plan_info = {**loaded.plan_info, "compiled": compile_fn(den, cuda_graphs=cuda_graph_blocks)}
    if (wanted and den is not None and loaded.spec.rules.guidance_kind == "true_cfg"
            and _streams_denoiser_each_step(loaded)):
        # true CFG's two forwards per step as one of batch 2 (runtime/cfg_batch.py), so the streamed
        # weights cross PCIe once per step, not twice. Only there: on an H200 (2026-11-27, qwen-image-2512
        # 1024) batching made resident runs slower (7.08 -> 8.00 s eager, 5.50 -> 6.44 s compiled; padded,
        # masked text) and fp8-group-offload under 24 GB faster (10.99 -> 10.06 s)
        from lightdiff.runtime import cfg_batch

        cfg_batch.enable(den)
        loaded.plan_info = {**loaded.plan_info, "cfg": "batched"}
    if wanted and loaded.spec.family == "sd15" and loaded.plan == "resident":
        from lightdiff.runtime.fastpath import SD15GraphLoop, persist_compile_cache

        if fast == "auto":
            persist_compile_cache()
        # precompiled: the compiled step and decoder kept on disk per shape, so a later process skips Dynamo's
        # tracing (runtime/precompiled.py); torch.compile's CUDA-graph loop serves where that cannot work
        loaded.fast_loop = SD15GraphLoop(loaded.pipe, compiled=fast == "auto", precompiled=precompiled)


def _streams_denoiser_each_step(loaded) -> bool:
    """Does the loaded plan move denoiser weights onto the device inside every step (blocks or layers
    streamed from host RAM)? A group offload whose layout keeps every block resident does not."""
    if loaded.plan == "sequential-offload":
        return True
    if loaded.plan not in ("group-offload", "fp8-group-offload"):
        return False
    plan = getattr(loaded.plan_state, "plan", None)
    layout = plan.options.get("layout") if plan is not None else None
    return not isinstance(layout, dict) or layout.get("streamed", 0) > 0


class Engine:
    def __init__(self, device: str | None = None, vram_budget_gb: float | None = None, max_loaded: int = 1,
                 allow_unsafe_pickle: bool | None = None, plan: str = "auto", ram_budget_gb: float | None = None,
                 max_retries: int = 8, fast: str = "auto", cuda_graph_blocks: bool = True, precompiled: bool = True,
                 ram_share: int = 1):
        self.device = pick_device(device)
        self.ram_share = max(1, ram_share)  # engines sharing the host (a server's workers): each plans for its part
        if plan != "auto":  # an unknown name, or one this device cannot run, fails before anything loads
            strategy = plans.Strategy.named(plan)
            if not plans.usable(strategy, self.device):
                from lightdiff.errors import InvalidRequest

                raise InvalidRequest("plan", f"Plan {plan!r} needs a CUDA device; this engine runs on {self.device}.",
                                     "Use --device cuda on a machine with a GPU, or another --plan.")
        self.plan = plan
        # the speed path (runtime/fastpath.py): "auto" uses it on CUDA: SD1.5's graph-captured Euler loop
        # where it reproduces the plain pipeline (Euler, CFG, resident plan), regional compilation of a
        # transformer's blocks (resident plan), true CFG in one batched forward (Qwen-Image, any plan), and
        # lets the planner pick fp8-compute; "off" never; "eager" runs SD1.5's loop uncompiled and batches
        # true CFG on any device (tests check both on the CPU)
        if fast not in ("auto", "off", "eager"):
            from lightdiff.errors import InvalidRequest

            raise InvalidRequest("fast", f"Unknown fast-path mode {fast!r}.", "Use auto, off or eager.")
        self.fast = fast
        # with fast="auto": a transformer's compiled blocks also replay as CUDA graphs. Measured through the
        # engine (tools/validate_planner.py, H100, 2026-11-27, qwen-image-2512 1024 fp8-compute under 24 GB,
        # median of 5): 4.32 s with, 4.74 s without, same peak (20.67 GB); a step-cached request runs them eager
        self.cuda_graph_blocks = cuda_graph_blocks
        # with fast="auto": SD1.5's loop and Qwen-Image's blocks from precompiled artifacts (attach_fast_path)
        self.precompiled = precompiled
        if fast == "auto" and str(self.device).startswith("cuda"):
            from lightdiff.runtime.fastpath import import_compiler_in_background

            import_compiler_in_background()  # compiled code runs after the first load: import it meanwhile
        self.vram_budget_gb = vram_budget_gb
        self.ram_budget_gb = ram_budget_gb
        self.max_retries = max_retries
        cap_vram(vram_budget_gb, self.device)  # a budget smaller than the card: the allocator enforces it
        self.pool = PipelinePool(self.device, max_loaded=max_loaded, allow_unsafe_pickle=allow_unsafe_pickle)
        self._free_vram_gb: float | None = None
        self._ram_gb: float | None = None

    # --- budget and card ---------------------------------------------------------------------

    def budget_gb(self) -> float | None:
        """The VRAM budget plans are chosen for: the one given, else (CUDA) what was free at first use."""
        if self.vram_budget_gb is not None or not self.device.startswith("cuda"):
            return self.vram_budget_gb
        if self._free_vram_gb is None:
            import torch

            idx = torch.device(self.device).index or 0
            free, _ = torch.cuda.mem_get_info(idx)
            self._free_vram_gb = (free + torch.cuda.memory_reserved(idx)) / GiB
        return self._free_vram_gb

    def ram_gb(self) -> float:
        """The host RAM plans are chosen for: the budget given, else this engine's share (``ram_share``) of what was
        available at first use plus what this process held then (as budget_gb counts the VRAM torch had reserved).
        Streamed weights are pinned, and torch rounds pinned blocks up to a power of two (plan_model.PINNED_ROUNDING):
        a plan that needs more than the host has is refused or paged, not left to run the host out of memory."""
        if self.ram_budget_gb is not None:
            return self.ram_budget_gb
        if self._ram_gb is None:
            import psutil

            available = psutil.virtual_memory().available / self.ram_share
            self._ram_gb = (available + psutil.Process().memory_info().rss) / GiB
        return self._ram_gb

    def card(self):
        if not self.device.startswith("cuda"):
            return None
        import torch

        from lightdiff.errors import InvalidRequest
        from lightdiff.specs.cards import find_card

        try:
            return find_card(torch.cuda.get_device_name(torch.device(self.device).index or 0))
        except InvalidRequest:
            return None  # an unlisted card: speeds are predicted for the reference card

    # --- requests ------------------------------------------------------------------------------

    def parse(self, request: dict):
        """Validate a request (a dict with an optional 'workflow' key) before anything runs."""
        name = (request.get("workflow") if isinstance(request, dict) else request.workflow) or "txt2img"
        wf = workflows.get(name)
        req = parse(wf.Request, request)
        spec = specs.get(req.model)
        resolve(req, spec)  # sizes, scheduler, guidance: fail before any weights are loaded
        check_step_cache(req.step_cache, spec)
        if hasattr(wf, "validate"):
            wf.validate(req, spec)
        return wf, req

    def plan_for(self, request: dict):
        """The plan a request would run under (DoesNotFit when none is predicted to fit), and warnings."""
        wf, req = self.parse(request)
        return self._plan(req, *memory_request(wf, req))

    def _runs_compiled_loop(self, req, r) -> bool:
        """Would this request run SD1.5's compiled graph loop (txt2img.run's test, on this engine's speed path)?
        The planner then prices a resident plan as that loop runs."""
        from lightdiff.runtime.fastpath import runs_graph_loop

        return runs_graph_loop(self.fast, self.device, req.workflow, r.spec.family, r.scheduler, r.guidance)

    def _plan(self, req, r, extra_params_M: float = 0.0):
        spec = r.spec
        loop = self._runs_compiled_loop(req, r)
        kw = dict(vram_gb=self.budget_gb(), ram_gb=self.ram_gb(), card=self.card(), steps=r.steps,
                  extra_params_M=extra_params_M, compiled_loop=loop)
        loaded = self.pool.peek(req.model, req.weights)
        state = getattr(loaded, "plan_state", None)
        again = None
        if state is not None and not state.plan.options.get("fallback"):
            again = state.plan.at(r.width, r.height, r.batch_size, r.steps, extra_params_M, loop)
        if self.plan != "auto":
            asked = plans.plan_for(plans.Strategy.named(self.plan), spec, r.width, r.height, r.batch_size, **kw)
            if again is not None and again.name == asked.name and (again.estimate.fits or not asked.estimate.fits):
                asked = again  # the loaded placement of the asked plan: no reload
            if asked.estimate.fits:
                return asked, []
            return asked, [f"Plan {asked.name} is predicted not to fit ({asked.estimate.reason}); trying it, "
                           f"with the out-of-memory fallbacks."]
        if again is not None and again.estimate.fits:
            return again, []  # the loaded placement serves this request too: no reload
        chosen = plans.choose(spec, r.width, r.height, r.batch_size, kw["vram_gb"], kw["ram_gb"], kw["card"], r.steps,
                              device=self.device, exclude=self._not_automatic(), extra_params_M=extra_params_M,
                              compiled_loop=loop)
        return chosen, []

    def run(self, request: dict, progress=None, cancel=None) -> GenerationResult:
        wf, req = self.parse(request)
        if req.seed is None:  # fixed now, so a batch split after an OOM reproduces the same images
            req = req.model_copy(update={"seed": secrets.randbelow(2**32)})
        r = resolve(req, specs.get(req.model))
        plan, warnings = self._plan(req, *memory_request(wf, req))
        if req.step_cache:
            warnings = [*warnings, STEP_CACHE_WARNING.format(kind=req.step_cache)]
        return self._run_with_backoff(wf, req, r, plan, warnings, progress, cancel)

    def _not_automatic(self) -> tuple:
        return plans.excluded_for(self.fast)

    # --- the OOM back-off ----------------------------------------------------------------------

    def _run_with_backoff(self, wf, req, r, plan, warnings, progress, cancel) -> GenerationResult:
        chunks = deque([(0, req.batch_size)])  # (first image index, images) still to make
        done: list[tuple[int, GenerationResult]] = []
        fallbacks: list[str] = []
        tried: set = set()
        attempts, graphs_reset = 0, False
        tiled, tile_px = bool(plan.options.get("vae_tiling")), plan.options.get("vae_tile_px")
        while chunks:
            offset, n = chunks[0]
            stage, error = "load", None
            loaded = None
            try:
                loaded = self.pool.get(req.model, req.weights, progress=progress, plan=plan)
                state = loaded.plan_state
                if state.plan is not plan:  # the loaded placement, re-estimated for this request
                    kept = {k: v for k, v in loaded.plan_info.items() if k in LOAD_INFO}
                    state.plan, loaded.plan_info = plan, {**plan.info(), **kept}
                state.stage, state.events = "denoise", []
                if (tiled, tile_px) != (bool(getattr(loaded.pipe.vae, "use_tiling", False)),
                                        loaded.plan_info.get("vae_tile_px")):
                    from lightdiff.runtime.plan_apply import set_vae_tiling

                    set_vae_tiling(loaded, tiled, tile_px)  # as this request's plan says: its peak was predicted so
                sub = req.model_copy(update={"seed": (req.seed + offset) % 2**32, "batch_size": n})
                attach_fast_path(loaded, self.fast, self.cuda_graph_blocks, self.precompiled)
                with step_cache(loaded.pipe, req.step_cache):
                    result = wf.run(loaded, sub, progress=progress, cancel=cancel)
                fallbacks.extend(e for e in state.events if e not in fallbacks)
                if result.images and _all_black(result.images):
                    self._black_output(loaded, r, fallbacks)
                    attempts += 1
                    continue  # decode again with the float32 VAE
                done.append((offset, result))
                chunks.popleft()
                continue
            except Exception as e:  # only CUDA OOM is handled; anything else propagates unchanged
                if not is_oom(e):
                    raise
                stage = loaded.plan_state.stage if loaded is not None and loaded.plan_state else "load"
                error = str(e).strip().splitlines()[0][:240]
            # here the exception and its frames (and the tensors they held) are gone
            _release(loaded, self.device)
            attempts += 1
            if attempts > self.max_retries:
                raise self._out_of_memory(r, plan, stage, error, fallbacks)
            if not graphs_reset and has_cuda_graph_blocks(loaded):  # another size's graphs may hold the memory
                graphs_reset = True
                reset_cuda_graphs(getattr(loaded.pipe, "transformer", None))
                free_memory(self.device)
                fallbacks.append("cuda-graphs-reset")
            elif stage == "decode" and (not tiled or tile_px):  # whole images or half tiles: default tiles next
                tiled, tile_px = True, None
                fallbacks.append("vae-tiling")
            elif n > 1:
                half = n // 2
                chunks.popleft()
                chunks.extendleft([(offset + half, n - half), (offset, half)])
                fallbacks.append(f"split-batch {n}->{half}+{n - half}")
            elif not tiled or tile_px:
                tiled, tile_px = True, None
                fallbacks.append("vae-tiling")
            else:
                nxt = plans.cheaper(plan, tried, r.steps, device=self.device, exclude=self._not_automatic())
                if nxt is None:
                    raise self._out_of_memory(r, plan, stage, error, fallbacks)
                tried.add(plans.plan_key(plan))
                fallbacks.append(f"plan {plan.name}->{nxt.name}")
                plan = nxt.with_options(fallback=True, vae_tiling=True, vae_slicing=True)
                del loaded
                self.pool.evict((req.model, req.weights))  # free the old placement before the new one loads
        return _merge(done, req, warnings, fallbacks)

    def _black_output(self, loaded, r, fallbacks: list[str]) -> None:
        """All images black: for sd15 decode again with a float32 VAE once; otherwise BadOutput."""
        import torch

        state = loaded.plan_state
        if r.spec.family == "sd15" and not state.vae_fp32:
            state.vae_fp32 = True
            loaded.pipe.vae.to(torch.float32)
            fallbacks.append("vae-fp32")
            return
        raise BadOutput(
            f"{r.spec.id} produced all-black images at {r.width}x{r.height} (seed {r.seed}, plan {loaded.plan}"
            + (", VAE already in float32)." if state.vae_fp32 else ")."),
            "Try another seed or scheduler, or --plan resident; all-black output usually means NaN in fp16.")

    def _out_of_memory(self, r, plan, stage: str, error: str | None, fallbacks: list[str]) -> OutOfMemory:
        budget = self.budget_gb()
        need = plan.estimate.peak_vram_gb * 1.05 + 0.5
        size = f"{r.spec.id} at {r.width}x{r.height}" + (f", batch {r.batch_size}" if r.batch_size > 1 else "")
        budget_text = f"the budget is {budget:.1f} GB" if budget is not None else "no budget was set"
        return OutOfMemory(
            f"{size} ran out of GPU memory during {stage} with plan {plan.name} ({error}). "
            f"Tried: {', '.join(fallbacks) or 'nothing else was left'}. It needs about {need:.1f} GB "
            f"with plan {plan.name}; {budget_text}.",
            "Use --plan sequential-offload (least VRAM, slowest), a smaller size or batch, "
            "or a larger --vram-budget.",
            details={"model": r.spec.id, "width": r.width, "height": r.height, "batch": r.batch_size,
                     "plan": plan.name, "stage": stage, "fallbacks": fallbacks, "vram_budget_gb": budget})

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


def _release(loaded, device: str) -> None:
    """After an OOM: let accelerate's offload hooks put their models back, then free cached memory."""
    if loaded is not None and loaded.plan in ("model-offload", "sequential-offload"):
        loaded.pipe.maybe_free_model_hooks()
    free_memory(device)


def _all_black(images) -> bool:
    import numpy as np

    return all(int(np.asarray(image).max()) == 0 for image in images)


def _merge(done: list, req, warnings: list[str], fallbacks: list[str]) -> GenerationResult:
    """One result from the parts of a split batch, numbered as if made in one call."""
    done.sort(key=lambda part: part[0])
    out = GenerationResult(images=[], metadata=[], warnings=list(warnings))
    for offset, res in done:
        for i, meta in enumerate(res.metadata):
            meta["index"] = offset + i
            meta["batch_seed"] = req.seed
            own = meta.get("fallbacks", [])  # a workflow's own back-off (batch) comes first
            meta["fallbacks"] = own + [f for f in fallbacks if f not in own]
        out.images.extend(res.images)
        out.missing.extend(res.missing)
        out.metadata.extend(res.metadata)
        out.warnings.extend(w for w in res.warnings if w not in out.warnings)
        for k, v in res.timings.items():
            out.timings[k] = round(out.timings.get(k, 0.0) + v, 4)
        for k, v in res.extras.items():
            out.extras.setdefault(k, v)
    if fallbacks:
        out.warnings.append("Recovered from a memory or output problem with: " + ", ".join(fallbacks) + ".")
    return out
