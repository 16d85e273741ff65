"""Weight sources: hub id, local diffusers folder, single-file checkpoint, synthetic, tiny twin.

One option chooses the source (``--weights``):
- ``auto``: the spec's own source (hub for sd15/qwen, the twin for tiny-*, a path for user entries);
- ``hub`` or ``hub:org/name``: from the Hugging Face hub or its cache (honours HF_HOME, HF_HUB_OFFLINE);
- a folder path: a diffusers folder (model_index.json at its root);
- a ``.safetensors`` file: a single-file checkpoint as AUTOMATIC1111/ComfyUI keep them;
- ``synthetic``: the real-size architecture with random weights made on the device (speed/memory work);
- ``twin``: the spec's tiny twin (random, tiny, CPU-friendly);
- ``demo``: lightdiff's own demo model, packaged in lightdiff/data/demo (``auto`` for the demo spec).
Pickle formats (.ckpt, .pt, .pth, .bin) can run code when loaded and are refused unless allowed.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightdiff import settings, specs
from lightdiff.errors import InvalidRequest, UnsafeWeightsFormat, WeightsNotFound
from lightdiff.specs import ModelSpec

PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl"}
SAFE_SUFFIXES = {".safetensors", ".sft"}


@dataclass(frozen=True)
class WeightSource:
    kind: str  # hub | local | single-file | synthetic | twin | demo
    location: str | None = None  # repo id or path

    @property
    def synthetic(self) -> bool:
        return self.kind in ("synthetic", "twin")

    def describe(self) -> str:
        return f"{self.kind}:{self.location}" if self.location else self.kind


def resolve_source(spec: ModelSpec, weights: str | None = "auto") -> WeightSource:
    """Turn the --weights option into a WeightSource for this spec."""
    w = (weights or "auto").strip()
    if w == "auto":
        w = spec.source
    if w == "twin":
        if not (spec.is_twin or spec.twin):
            raise InvalidRequest("weights", f"Model {spec.id!r} has no tiny twin.", "Use --weights synthetic or a path.")
        return WeightSource("twin", spec.id if spec.is_twin else spec.twin)
    if w == "synthetic":
        return WeightSource("synthetic")
    if w == "demo":
        if spec.family != "sd15":
            raise InvalidRequest("weights", f"The demo weights are an sd15-family model; {spec.id!r} is {spec.family}.",
                                 "Use --model demo (or another sd15 model) with --weights demo.")
        return WeightSource("demo", str(demo_weights_dir()))
    if w == "hub" or w.startswith("hub:"):
        repo = w[4:] if w.startswith("hub:") else spec.hub_repo
        if not repo:
            raise InvalidRequest("weights", f"Model {spec.id!r} has no hub repository.",
                                 "Give a local folder or .safetensors file with --weights PATH.")
        return WeightSource("hub", repo)
    path = Path(w).expanduser()
    suffix = path.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        return WeightSource("single-file", str(path))
    if suffix in SAFE_SUFFIXES:
        return WeightSource("single-file", str(path))
    if path.is_dir() or w.startswith(("/", ".", "~")):
        return WeightSource("local", str(path))
    if "/" in w:  # org/name: a hub repository id
        return WeightSource("hub", w)
    raise InvalidRequest("weights", f"Cannot tell what weight source {weights!r} is.",
                         "Use auto, hub, hub:org/name, synthetic, twin, a diffusers folder or a .safetensors file.")


def demo_weights_dir() -> Path:
    """Where the demo model's diffusers folder is packaged (lightdiff/data/demo)."""
    from importlib.resources import files

    return Path(str(files("lightdiff") / "data" / "demo"))


def _check_demo_weights(folder: str) -> None:
    if not (Path(folder) / "model_index.json").is_file():
        raise WeightsNotFound(
            f"the demo weights are not in this install (no model_index.json in {folder}).",
            "run `lightdiff train-demo --out DIR` (on a GPU: minutes) and copy DIR's diffusers folder there, "
            "or pass --weights DIR; --weights twin runs the tiny random twin instead.",
            details={"path": folder},
        )


