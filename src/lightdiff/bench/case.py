"""One case group in a fresh process: ``python -m lightdiff.bench.case '<group json>'``.

The runner (runner.py) starts this with an events pipe (fd in LIGHTDIFF_BENCH_EVENTS_FD) and the
wall-clock time it spawned the process (LIGHTDIFF_BENCH_SPAWNED_AT). Events are JSON lines:
``hello`` (the env stamp), ``start`` (item i begins), ``row`` (item i's row). A crash or a hang
shows up in the runner as an item that started and never reported; the runner writes its row.

Steps: 1. check the model id (before importing torch); 2. import torch and diffusers (timed);
3. cap VRAM to the budget and choose the memory plan; 4. load the weights (timed, split into disk
read, built components and transfer to the device); 5. run the items in order; the first speed
item also completes the cold start (first image ready).
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from contextlib import contextmanager

from lightdiff.bench.cases import BATCH_SUBJECTS, Group, Item
from lightdiff.bench.rows import base_row, failure_row, trim_env

INJECT_ENV = "LIGHTDIFF_BENCH_INJECT"


class Events:
    """JSON lines to the runner: on the pipe it passed (LIGHTDIFF_BENCH_EVENTS_FD), else stdout."""

    def __init__(self):
        fd = os.environ.get("LIGHTDIFF_BENCH_EVENTS_FD")
        self._fh = os.fdopen(int(fd), "w", buffering=1) if fd else sys.stdout

    def send(self, event: str, **data) -> None:
        from lightdiff.bench.rows import clean

        self._fh.write(json.dumps(clean({"event": event, **data}), default=str) + "\n")
        self._fh.flush()


def _injections_allowed() -> bool:
    return os.environ.get(INJECT_ENV) == "1"


class InjectedCrash(RuntimeError):
    pass


def apply_injection(inject: dict | None, where: str, batch: int = 1) -> None:
    """Test-only failures, honoured only with LIGHTDIFF_BENCH_INJECT=1 (tests set it; users never do)."""
    if not inject:
        return
    if not _injections_allowed():
        raise InjectedCrash(f"'inject' is a test-only field; set {INJECT_ENV}=1 to honour it.")
    if where == "process" and inject.get("sleep_s"):
        time.sleep(float(inject["sleep_s"]))
    if where == "call":
        if inject.get("crash"):
            os._exit(int(inject.get("exit_code", 3)))
        over = inject.get("oom_over_batch")
        if inject.get("oom") or (over is not None and batch > int(over)):
            import torch

            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected for a test, "
                                         f"batch {batch})")


# --- loading ------------------------------------------------------------------------------------

def _loaded_model(spec, pipe, source_kind: str, location, device, dtype, load_s: float):
    from lightdiff.runtime.loader import LoadedModel, WeightSource

    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(spec=spec, source=WeightSource(source_kind, location), pipe=pipe, device=device,
                       dtype=dtype, load_s=load_s)


def load_to_host(group: Group, spec, device: str, build_on_device: bool):
    """The pipeline with weights in host RAM (or already on the device when build_on_device), and the
    startup fields describing how they got there."""
    import torch

    from lightdiff.bench import weights as wcache
    from lightdiff.runtime import build, loader
    from lightdiff.runtime.device import default_dtype

    mode = group.weights
    startup: dict = {"disk_read_gbps": group.disk_read_gbps}
    if mode in ("synthetic-disk", "twin-disk"):
        cspec = wcache.cache_spec(spec.id, mode)
        folder = wcache.cache_dir(spec.id, mode)
        manifest = wcache.read_manifest(folder)
        if not manifest:
            raise FileNotFoundError(f"The synthetic weight cache {folder} is missing (the runner prepares it first).")
        dtype = torch.float32 if mode == "twin-disk" else default_dtype(spec.rules.compute_dtype, device)
        built: dict = {}
        t0 = time.perf_counter()
        for name in manifest["built_at_load"]:  # components left out of the disk cache (disk space)
            where = device if str(device).startswith("cuda") else "cpu"
            built[name] = build.build_synthetic(cspec, where, dtype, names=[name])[name].to("cpu")
        built_s = time.perf_counter() - t0
        files = wcache.weight_files(folder)
        dropped = wcache.drop_page_cache(files)
        t0 = time.perf_counter()
        import diffusers

        cls = getattr(diffusers, cspec.pipelines["txt2img"])
        extras = dict(build.SD_EXTRAS) if cspec.family == "sd15" else {}
        pipe = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **extras, **built)
        load_s = time.perf_counter() - t0
        nbytes = sum(p.stat().st_size for p in files)
        startup.update(load_s=load_s, load_gb=nbytes / 2**30, load_gbps=nbytes / 2**30 / load_s if load_s else None,
                       load_source="disk cache (safetensors)", page_cache="dropped" if dropped else "not dropped",
                       cached_components=manifest["cached"], built_components=manifest["built_at_load"],
                       built_s=built_s if built else None)
        kind = "twin" if mode == "twin-disk" else "synthetic"
        return _loaded_model(spec, pipe, kind, str(folder), "cpu", dtype, load_s), startup
    if mode == "synthetic":
        dtype = default_dtype(spec.rules.compute_dtype, device)
        where = device if build_on_device else ("cuda" if str(device).startswith("cuda") else "cpu")
        t0 = time.perf_counter()
        comps = build.build_synthetic(spec, where, dtype)
        if where != "cpu" and not build_on_device:  # built on the GPU (fast), handed to the plan from host RAM
            comps = {k: (v.to("cpu") if hasattr(v, "parameters") else v) for k, v in comps.items()}
            free_cuda()
        pipe = build.assemble(spec, comps)
        load_s = time.perf_counter() - t0
        startup.update(load_s=load_s, load_gb=None, load_gbps=None, page_cache=None,
                       load_source="built on device" if build_on_device else "built on device, moved to host")
        on = device if build_on_device else "cpu"
        return _loaded_model(spec, pipe, "synthetic", None, on, dtype, load_s), startup
    # twin, auto, hub, a folder or a file: the loader's own sources, loaded to host RAM
    t0 = time.perf_counter()
    loaded = loader.load(spec, mode, device="cpu",
                         dtype=None if mode == "twin" else default_dtype(spec.rules.compute_dtype, device))
    load_s = time.perf_counter() - t0
    startup.update(load_s=load_s, load_gb=None, load_gbps=None, page_cache=None,
                   load_source={"twin": "built in memory (tiny twin)"}.get(mode, f"loader: {loaded.source.describe()}"))
    return loaded, startup


def free_cuda() -> None:
    from lightdiff.bench.measure import free_memory

    free_memory("cuda")


def _speed_path_parts(loaded) -> dict:
    """What of the speed path the loaded model runs with (empty when it is off or nothing applied)."""
    from lightdiff.workflows.engine import FAST_PATH_INFO

    if loaded is None:
        return {}
    parts = {k: loaded.plan_info[k] for k in FAST_PATH_INFO if k in (loaded.plan_info or {})}
    loop = getattr(loaded, "fast_loop", None)
    if loop is not None:
        parts["sd15_loop"] = "graphed" if loop.graphed else "eager"
    return parts


# --- calls --------------------------------------------------------------------------------------

class Call:
    """How a variant makes images: lightdiff through its workflow (planner, back-off), the baseline
    through the diffusers pipeline as a user of plain diffusers would call it."""

    def __init__(self, group: Group, loaded, device: str):
        self.group, self.loaded, self.device = group, loaded, device
        self.spec = loaded.spec

    def guidance(self) -> float:
        return self.spec.defaults.guidance if self.group.guidance is None else self.group.guidance

    def txt2img(self, width: int, height: int, batch: int, prompt: str | None = None, steps: int | None = None,
                inject: dict | None = None) -> dict:
        """Returns {"images": n, "fallbacks": [...], "plan": str | None}."""
        apply_injection(inject, "call", batch)
        prompt = prompt or self.group.prompt
        steps = steps or self.group.steps
        if self.group.variant == "baseline":
            return self._plain(width, height, batch, prompt, steps)
        from lightdiff.workflows import txt2img

        request = {"workflow": "txt2img", "model": self.spec.id, "prompt": prompt, "width": width, "height": height,
                   "steps": steps, "guidance": self.group.guidance, "seed": self.group.seed, "batch_size": batch}
        return self._with_plan_events(lambda: txt2img.run(self.loaded, request))

    def workflow(self, name: str, request: dict) -> dict:
        from lightdiff import workflows

        wf = workflows.get(name)
        base = {"workflow": name, "model": self.spec.id, "prompt": self.group.prompt, "steps": self.group.steps,
                "guidance": self.group.guidance, "seed": self.group.seed}
        return self._with_plan_events(lambda: wf.run(self.loaded, {**base, **request}))

    def _with_plan_events(self, fn) -> dict:
        """Run (with the group's step cache, if any), and add the plan's in-run fallbacks (e.g. a VAE decode
        retried in float32) to the outcome."""
        from lightdiff.runtime.fastpath import step_cache

        state = getattr(self.loaded, "plan_state", None)
        seen = len(getattr(state, "events", None) or [])
        with step_cache(self.loaded.pipe, self.group.step_cache):
            out = _outcome(fn())
        for event in (getattr(state, "events", None) or [])[seen:]:
            if str(event) not in out["fallbacks"]:
                out["fallbacks"].append(str(event))
        return out

    def _plain(self, width, height, batch, prompt, steps) -> dict:
        import torch

        pipe = self.loaded.pipe
        args = {"prompt": prompt, "width": width, "height": height, "num_inference_steps": steps,
                "num_images_per_prompt": batch, "generator": torch.Generator("cpu").manual_seed(self.group.seed),
                "output_type": "pil"}
        if self.spec.rules.guidance_kind == "true_cfg":
            args.update(true_cfg_scale=self.guidance(), negative_prompt=self.spec.defaults.negative_prompt or " ")
        else:
            args.update(guidance_scale=self.guidance())
        out = pipe(**args)
        return {"images": len(out.images), "fallbacks": [], "plan": "resident"}


def _outcome(result) -> dict:
    meta = result.metadata[0] if result.metadata else {}
    fallbacks: list = []
    for m in result.metadata:
        for f in m.get("fallbacks") or []:
            if f not in fallbacks:
                fallbacks.append(f)
    return {"images": len(result.images), "fallbacks": [str(f) for f in fallbacks], "plan": meta.get("plan"),
            "plan_info": meta.get("plan_info"), "missing": len(getattr(result, "missing", None) or [])}


@contextmanager
def injected_txt2img(inject: dict | None):
    """Test-only: make txt2img calls made inside another workflow (batch) honour the injection too."""
    if not inject:
        yield
        return
    from lightdiff.workflows import txt2img

    original = txt2img.run

    def run(loaded, request, *a, **kw):
        apply_injection(inject, "call", int(request.get("batch_size", 1)))
        return original(loaded, request, *a, **kw)

    txt2img.run = run
    try:
        yield
    finally:
        txt2img.run = original


# --- items --------------------------------------------------------------------------------------

class CaseProcess:
    def __init__(self, group: Group, events: Events, spawned_at: float):
        self.group, self.events, self.spawned_at = group, events, spawned_at
        self.cold_pending = True  # the first image of this process completes the cold start
        self.txt2img_rows: dict[tuple, dict] = {}  # (w, h, batch) -> row, for workflow overheads

    # the whole process
    def run(self) -> int:
        group = self.group
        apply_injection(group.inject, "process")
        from lightdiff import specs

        try:
            spec = specs.get(group.model)
        except Exception as e:  # unknown model: every item is an error row, no torch import needed
            from lightdiff.bench.measure import describe

            for i, item in enumerate(group.items):
                self.events.send("start", item=i)
                self.events.send("row", item=i, row=failure_row(group, item, "error", describe(e)))
            return 0
        import diffusers  # noqa: F401  (timed as part of the import phase)
        import torch  # noqa: F401
        import transformers  # noqa: F401

        from lightdiff.bench import measure
        from lightdiff.bench import planner as bench_planner
        from lightdiff.runtime.device import env_stamp, pick_device

        import_s = time.time() - self.spawned_at
        _quiet()
        self.env = trim_env(env_stamp())
        self.events.send("hello", env=self.env, pid=os.getpid())
        self.spec = spec
        self.device = pick_device(group.device)
        self.sampler = measure.Sampler(self.device)
        self.startup = {"import_s": import_s}
        self.plan_choice = bench_planner.PlanChoice("resident")
        self.idle = None
        try:
            self.plan_choice = bench_planner.choose(group, spec, self.device, self.env)
            self.loaded = self._load(bench_planner)
        except Exception as e:  # nothing loaded: every item gets the same outcome, none is run
            status = "oom" if measure.is_oom(e) else "error"
            traceback.print_exc()
            reason = f"loading failed: {measure.describe(e)}"
            peak = measure.vram_peak(self.device)
            for i, item in enumerate(group.items):
                self.events.send("start", item=i)
                row = self._row(item)
                row.update(status=status, reason=reason, startup=_rounded(self.startup) if i == 0 else None,
                           peak_vram=peak)
                self.events.send("row", item=i, row=row)
            return 0
        measure.free_memory(self.device)
        self.idle = measure.vram_now(self.device)
        for i, item in enumerate(group.items):
            self.events.send("start", item=i)
            self.events.send("row", item=i, row=self.run_item(item))
        self.sampler.stop()
        return 0

    def _load(self, bench_planner):
        """Weights to host RAM (or straight to the device when nothing needs them on the host), then the
        VRAM cap, then placement: the planner's apply for lightdiff, pipeline.to(device) for the baseline.

        The cap comes after the host load so synthetic weights can be made on the GPU (fast) and moved
        out before the budget applies; the budget governs placement and generation, as for a user."""
        from lightdiff.bench import measure
        from lightdiff.runtime.device import cap_vram

        group, spec, device, choice = self.group, self.spec, self.device, self.plan_choice
        planned = group.variant == "lightdiff" and choice.plan is not None
        on_host = planned and choice.on_host_first
        build_on_device = group.weights == "synthetic" and not on_host and group.vram_budget_gb is None
        loaded, startup = load_to_host(group, spec, device, build_on_device)
        self.startup.update(startup)
        measure.free_memory(device)
        cap_vram(group.vram_budget_gb, device)
        # peaks count from here: a synthetic build on the GPU before the cap is not what the budget holds
        # (without this, rows that ran out of memory placing the weights showed the build's 53.8 GB)
        measure.reset_peak(device)
        t0 = time.perf_counter()
        if planned:
            bench_planner.apply(loaded, choice, device)
        elif loaded.device != device:
            loaded.pipe.to(device)  # what a diffusers user does: everything on the GPU
            loaded.device = device
        measure.sync(device)
        self.startup["to_device_s"] = time.perf_counter() - t0
        loaded.plan = choice.name if group.variant == "lightdiff" else "resident"
        if group.variant == "lightdiff" and group.fast != "off":
            from lightdiff.workflows.engine import attach_fast_path

            attach_fast_path(loaded, group.fast)
        return loaded

    def _row(self, item: Item) -> dict:
        plan = self.plan_choice.name if self.group.variant == "lightdiff" else "resident"
        guidance = self.spec.defaults.guidance if self.group.guidance is None else self.group.guidance
        row = base_row(self.group, item, self.env, family=self.spec.family, guidance=guidance, plan=plan)
        if self.group.variant == "lightdiff" and self.plan_choice.info:
            row["plan_info"] = self.plan_choice.info
        if self.group.variant == "lightdiff":
            row["fast"] = {"mode": self.group.fast, **_speed_path_parts(getattr(self, "loaded", None))}
        if self.group.step_cache:
            row["step_cache"] = {"kind": self.group.step_cache, "changes_output": True}
        return row

    def run_item(self, item: Item) -> dict:
        from lightdiff.bench import measure

        row = self._row(item)
        try:
            if item.kind == "speed":
                row.update(self.speed(item))
            elif item.kind == "batch":
                row.update(self.batch(item))
            elif item.kind == "boundary":
                row.update(self.boundary(item))
            elif item.kind == "workflow":
                row.update(self.workflow(item))
            else:
                raise ValueError(f"unknown item kind {item.kind!r}")
        except Exception as e:
            traceback.print_exc()
            oom = measure.is_oom(e)
            row.update(status="oom" if oom else "error", reason=measure.describe(e))
            if item.kind == "batch":
                row.setdefault("images_requested", item.images)
                row.setdefault("images_produced", 0)
            if oom:
                row["peak_vram"] = measure.vram_peak(self.device, self.sampler.nvml_peak_gb())
        finally:
            measure.free_memory(self.device)
        return row

    def _call(self) -> Call:
        return Call(self.group, self.loaded, self.device)

    def _measure_calls(self, fn, steps: int) -> dict:
        """First call, then group.runs warm calls; VRAM and host RAM peaks over all of them."""
        from lightdiff.bench import measure

        measure.reset_peak(self.device)
        # VRAM peaks start now; the first item's host RAM peak keeps the load (that is the cold start)
        self.sampler.reset(host=not self.cold_pending)
        self.sampler.resume()
        try:
            outcome, first_s = measure.timed(fn, self.device)
        finally:
            # NVML and host RAM are sampled over the first call; the timed warm runs go unsampled so
            # the sampling thread cannot slow a launch-bound loop. torch's peak counters see every run.
            self.sampler.pause()
            nvml_peak = self.sampler.nvml_peak_gb()
        out = {}
        if self.cold_pending:
            self.cold_pending = False
            self.startup["warmup_s"] = first_s
            self.startup["total_s"] = time.time() - self.spawned_at
            out["startup"] = _rounded(self.startup)
        runs, outcomes = [], [outcome]
        for _ in range(self.group.runs):
            o, s = measure.timed(fn, self.device)
            runs.append(s)
            outcomes.append(o)
        stats = measure.spread(runs)
        images = outcome["images"]
        fallbacks = []
        for o in outcomes:
            fallbacks += [f for f in o["fallbacks"] if f not in fallbacks]
        out.update({
            "idle_vram": self.idle, "peak_vram": measure.vram_peak(self.device, nvml_peak),
            "host_ram_peak_gb": self.sampler.host_peak_gb(), "first_s": round(first_s, 4), "sec_per_call": stats,
            "sec_per_image": round(stats["median"] / max(images, 1), 4),
            "it_per_s": round(steps / stats["median"], 3), "images_per_s": round(images / stats["median"], 4),
            "images_per_call": images, "fallbacks": fallbacks,
        })
        if outcome.get("plan") and self.group.variant == "lightdiff":
            out["plan"] = outcome["plan"]
        return out

    def speed(self, item: Item) -> dict:
        call = self._call()
        out = self._measure_calls(lambda: call.txt2img(item.width, item.height, item.batch_size, inject=item.inject),
                                  self.group.steps)
        out["predicted"] = self.plan_choice.predicted(item) if self.group.variant == "lightdiff" else None
        self.txt2img_rows[(item.width, item.height, item.batch_size)] = out
        return out

    def batch(self, item: Item) -> dict:
        """N images at batch B. lightdiff: the batch workflow if present, else calls that halve the batch
        after an OOM (recorded in fallbacks). Baseline: plain calls; an OOM ends the test, as it ends a
        user's plain script."""
        from lightdiff.bench import measure

        call = self._call()
        wanted, batch = item.images or 10, item.batch_size
        produced, fallbacks, per_call = 0, [], []
        measure.reset_peak(self.device)
        self.sampler.reset()
        self.sampler.resume()  # the batch test is about memory: sampled throughout
        t0 = time.perf_counter()
        status, reason = "ok", None
        used_workflow = None
        if self.group.variant == "lightdiff" and _has_workflow("batch") and wanted % batch == 0:
            # the batch workflow: one subject per chunk of B images (its chunks share a prompt), and its
            # own OOM back-off (halving), recorded in each image's metadata
            used_workflow = "batch"
            subjects = [BATCH_SUBJECTS[i % len(BATCH_SUBJECTS)] for i in range(wanted // batch)]
            with injected_txt2img(item.inject):
                o = call.workflow("batch", {"prompt": "", "prompts": subjects, "count": batch, "batch_size": batch,
                                            "width": item.width, "height": item.height})
            produced, fallbacks = o["images"], o["fallbacks"]
            if o["missing"]:
                status = "oom"
                reason = f"{o['missing']} of {wanted} images did not fit even at batch size 1"
        else:
            subject = 0
            while produced < wanted:
                n = min(batch, wanted - produced)
                prompt = BATCH_SUBJECTS[subject % len(BATCH_SUBJECTS)]
                try:
                    o, s = measure.timed(lambda n=n, prompt=prompt: call.txt2img(
                        item.width, item.height, n, prompt=prompt, inject=item.inject), self.device)
                except Exception as e:
                    if not measure.is_oom(e):
                        raise
                    measure.free_memory(self.device)
                    if self.group.variant == "lightdiff" and batch > 1:
                        new = max(1, batch // 2)
                        fallbacks.append(f"batch {batch}->{new} after OOM at image {produced + 1}")
                        batch = new
                        continue
                    status, reason = "oom", f"OOM at image {produced + 1} of {wanted}: {measure.describe(e)}"
                    break
                produced += o["images"]
                fallbacks += [f for f in o["fallbacks"] if f not in fallbacks]
                per_call.append(round(s, 4))
                subject += 1
        total_s = time.perf_counter() - t0
        return {"status": status, "reason": reason, "images_requested": wanted, "images_produced": produced,
                "batch_size": item.batch_size, "final_batch_size": batch, "total_s": round(total_s, 4),
                "sec_per_image": round(total_s / produced, 4) if produced else None, "call_s": per_call,
                "peak_vram": measure.vram_peak(self.device, self.sampler.nvml_peak_gb()),
                "host_ram_peak_gb": self.sampler.host_peak_gb(), "fallbacks": fallbacks,
                "batch_workflow": used_workflow}

    def boundary(self, item: Item) -> dict:
        """Largest batch at this size and largest size at batch 1 that fit, by galloping then bisection.

        Probes run in this process with the cache emptied between them, and with few steps
        (boundary_steps): the peak of a call is one denoiser forward plus the VAE decode, whatever the
        step count."""
        from lightdiff.bench import measure
        from lightdiff.bench.boundary import largest_fitting

        if not str(self.device).startswith("cuda"):
            raise RuntimeError("The OOM boundary search needs a CUDA device: the CPU has no VRAM budget to hit.")
        call = self._call()
        probes: list[dict] = []

        def fits(width: int, height: int, batch: int) -> bool:
            measure.free_memory(self.device)
            measure.reset_peak(self.device)
            try:
                o = call.txt2img(width, height, batch, steps=self.group.boundary_steps, inject=item.inject)
                ok = not o["fallbacks"]  # a back-off means the asked batch did not fit as asked
            except Exception as e:
                if not measure.is_oom(e):
                    raise
                ok = False
            peak = measure.vram_peak(self.device)
            probes.append({"width": width, "height": height, "batch": batch, "fits": ok,
                           "peak_allocated_gb": peak["allocated_gb"] if peak else None})
            return ok

        m = self.spec.rules.size_multiple
        max_batch = largest_fitting(list(range(1, self.group.boundary_max_batch + 1)), 0,
                                    lambda b: fits(item.width, item.height, b))
        sizes = list(range(self.spec.rules.min_size // m * m or m, self.spec.rules.max_size + 1, m))
        start = sizes.index(item.width) if item.width in sizes else 0
        max_size = largest_fitting(sizes, start, lambda s: fits(s, s, 1))
        notes = []
        if max_batch == self.group.boundary_max_batch:
            notes.append(f"max_batch reached the search cap {max_batch}: no OOM up to there")
        if max_size == sizes[-1]:
            notes.append(f"max_size reached {self.spec.family}'s largest size {max_size}: no OOM up to there")
        return {"max_batch": max_batch or 0, "max_size": max_size, "budget_gb": self.group.vram_budget_gb,
                "probe_steps": self.group.boundary_steps, "probes": probes, "note": "; ".join(notes) or None}

    def workflow(self, item: Item) -> dict:
        """A workflow case, with its extra VRAM and seconds against txt2img of the same model and size."""
        name = item.workflow
        if not _has_workflow(name):
            return {"status": "error", "reason": "workflow not available",
                    "detail": f"lightdiff.workflows has no {name!r} module in this version"}
        from lightdiff.bench import workflow_requests

        request = workflow_requests.request_for(name, self.spec, item)
        call = self._call()
        out = self._measure_calls(lambda: call.workflow(name, request), self.group.steps)
        ref = self.txt2img_rows.get((item.width, item.height, 1))
        if ref is None:  # this process measured no txt2img at this size (isolated cases): measure one now
            ref = self.speed(Item("speed", item.width, item.height, 1))
        out["reference"] = {"workflow": "txt2img", "width": item.width, "height": item.height,
                            "sec_per_image": ref["sec_per_image"], "peak_vram": ref["peak_vram"]}
        out["extra_s"] = round(out["sec_per_image"] - ref["sec_per_image"], 4)
        out["extra_vram_gb"] = _vram_delta(out.get("peak_vram"), ref.get("peak_vram"))
        out["request"] = {k: v for k, v in request.items() if not k.endswith("_image")}
        return out


def _vram_delta(a: dict | None, b: dict | None) -> float | None:
    if not a or not b:
        return None
    for key in ("allocated_gb", "reserved_gb", "nvml_used_gb"):
        if a.get(key) is not None and b.get(key) is not None:
            return round(a[key] - b[key], 3)
    return None


def _has_workflow(name: str) -> bool:
    from lightdiff import workflows

    return name in workflows.names()


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


def _quiet() -> None:
    """Progress bars would fill the case log; the runner reports progress itself."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spawned_at = float(os.environ.get("LIGHTDIFF_BENCH_SPAWNED_AT") or time.time())
    group = Group.from_json(argv[0])
    return CaseProcess(group, Events(), spawned_at).run()


if __name__ == "__main__":
    code = main()
    # Every row is already sent and flushed; skip the interpreter's teardown of torch and CUDA (seconds
    # per process, and a teardown crash would only muddy the log).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
