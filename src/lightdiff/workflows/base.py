"""What every workflow shares: request fields and their checks, seeds, metadata, the result type."""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lightdiff import __version__, settings, specs
from lightdiff.errors import InvalidRequest, LightdiffError
from lightdiff.specs import ModelSpec

Progress = Callable[[dict], None]


class Cancelled(LightdiffError):
    code = "cancelled"
    http_status = 409


class BaseRequest(BaseModel):
    """Fields common to all workflows. None means "the model's default"."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    workflow: str = "txt2img"
    model: str = Field(default_factory=lambda: settings.get("default_model"))
    weights: str = "auto"
    prompt: str = Field(min_length=0, max_length=20000)
    negative_prompt: str | None = Field(None, max_length=20000)
    width: int | None = Field(None, ge=8, le=8192)
    height: int | None = Field(None, ge=8, le=8192)
    steps: int | None = Field(None, ge=1, le=1000)
    guidance: float | None = Field(None, ge=0.0, le=100.0)
    seed: int | None = Field(None, ge=0, lt=2**32)
    batch_size: int = Field(1, ge=1, le=64)
    scheduler: str | None = None
    # "fbc" or "taylorseer": diffusers' step caches for transformer denoisers; they change the image (off: None)
    step_cache: str | None = None


def parse(cls: type[BaseModel], data: dict | BaseModel) -> BaseModel:
    """Validate into ``cls``; a pydantic error becomes InvalidRequest naming the field and the value."""
    if isinstance(data, cls):
        return data
    if isinstance(data, BaseModel):
        data = data.model_dump()
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        fieldname = ".".join(str(p) for p in err.get("loc", ())) or "request"
        value = err.get("input")
        shown = repr(value) if not isinstance(value, (dict, list)) or len(repr(value)) < 80 else "..."
        raise InvalidRequest(fieldname, f"{fieldname}={shown}: {err.get('msg')}.",
                             f"Fix the {fieldname!r} field of the request.") from None


def nearest_sizes(value: int, multiple: int) -> list[int]:
    lo = (value // multiple) * multiple
    return sorted({max(multiple, lo), lo + multiple})


@dataclass(frozen=True)
class Resolved:
    """A request with every default filled in from the model's spec and checked against its family."""

    spec: ModelSpec
    prompt: str
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance: float
    seed: int
    batch_size: int
    scheduler: str


def resolve(req: BaseRequest, spec: ModelSpec | None = None) -> Resolved:
    spec = spec or specs.get(req.model)
    d, rules = spec.defaults, spec.rules
    width, height = req.width or d.width, req.height or d.height
    for name, v in (("width", width), ("height", height)):
        if v % rules.size_multiple:
            raise InvalidRequest(
                name, f"{name} {v} is not a multiple of {rules.size_multiple}, which {spec.family} needs.",
                f"Use {' or '.join(map(str, nearest_sizes(v, rules.size_multiple)))}.")
        if not rules.min_size <= v <= rules.max_size:
            raise InvalidRequest(name, f"{name} {v} is outside {rules.min_size}..{rules.max_size} for {spec.family}.",
                                 f"Use a size between {rules.min_size} and {rules.max_size}.")
    scheduler = req.scheduler or d.scheduler
    if scheduler not in rules.schedulers:
        raise InvalidRequest("scheduler", f"Scheduler {scheduler!r} is not available for {spec.family}.",
                             f"Use one of: {', '.join(rules.schedulers)}.")
    guidance = d.guidance if req.guidance is None else req.guidance
    if not math.isfinite(guidance):
        raise InvalidRequest("guidance", f"guidance={guidance} is not a finite number.", "Use e.g. 7 for sd15, 4 for Qwen.")
    seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
    negative = req.negative_prompt if req.negative_prompt is not None else d.negative_prompt
    return Resolved(spec, req.prompt, negative, width, height, req.steps or d.steps, float(guidance), seed,
                    req.batch_size, scheduler)


def generators(seed: int, n: int) -> list:
    """One CPU generator per image, seeds seed, seed+1, ...: image i is reproducible on its own
    (as AUTOMATIC1111 numbers batch seeds), and CPU noise is the same on every device."""
    import torch

    return [torch.Generator("cpu").manual_seed((seed + i) % 2**32) for i in range(n)]