@dataclass
class LoadedModel:
    """A pipeline plus what it is: the spec, where its weights came from, device and dtype."""

    spec: ModelSpec
    source: WeightSource
    pipe: Any
    device: str
    dtype: Any
    load_s: float
    plan: str = "resident"
    plan_info: dict = field(default_factory=dict)
    # what runtime/pinned.py did to each streamed part ({"text_encoder": {"pinned_bytes": n} or {"skipped": why}})
    pinned: dict = field(default_factory=dict)
    # the memory planner's run-time state (runtime/plan_apply.PlanState): prompt cache, VAE guard
    plan_state: Any = None
    _derived: dict = field(default_factory=dict)
    # the scheduler config as loaded: every request derives its scheduler from this, so switching
    # schedulers never drifts (from_config across classes adds and drops keys)
    scheduler_config: dict = field(default_factory=dict)
    _scheduler_templates: dict = field(default_factory=dict)

    def new_scheduler(self, cls):
        """A fresh scheduler of class ``cls`` from ``scheduler_config``: a copy of one built once per class, since
        ``from_config`` inspects every argument's signature (0.7 ms a request on a 2-core CPU host; a copy 0.13)."""
        import copy

        if cls not in self._scheduler_templates:
            self._scheduler_templates[cls] = cls.from_config(self.scheduler_config)
        return copy.deepcopy(self._scheduler_templates[cls])

    def __post_init__(self):
        if not self.scheduler_config and getattr(self.pipe, "scheduler", None) is not None:
            self.scheduler_config = dict(self.pipe.scheduler.config)

    @property
    def synthetic(self) -> bool:
        return self.source.synthetic

    def pipeline(self, workflow: str = "txt2img", **extra_components):
        """The pipeline for a workflow, sharing this model's components (diffusers from_pipe)."""
        if workflow == "txt2img" and not extra_components:
            return self.pipe
        key = (workflow, tuple(sorted((k, id(v)) for k, v in extra_components.items())))
        if key not in self._derived:
            import diffusers

            if workflow not in self.spec.pipelines:
                raise InvalidRequest("workflow", f"Model {self.spec.id!r} has no {workflow!r} pipeline.",
                                     f"Use one of: {', '.join(self.spec.pipelines)}.")
            cls = getattr(diffusers, self.spec.pipelines[workflow])
            derived = _derive(cls, self.pipe, extra_components)
            if self.plan_state is not None:  # the memory plan's prompt cache and VAE guard
                self.plan_state.attach(derived)
            self._derived[key] = derived
        return self._derived[key]


def _derive(cls, pipe, extra_components: dict):
    """A pipeline of class ``cls`` over ``pipe``'s own component objects, with nothing moved or cast.

    diffusers' from_pipe casts every component to one dtype (float32 unless told otherwise), which
    doubles a half-precision model's memory and undoes fp8 storage; constructing the class from the
    same components (as diffusers documents for sharing components) keeps each one as placed."""
    expected, optional = cls._get_signature_keys(cls)
    kwargs = {k: v for k, v in pipe.components.items() if k in expected}
    kwargs.update(extra_components)
    kwargs.update({k: pipe.config[k] for k in optional if k in pipe.config and k not in kwargs})
    derived = cls(**kwargs)
    derived.set_progress_bar_config(disable=True)
    return derived


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _missing_hub_files(repo: str) -> list[str]:
    """Which files of a diffusers repo are not in the local cache (model_index.json, then configs)."""
    from huggingface_hub import try_to_load_from_cache

    index = try_to_load_from_cache(repo, "model_index.json")
    if not isinstance(index, str):
        return ["model_index.json (and every component folder)"]
    missing = []
    with open(index, encoding="utf-8") as f:
        components = [k for k, v in json.load(f).items() if isinstance(v, list) and v[0]]
    for comp in components:
        found = any(isinstance(try_to_load_from_cache(repo, f"{comp}/{name}"), str)
                    for name in ("config.json", "scheduler_config.json", "tokenizer_config.json",
                                 "preprocessor_config.json"))
        if not found:
            missing.append(f"{comp}/ (config and weights)")
    return missing


def _pipeline_class(spec: ModelSpec):
    import diffusers

    return getattr(diffusers, spec.pipelines["txt2img"])


def _extras(spec: ModelSpec) -> dict:
    from lightdiff.runtime.build import SD_EXTRAS

    return dict(SD_EXTRAS) if spec.family == "sd15" else {}


