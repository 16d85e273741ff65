"""Build pipeline components from a spec, without a download.

Three ways:
- on the meta device: no memory, for parameter counts and the planner's byte counts;
- tiny twin: a normal construction with a fixed seed (fp32, CPU), like diffusers' own tests;
- synthetic real size: parameters on the meta device, then materialised straight on the target
  device in the target dtype with random values (never a full fp32 copy in host RAM). Buffers are
  built normally, so rotary tables and position ids are right.
"""

from __future__ import annotations

import copy
from typing import Any

from lightdiff.specs import ComponentSpec, ModelSpec

SD_EXTRAS = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


def component_class(comp: ComponentSpec):
    if comp.library == "diffusers":
        import diffusers

        return getattr(diffusers, comp.cls)
    if comp.library == "transformers":
        import transformers

        return getattr(transformers, comp.cls)
    raise ValueError(f"component class {comp.cls} from {comp.library} is not a module")


def _construct(comp: ComponentSpec):
    cls = component_class(comp)
    if comp.library == "transformers":
        import transformers

        # a deep copy: transformers' config classes edit nested dicts (rope_scaling) in place, which
        # would change the spec itself after its first build
        config = getattr(transformers, comp.config_cls)(**copy.deepcopy(comp.config))
        return cls(config)
    return cls.from_config(copy.deepcopy(dict(comp.config)))


def build_non_module(comp: ComponentSpec):
    """Schedulers and tokenizers: cheap, no weights."""
    if comp.library == "lightdiff" and comp.cls == "StandinTokenizer" and comp.config.get("style") == "demo":
        # the demo model's real tokenizer (word level, English + Chinese); it keeps the stand-in's
        # class name so the demo spec shares its component classes with its twin tiny-sd15
        from lightdiff.demo.vocab import build_tokenizer

        return build_tokenizer(comp.config.get("model_max_length", 32), echo=comp.config.get("echo", False))
    if comp.library == "lightdiff" and comp.cls == "StandinTokenizer":
        from lightdiff.runtime.tokenizer import standin_tokenizer

        return standin_tokenizer(comp.config["style"], comp.config["model_max_length"],
                                 comp.config.get("vocab_size", 4096))
    cls = component_class(comp)
    return cls.from_config(dict(comp.config))


def build_on_meta(spec: ModelSpec, names: list[str] | None = None) -> dict[str, Any]:
    """Weight-bearing components on the meta device: shapes and counts, no memory."""
    import torch

    out = {}
    for name in names or spec.weight_components():
        with torch.device("meta"):
            out[name] = _construct(spec.components[name])
    return out


def count_params_M(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def build_twin(spec: ModelSpec, seed: int = 0) -> dict[str, Any]:
    """All components of a tiny spec, fp32 on the CPU, deterministic by seed."""
    import torch

    out = {}
    for name, comp in spec.components.items():
        if comp.has_weights:
            torch.manual_seed(seed)
            out[name] = _construct(comp).eval()
        else:
            out[name] = build_non_module(comp)
    return out


def _init_param(t, module, pname: str, gen) -> None:
    """Random values with the scale a trained layer has, so activations stay finite in fp16/bf16."""
    import torch

    if "norm" in type(module).__name__.lower() or t.ndim == 1 and pname != "bias":
        t.fill_(1.0 if pname != "bias" else 0.0)
    elif pname == "bias":
        t.zero_()
    elif isinstance(module, torch.nn.Embedding):
        t.normal_(0.0, 1.0, generator=gen)
    else:
        fan_in = max(1, t.numel() // t.shape[0])
        t.normal_(0.0, fan_in ** -0.5, generator=gen)


def materialise(module, device, dtype, seed: int = 0):
    """Replace every meta parameter by a random tensor made on ``device`` in ``dtype``."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    made: dict[int, torch.nn.Parameter] = {}  # shared (tied) parameters stay shared
    with torch.no_grad():
        for sub in module.modules():
            for pname, p in list(sub._parameters.items()):
                if p is None or not p.is_meta:
                    continue
                if id(p) not in made:
                    t = torch.empty(p.shape, dtype=dtype, device=device)
                    _init_param(t, sub, pname, gen)
                    made[id(p)] = torch.nn.Parameter(t, requires_grad=False)
                sub._parameters[pname] = made[id(p)]
    return module.to(device).eval()


def build_synthetic(spec: ModelSpec, device, dtype, seed: int = 0, names: list[str] | None = None) -> dict:
    """Real-size components with random weights, created on ``device``. Tokenizer is the stand-in."""
    from accelerate import init_empty_weights

    out = {}
    for name, comp in spec.components.items():
        if names is not None and name not in names:
            continue
        if comp.has_weights:
            with init_empty_weights(include_buffers=False):
                module = _construct(comp)
            out[name] = materialise(module, device, dtype, seed)
        else:
            out[name] = build_non_module(comp)
    return out


def assemble(spec: ModelSpec, components: dict, workflow: str = "txt2img"):
    """The spec's diffusers pipeline for ``workflow`` from built components."""
    import diffusers

    cls = getattr(diffusers, spec.pipelines[workflow])
    extras = SD_EXTRAS if spec.family == "sd15" else {}
    return cls(**components, **extras)