@cache
def _installed_versions() -> tuple:
    """(package, version) pairs, read once per process: importlib parses a package's METADATA file on every call
    (about 2 ms of every image's host time for these three, on a 2-core CPU host)."""
    from importlib import metadata

    out = []
    for dist in ("torch", "diffusers", "transformers"):
        try:
            out.append((dist, metadata.version(dist)))
        except metadata.PackageNotFoundError:
            out.append((dist, None))
    return tuple(out)


def versions() -> dict:
    """The versions an image was made with (a new dict each call: metadata callers may edit theirs)."""
    return {"lightdiff": __version__, **dict(_installed_versions())}


def image_metadata(loaded, workflow: str, r: Resolved, index: int, request: BaseModel, extra: dict | None = None) -> dict:
    meta = {
        "workflow": workflow,
        "model": r.spec.id,
        "family": r.spec.family,
        "weights": loaded.source.describe(),
        "synthetic": loaded.synthetic,
        "prompt": r.prompt,
        "negative_prompt": r.negative_prompt,
        "seed": (r.seed + index) % 2**32,
        "batch_seed": r.seed,
        "index": index,
        "steps": r.steps,
        "guidance": r.guidance,
        "scheduler": r.scheduler,
        "width": r.width,
        "height": r.height,
        "plan": loaded.plan,
        "plan_info": loaded.plan_info,
        "device": loaded.device,
        "dtype": str(loaded.dtype).replace("torch.", ""),
        "versions": versions(),
        # the request as given, with this image's own seed and batch 1: enough to reproduce it alone
        "request": {**request.model_dump(), "seed": (r.seed + index) % 2**32, "batch_size": 1},
    }
    if loaded.synthetic:
        meta["note"] = "synthetic weights: random values, the image is noise"
    blocks = getattr(getattr(loaded.pipe, "transformer", None), "_lightdiff_precompiled", None)
    if blocks is not None and blocks.notes:  # the precompiled blocks: "loaded", "compiled", or the fallback and why
        meta["precompiled"] = dict(blocks.notes)
    if getattr(request, "step_cache", None):
        meta["step_cache"] = {"kind": request.step_cache, "changes_output": True}
    meta.update(extra or {})
    return meta


@dataclass
class GenerationResult:
    images: list  # PIL images
    metadata: list[dict]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)  # e.g. the ControlNet edge map
    paths: list[str] = field(default_factory=list)
    # images asked for but not made (batch after out-of-memory back-off): what each was and why
    missing: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"metadata": self.metadata, "warnings": self.warnings, "timings": self.timings,
                "paths": self.paths, "missing": self.missing}


def step_callback(steps: int, progress: Progress | None, cancel) -> Callable:
    """diffusers callback_on_step_end: report step i of n; stop at once when cancel is set."""
    def cb(pipe, i, t, kwargs):
        if cancel is not None and cancel.is_set():
            raise Cancelled("The job was cancelled.", "Nothing was saved for it.")
        if progress:
            progress({"stage": "running", "step": i + 1, "steps": steps})
        return kwargs
    return cb


def prompt_length_warning(pipe, prompt: str, limit: int, field: str = "prompt") -> str | None:
    """Text encoders read a fixed number of tokens; say so when a prompt is longer (never cut silently)."""
    tok = getattr(pipe, "tokenizer", None)
    if tok is None or not prompt:
        return None
    from lightdiff.demo.vocab import echoes

    echo = echoes(tok)  # the caption goes in twice (even without special tokens): count one copy
    n = len(tok(prompt, add_special_tokens=False, truncation=False)["input_ids"]) // (2 if echo else 1)
    if n <= limit:
        return None
    what = field.replace("_", " ")
    if echo:  # a cut would leave the two copies unequal, so refuse instead
        raise InvalidRequest(field, f"The {what} is {n} tokens; this model reads at most {limit}.",
                             f"Shorten the {what} (the demo model's captions are at most 35 tokens).")
    return (f"The {what} is {n} tokens; the text encoder reads {limit}. "
            f"The last {n - limit} tokens were ignored: shorten the {what} or move key words to the front.")


def prompt_length_warnings(pipe, r, limit: int) -> list[str]:
    """``prompt_length_warning`` for a resolved request's prompt and negative prompt."""
    found = (prompt_length_warning(pipe, r.prompt, limit),
             prompt_length_warning(pipe, r.negative_prompt, limit, "negative_prompt"))
    return [w for w in found if w]


class Timer:
    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return round(time.perf_counter() - self.t0, 4)