def _load_hub(spec: ModelSpec, repo: str, dtype):
    offline = _offline()
    try:
        return _pipeline_class(spec).from_pretrained(repo, torch_dtype=dtype, local_files_only=offline,
                                                     **_extras(spec))
    except Exception as e:  # hub errors come as OSError, HfHubHTTPError, LocalEntryNotFoundError...
        missing = _missing_hub_files(repo)
        if not missing:
            raise
        how = ("HF_HUB_OFFLINE is set, so nothing is downloaded" if offline
               else f"the download failed ({type(e).__name__})")
        raise WeightsNotFound(
            f"Weights for {spec.id!r} ({repo}) are not in the local cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and {how}. Missing: {', '.join(missing)}.",
            f"On a machine with network run `huggingface-cli download {repo}` and copy its HF_HOME here, "
            f"or pass --weights /path/to/diffusers-folder or a single .safetensors checkpoint.",
            details={"repo": repo, "missing": missing},
        ) from None


def _load_local(spec: ModelSpec, folder: str, dtype):
    path = Path(folder).expanduser()
    if not (path / "model_index.json").is_file():
        raise WeightsNotFound(
            f"{path} is not a diffusers folder: there is no model_index.json in it.",
            "Point --weights at the folder that holds model_index.json, unet/ (or transformer/), vae/, "
            "text_encoder/, tokenizer/ and scheduler/; or at a single .safetensors checkpoint.",
            details={"path": str(path)},
        )
    return _pipeline_class(spec).from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                 **_extras(spec))


def _load_single_file(spec: ModelSpec, file: str, dtype, allow_unsafe: bool):
    path = Path(file).expanduser()
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_unsafe:
        raise UnsafeWeightsFormat(
            f"{path.name} is a pickle checkpoint ({path.suffix}); loading pickle can run arbitrary code.",
            "Use a .safetensors version of this model, or pass --allow-unsafe-pickle (or set "
            "LIGHTDIFF_ALLOW_UNSAFE_PICKLE=1) if you trust the file's origin.",
            details={"path": str(path)},
        )
    if not path.is_file():
        raise WeightsNotFound(f"Checkpoint file {path} does not exist.", "Check the path given to --weights.",
                              details={"path": str(path)})
    if spec.family != "sd15":
        raise InvalidRequest(
            "weights", f"Single-file checkpoints are supported for the sd15 family; {spec.id!r} is {spec.family}.",
            "Give a diffusers folder (model_index.json, transformer/, vae/, text_encoder/, ...) instead.")
    from lightdiff.runtime import single_file

    config_dir = single_file.config_dir_for(spec)
    return single_file.load_single_file(str(path), config_dir, dtype)


def load(spec: ModelSpec | str, weights: str | None = "auto", device: str = "cpu", dtype=None,
         allow_unsafe_pickle: bool | None = None, seed: int = 0) -> LoadedModel:
    """Load a model's txt2img pipeline from the chosen source onto ``device`` (resident plan)."""
    import torch

    from lightdiff.runtime import build
    from lightdiff.runtime.device import default_dtype

    spec = specs.get(spec) if isinstance(spec, str) else spec
    source = resolve_source(spec, weights)
    if allow_unsafe_pickle is None:
        allow_unsafe_pickle = settings.flag("allow_unsafe_pickle")
    if dtype is None:
        dtype = default_dtype(spec.rules.compute_dtype, device) if source.kind != "twin" else torch.float32
    t0 = time.perf_counter()
    if source.kind == "twin":
        twin = specs.get(source.location)
        pipe = build.assemble(twin, build.build_twin(twin, seed=seed)).to(device)
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    elif source.kind == "synthetic":
        pipe = build.assemble(spec, build.build_synthetic(spec, device, dtype, seed=seed))
    elif source.kind == "hub":
        pipe = _load_hub(spec, source.location, dtype).to(device)
    elif source.kind == "local":
        pipe = _load_local(spec, source.location, dtype).to(device)
    elif source.kind == "demo":
        _check_demo_weights(source.location)
        pipe = _load_local(spec, source.location, dtype).to(device)
    else:
        pipe = _load_single_file(spec, source.location, dtype, allow_unsafe_pickle).to(device)
    pipe.set_progress_bar_config(disable=True)
    return LoadedModel(spec=spec, source=source, pipe=pipe, device=device, dtype=dtype,
                       load_s=time.perf_counter() - t0)
