"""Memory plans: predict whether a model fits a card, pick the fastest plan that fits, apply it.

A plan is a ``Strategy`` (one enum member each: a name, an ``estimate`` and an ``apply``) plus
modifiers the estimate chooses: VAE tiling/slicing, and where the text encoder lives ("device":
resident; "streamed": leaf-level group offloading onto the GPU only while a prompt is encoded, from pinned
host RAM, its embeddings cached per prompt; "paged": the same from pageable host RAM, copied in and out
synchronously, where the pinned copy (torch rounds it up) does not fit the host; "managed": accelerate's
offload hooks move it). Estimating needs no torch (``lightdiff fit`` runs without it); applying imports
torch lazily (runtime/plan_apply.py).
The cost model and where each of its numbers comes from: runtime/plan_model.py.

Strategies, fastest first when they fit:
- resident: every component on the GPU in the compute dtype (fp16/bf16).
- fp8-storage: the denoiser's weights stored in fp8 and cast per layer for compute (diffusers
  layerwise casting); half the bytes, some time per forward for the casts.
- fp8-compute: the denoiser's linear layers in fp8 with fp8 matmuls (per-row scales, torch._scaled_mm;
  runtime/fp8.py): half the bytes, on cards with fp8 tensor cores (Ada, Hopper). Priced compiled, as
  the engine's speed path runs it; the engine lets the planner pick it only then (--fast auto), since
  eager its per-layer quantization kernels make it slower than bf16. Transformer denoisers only (a
  UNet's convolutions stay in bf16).
- int8-weight: torchao weight-only int8 for the denoiser's linear layers (needs torchao).
- group-offload: the denoiser's blocks split: as many resident as fit, the rest streamed from
  pinned host RAM on a CUDA stream one block ahead (diffusers group offloading), in the compute dtype.
- fp8-group-offload: the same, with fp8 storage for the blocks where it buys speed (fewer bytes to
  keep or to stream); the estimate chooses how many blocks stream and how many are fp8.
- model-offload: each component moves to the GPU when it runs (accelerate, diffusers'
  enable_model_cpu_offload).
- sequential-offload: every layer moves to the GPU when it runs (enable_sequential_cpu_offload):
  the least VRAM, the slowest.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Callable

from lightdiff import specs
from lightdiff.errors import DoesNotFit, InvalidRequest
from lightdiff.runtime import plan_model as m
from lightdiff.runtime.plan_model import Request


@dataclass(frozen=True)
class Estimate:
    """A prediction for one strategy: memory in GiB ("GB"), seconds per image, and whether it fits."""

    peak_vram_gb: float
    host_ram_gb: float
    sec_per_image: float
    fits: bool
    reason: str
    options: dict = field(default_factory=dict)  # modifiers the estimate chose (tiling, text encoder, layout)

    def to_dict(self) -> dict:
        return {"peak_vram_gb": round(self.peak_vram_gb, 2), "host_ram_gb": round(self.host_ram_gb, 2),
                "sec_per_image": round(self.sec_per_image, 3), "fits": self.fits, "reason": self.reason,
                "options": self.options}


# --- the pieces every estimate shares --------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    """One candidate configuration: what stays on the GPU, what is transient, what lives in host RAM."""

    gpu_weights: float
    denoise_transient: float
    host: float
    per_call_s: float
    options: dict
    per_image_extra_s: float = 0.0
    note: str = ""


def _text_encoder_modes(r: Request) -> list[str]:
    return ["device", "streamed", "paged"] if m.has_text_encoder(r.spec) else ["none"]


def _finish(r: Request, parts: _Parts, tiling: m.Tiling, te_mode: str, needs: str | None = None) -> Estimate:
    """Peak, host RAM, time and the fit verdict for one candidate."""
    p, dt = r.profile, m.compute_dtype(r.spec)
    te = m.gib(r.spec.params_M("text_encoder"), dt) if te_mode != "none" else 0.0
    vae = m.gib(r.spec.params_M("vae"), dt)
    gpu = parts.gpu_weights + vae + p.overhead_gib + r.extra_gib + (te if te_mode == "device" else 0.0)
    transients = [parts.denoise_transient + m.denoise_act_gib(r), m.vae_act_gib(r, tiling, bool(tiling))]
    if te_mode == "device":
        transients.append(p.te_act_gib)
    elif te_mode in ("streamed", "paged"):
        transients.append(m.te_stream_gib(r))
    peak = gpu + max(transients)
    te_host = {"streamed": m.pinned_gib(te, r.spec, "text_encoder"), "paged": te}.get(te_mode, 0.0)
    host = m.HOST_BASE_GIB + parts.host + te_host
    sec = m.seconds_per_image(r, parts.per_call_s, tiling, parts.per_image_extra_s)
    options = {**parts.options, **_vae_options(tiling), "text_encoder": te_mode}
    if needs:
        return Estimate(peak, host, sec, False, needs, options)
    fits_vram = peak <= r.usable_vram_gb
    fits_ram = host <= r.usable_ram_gb
    if fits_vram and fits_ram:
        where = f"{peak:.1f} of {r.vram_gb:.1f} GB" if r.vram_gb is not None else f"{peak:.1f} GB, no VRAM limit"
        reason = f"fits: {where}" + _tiled_words(r, tiling)
        if te_mode == "streamed":
            reason += ", text encoder streamed"
        elif te_mode == "paged":
            reason += f", text encoder paged from host RAM (a new prompt: about {m.te_paged_encode_s(r, te):.1f} s)"
    elif not fits_vram:
        reason = (f"needs {_need_vram(peak):.1f} GB VRAM with margin (peak {peak:.1f}); "
                  f"budget {r.vram_gb:.1f} GB")
    else:
        reason = f"needs {host + m.HOST_MARGIN_GIB:.1f} GB host RAM; have {r.ram_gb:.1f} GB"
    if parts.note:
        reason += f"; {parts.note}"
    if not m.flops_known(r):
        reason += "; time from 2*params*tokens (FLOPs not counted for this architecture)"
    return Estimate(peak, host, sec, fits_vram and fits_ram, reason, options)


VAE_MODES = ("vae_tiling", "vae_slicing", "vae_tile_px")  # the keys _vae_options writes: modes, not placement


def _vae_options(tiling: m.Tiling) -> dict:
    """The plan's VAE modifiers; half tiles add their side (``vae_tile_px``), which plan_apply sets."""
    out = {"vae_tiling": bool(tiling), "vae_slicing": bool(tiling)}
    if tiling is not True and tiling:
        out["vae_tile_px"] = int(tiling)
    return out


def _tiled_words(r: Request, tiling: m.Tiling) -> str:
    if not tiling:
        return ""
    return f", VAE tiled ({m.tile_side(r, tiling)} px)"


def _need_vram(peak: float) -> float:
    return peak * (1 + m.VRAM_MARGIN_FRAC) + m.VRAM_MARGIN_GIB


def _best(candidates: list[Estimate]) -> Estimate:
    """The fastest candidate that fits, else the one that needs the least (VRAM, then RAM)."""
    fitting = [e for e in candidates if e.fits]
    if fitting:  # a paged text encoder costs host RAM less and each new prompt more: only where nothing else fits
        return min(fitting, key=lambda e: (e.sec_per_image, e.options.get("text_encoder") == "paged"))
    return min(candidates, key=lambda e: (e.peak_vram_gb, e.host_ram_gb))


def _over_modifiers(r: Request, build: Callable[[m.Tiling, str], tuple[_Parts, str | None]],
                    fixed: dict | None = None) -> Estimate:
    """Try the modifiers (untiled/tiled VAE, text encoder resident/streamed/paged); keep the best.
    ``fixed`` pins the text encoder's place (a loaded plan re-estimated for another request)."""
    out = []
    te_modes = [fixed["text_encoder"]] if fixed and "text_encoder" in fixed else _text_encoder_modes(r)
    for tiling in m.vae_tile_modes(r):
        for te_mode in te_modes:
            parts, needs = build(tiling, te_mode)
            out.append(_finish(r, parts, tiling, te_mode, needs))
    return _best(out)


def _den_params(r: Request) -> float:
    return r.spec.params_M(r.profile.denoiser)


# --- one estimate per strategy ---------------------------------------------------------------------


def _estimate_resident(r: Request, fixed: dict | None = None) -> Estimate:
    loop = m.loop_call_s(r)  # SD1.5's compiled loop, where the request runs it

    def build(tiling, te_mode):
        den = m.gib(_den_params(r), m.compute_dtype(r.spec))
        if loop is None:
            return _Parts(den, 0.0, 0.0, m.call_compute_s(r), {}), None
        plain = m.seconds_per_image(r, m.call_compute_s(r), tiling)
        return _Parts(den, 0.0, 0.0, loop, {}, note=f"time of the compiled loop (txt2img with Euler, --fast auto); "
                                                     f"diffusers' loop: about {plain:.2f} s"), None
    return _over_modifiers(r, build, fixed)


def _estimate_fp8(r: Request, fixed: dict | None = None) -> Estimate:
    def build(tiling, te_mode):
        parts = _Parts(m.gib(_den_params(r), "fp8"), 0.0, 0.0,
                       m.call_compute_s(r) + m.cast_s_per_call(r, _den_params(r)), {"storage": "fp8"})
        return parts, None
    return _over_modifiers(r, build, fixed)


def torchao_available() -> bool:
    return importlib.util.find_spec("torchao") is not None


def _estimate_int8(r: Request, fixed: dict | None = None) -> Estimate:
    needs = None if torchao_available() else "needs torchao (pip install torchao)"

    def build(tiling, te_mode):
        parts = _Parts(m.gib(_den_params(r), "int8"), 0.0, 0.0,
                       m.call_compute_s(r) + m.cast_s_per_call(r, _den_params(r), m.INT8_DEQUANT_BYTES_PER_PARAM),
                       {"storage": "int8"},
                       note="int8 speed assumed (unmeasured)")
        return parts, needs
    return _over_modifiers(r, build, fixed)


def _estimate_fp8_compute(r: Request, fixed: dict | None = None) -> Estimate:
    needs = None
    if r.profile.blocks_attr is None:
        needs = "fp8 compute is for transformer denoisers (a UNet is mostly convolutions)"
    elif r.card.fp8_tflops is None:
        needs = f"needs fp8 tensor cores (Ada or Hopper); {r.card.name} has none"

    def build(tiling, te_mode):
        # priced compiled: the engine picks it only with its speed path on (--fast auto), which compiles it
        per_call = m.call_compute_s(r, m.FP8_COMPILED_COMPUTE_FACTOR)
        return _Parts(m.gib(_den_params(r), "fp8"), 0.0, 0.0, per_call, {"storage": "fp8", "compute": "fp8"},
                      note="time compiled (--fast auto); eager it is about 3x slower"), needs
    return _over_modifiers(r, build, fixed)


def _group_parts(r: Request, tiling: m.Tiling, te_mode: str, allow_fp8: bool, layout: dict | None = None) -> _Parts:
    """Group offloading: partial residency where the denoiser has a block list, else stream it all."""
    dt = m.compute_dtype(r.spec)
    den_M = _den_params(r)
    info = m.block_info(r.spec, r.profile.denoiser)
    if info is None:  # stream the whole denoiser (block-level groups of its ModuleLists)
        storage = "fp8" if allow_fp8 else dt
        resident = m.gib(r.profile.stream_group_params_M, storage) + m.gib(den_M * 0.12, dt)
        copy = m.transfer_s(r, m.gib(den_M, storage))
        compute = m.call_compute_s(r)
        per_call = (compute + max(0.0, copy - (compute - r.profile.call_overhead_s)) + 8 * m.GROUP_SYNC_S
                    + (m.cast_s_per_call(r, den_M) if allow_fp8 else 0.0))
        host = m.pinned_gib(m.gib(den_M, storage), r.spec, r.profile.denoiser)
        return _Parts(resident, 0.0, host, per_call, {"storage": storage, "layout": "all streamed"})
    # room for the denoiser = what fits minus everything else on the GPU at its largest transient
    if isinstance(layout, dict):  # a placement already made: cost it as it is
        fixed_layout = m.BlockLayout(layout["blocks"], layout["streamed"], layout["resident_fp8"],
                                     layout["streamed_dtype"])
        cost = m.layout_cost(r, fixed_layout)
        return _Parts(cost.gpu_weights_gib, cost.buffers_gib, cost.host_gib, cost.per_call_s,
                      {"layout": fixed_layout.to_dict()})
    zero = _Parts(0.0, 0.0, 0.0, 0.0, {})
    other = _finish(r, zero, tiling, te_mode)
    room = r.usable_vram_gb - other.peak_vram_gb if r.vram_gb is not None else math.inf
    if math.isinf(room):  # no budget: the default layout streams half the blocks (tests, CPU)
        n = info[0]
        layout = m.BlockLayout(n, n // 2, (n - n // 2) // 2 if allow_fp8 else 0, "fp8" if allow_fp8 else dt)
        cost = m.layout_cost(r, layout)
    else:
        cost = m.best_layout(r, room, allow_fp8)
        if cost is None:  # nothing fits: report the smallest layout (all streamed)
            cost = m.layout_cost(r, m.BlockLayout(info[0], info[0], 0, "fp8" if allow_fp8 else dt))
    # the block buffers are only live while denoising; count them against that transient
    return _Parts(cost.gpu_weights_gib, cost.buffers_gib, cost.host_gib, cost.per_call_s,
                  {"layout": cost.layout.to_dict()})


def _estimate_group(r: Request, fixed: dict | None = None) -> Estimate:
    layout = (fixed or {}).get("layout")
    return _over_modifiers(r, lambda tiling, te: (_group_parts(r, tiling, te, False, layout), None), fixed)


def _estimate_fp8_group(r: Request, fixed: dict | None = None) -> Estimate:
    layout = (fixed or {}).get("layout")
    return _over_modifiers(r, lambda tiling, te: (_group_parts(r, tiling, te, True, layout), None), fixed)


def _all_weights_gib(r: Request) -> float:
    dt = m.compute_dtype(r.spec)
    return sum(m.gib(r.spec.params_M(c), dt) for c in r.spec.weight_components())


def _estimate_model_offload(r: Request, fixed: dict | None = None) -> Estimate:
    """accelerate moves one whole component at a time: the peak is the largest component at work."""
    dt = m.compute_dtype(r.spec)
    p = r.profile

    def build(tiling, te_mode):
        den = m.gib(_den_params(r), dt)
        # per pipeline call the denoiser is copied in and, when the VAE runs, back out (pageable memory)
        move = 2 * m.transfer_s(r, den, pinned=False) / r.batch
        return _Parts(den, 0.0, _all_weights_gib(r), m.call_compute_s(r), {}, per_image_extra_s=move), None

    out = []
    for tiling in (False, True):
        parts, _ = build(tiling, "managed")
        vae = m.gib(r.spec.params_M("vae"), dt)
        te = m.gib(r.spec.params_M("text_encoder"), dt) if m.has_text_encoder(r.spec) else 0.0
        peak = p.overhead_gib + r.extra_gib + max(parts.gpu_weights + m.denoise_act_gib(r),
                                                  vae + m.vae_act_gib(r, tiling, tiling), te + p.te_act_gib)
        out.append(_managed_estimate(r, peak, parts, tiling))
    return _best(out)


def _estimate_sequential(r: Request, fixed: dict | None = None) -> Estimate:
    """accelerate moves one layer at a time, synchronously: the peak is the largest layer at work."""
    dt = m.compute_dtype(r.spec)
    p = r.profile
    out = []
    for tiling in (False, True):
        copy = m.transfer_s(r, m.gib(_den_params(r), dt), pinned=False)
        parts = _Parts(0.0, 0.0, _all_weights_gib(r), m.call_compute_s(r) + copy, {})
        leaf = m.gib(m.TE_LARGEST_LEAF_M.get(r.spec.family, 0.0), dt)
        peak = p.overhead_gib + r.extra_gib + leaf + max(m.denoise_act_gib(r), m.vae_act_gib(r, tiling, tiling),
                                                         p.te_act_gib)
        out.append(_managed_estimate(r, peak, parts, tiling))
    return _best(out)


def _managed_estimate(r: Request, peak: float, parts: _Parts, tiling: bool) -> Estimate:
    host = m.HOST_BASE_GIB + parts.host
    sec = m.seconds_per_image(r, parts.per_call_s, tiling, parts.per_image_extra_s)
    options = {"vae_tiling": tiling, "vae_slicing": tiling, "text_encoder": "managed"}
    fits_vram, fits_ram = peak <= r.usable_vram_gb, host <= r.usable_ram_gb
    if fits_vram and fits_ram:
        reason = "fits: " + (f"{peak:.1f} of {r.vram_gb:.1f} GB" if r.vram_gb is not None else f"{peak:.1f} GB")
        reason += ", every weight in host RAM" + (", VAE tiled" if tiling else "")
    elif not fits_vram:
        reason = f"needs {_need_vram(peak):.1f} GB VRAM with margin (peak {peak:.1f}); budget {r.vram_gb:.1f} GB"
    else:
        reason = f"needs {host + m.HOST_MARGIN_GIB:.1f} GB host RAM (all weights); have {r.ram_gb:.1f} GB"
    return Estimate(peak, host, sec, fits_vram and fits_ram, reason, options)


# --- the strategies ------------------------------------------------------------------------------


@dataclass(frozen=True)
class StrategyDef:
    name: str
    summary: str
    estimate_fn: Callable[..., Estimate]  # (Request, fixed options or None) -> Estimate
    apply_fn: str  # a function in runtime/plan_apply.py (imported lazily: it needs torch)
    load_on_cpu: bool  # build/load weights in host RAM first, then place (the full model may not fit)
    lossy: bool  # weights change (fp8/int8): equal to resident within a tolerance, not exactly
    auto: bool = True  # may `choose` pick it? (False: only when asked for by name)
    cuda_only: bool = False  # cannot run with the CPU as the execution device


class Strategy(Enum):
    """Memory strategies. A new one is one member here: its estimate and the name of its apply."""

    RESIDENT = StrategyDef("resident", "everything on the GPU in fp16/bf16", _estimate_resident,
                           "apply_resident", False, False)
    FP8_STORAGE = StrategyDef("fp8-storage", "denoiser weights stored in fp8 (diffusers layerwise casting)",
                              _estimate_fp8, "apply_fp8_storage", True, True)
    FP8_COMPUTE = StrategyDef("fp8-compute", "denoiser linear layers in fp8 with fp8 matmuls",
                              _estimate_fp8_compute, "apply_fp8_compute", True, True, cuda_only=True)
    # Not picked automatically: its speed is an assumption until measured on a GPU with torchao.
    INT8_WEIGHT = StrategyDef("int8-weight", "denoiser linear layers int8 weight-only (torchao)",
                              _estimate_int8, "apply_int8_weight", True, True, auto=False)
    GROUP_OFFLOAD = StrategyDef("group-offload", "part of the denoiser's blocks streamed from host RAM (CUDA stream)",
                                _estimate_group, "apply_group_offload", True, False)
    FP8_GROUP_OFFLOAD = StrategyDef("fp8-group-offload", "group offload with fp8 storage where it buys speed",
                                    _estimate_fp8_group, "apply_fp8_group_offload", True, True)
    MODEL_OFFLOAD = StrategyDef("model-offload", "one component on the GPU at a time (accelerate)",
                                _estimate_model_offload, "apply_model_offload", True, False)
    # accelerate's sequential offload fails with the CPU as execution device (its post-forward
    # re-creates parameters on "meta" with a signature plain tensors lack), so: CUDA only.
    SEQUENTIAL_OFFLOAD = StrategyDef("sequential-offload", "one layer on the GPU at a time (accelerate)",
                                     _estimate_sequential, "apply_sequential_offload", True, False,
                                     cuda_only=True)

    @property
    def label(self) -> str:
        return self.value.name

    def estimate(self, spec, width: int, height: int, batch: int = 1, card_or_budget=None, *,
                 steps: int | None = None, ram_gb: float | None = None, fixed: dict | None = None) -> Estimate:
        """Predict peak VRAM, host RAM and seconds per image. ``card_or_budget``: a Card, a card
        name, a VRAM budget in GB, or None (no limit). ``fixed`` pins modifiers, e.g.
        {"text_encoder": "none"} for embeddings computed elsewhere. Torch-free."""
        return self.value.estimate_fn(request_for(spec, width, height, batch, card_or_budget, steps=steps,
                                                  ram_gb=ram_gb), fixed)

    def apply(self, loaded, device: str, budget=None, plan: "Plan | None" = None):
        """Place ``loaded`` (a LoadedModel whose weights are on the CPU, or on ``device`` for resident)."""
        from lightdiff.runtime import plan_apply

        if plan is None:
            spec = loaded.spec
            plan = plan_for(self, spec, spec.defaults.width, spec.defaults.height, 1,
                            budget if isinstance(budget, (int, float)) else None)
        return getattr(plan_apply, self.value.apply_fn)(loaded, device, plan)

    @classmethod
    def named(cls, name: str) -> "Strategy":
        for s in cls:
            if s.label == name:
                return s
        raise InvalidRequest("plan", f"Unknown memory plan {name!r}.",
                             f"Use auto or one of: {', '.join(s.label for s in cls)}.")


def names() -> list[str]:
    return [s.label for s in Strategy]


def request_for(spec, width, height, batch=1, card_or_budget=None, *, steps=None, ram_gb=None,
                vram_gb: float | None = None, card=None, extra_params_M: float = 0.0,
                compiled_loop: bool = False) -> Request:
    """Normalise the ways a budget is given: a card (its VRAM), a card name, or GB. ``card`` (a Card
    or a name) only sets the card speeds are predicted for; it implies no budget."""
    from lightdiff.specs.cards import Card, find_card

    spec = specs.get(spec) if isinstance(spec, str) else spec
    speed_card = find_card(card) if isinstance(card, str) else card
    card = None
    if isinstance(card_or_budget, Card):
        card = card_or_budget
    elif isinstance(card_or_budget, str):
        card = find_card(card_or_budget)
    elif card_or_budget is not None:
        vram_gb = float(card_or_budget)
    if vram_gb is None and card is not None:
        vram_gb = card.vram_gb
    return m.make_request(spec, width, height, batch, steps, vram_gb, ram_gb, card or speed_card, extra_params_M,
                          compiled_loop)


# --- plans -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A strategy with its chosen modifiers and its prediction for the request it was chosen for."""

    strategy: Strategy
    estimate: Estimate
    model: str
    width: int
    height: int
    batch: int
    vram_gb: float | None
    ram_gb: float | None
    card: str
    extra_params_M: float = 0.0  # a workflow's own weights on the GPU (a ControlNet)
    compiled_loop: bool = False  # priced as the engine's compiled loop runs it (plan_model.Request)

    @property
    def name(self) -> str:
        return self.strategy.label

    @property
    def options(self) -> dict:
        return self.estimate.options

    @property
    def loads_on_host(self) -> bool:
        """Are the weights loaded into host RAM first (every plan but resident, or a text encoder kept there)?"""
        return bool(self.strategy.value.load_on_cpu or self.options.get("text_encoder") in ("streamed", "paged"))

    def info(self) -> dict:
        """What goes into LoadedModel.plan_info and so into every image's metadata."""
        return {"strategy": self.name, "predicted": self.estimate.to_dict(),
                "for": {"width": self.width, "height": self.height, "batch": self.batch,
                        **({"extra_params_M": self.extra_params_M} if self.extra_params_M else {})},
                "vram_budget_gb": self.vram_gb, "ram_budget_gb": self.ram_gb, "card": self.card}

    def at(self, width: int, height: int, batch: int = 1, steps: int | None = None,
           extra_params_M: float | None = None, compiled_loop: bool | None = None) -> "Plan":
        """This plan's placement (text encoder, block layout) re-estimated for another request (with its
        own workflow weights and loop, when given). VAE tiling is left free: it can be switched on without
        reloading."""
        fixed = {k: v for k, v in self.options.items() if k in ("text_encoder", "layout")}
        extra = self.extra_params_M if extra_params_M is None else extra_params_M
        loop = self.compiled_loop if compiled_loop is None else compiled_loop
        r = request_for(self.model, width, height, batch, steps=steps, ram_gb=self.ram_gb, vram_gb=self.vram_gb,
                        card=self.card, extra_params_M=extra, compiled_loop=loop)
        estimate = self.strategy.value.estimate_fn(r, fixed)
        keep = {k: v for k, v in self.options.items() if k == "fallback"}
        return replace(self, estimate=replace(estimate, options={**estimate.options, **keep}),
                       width=r.width, height=r.height, batch=r.batch, extra_params_M=r.extra_params_M,
                       compiled_loop=r.compiled_loop)

    def with_options(self, **options) -> "Plan":
        return replace(self, estimate=replace(self.estimate, options={**self.estimate.options, **options}))


def plan_for(strategy: Strategy, spec, width, height, batch=1, vram_gb=None, ram_gb=None, card=None,
             steps=None, extra_params_M: float = 0.0, compiled_loop: bool = False) -> Plan:
    """``extra_params_M``: weights a workflow adds on the GPU (a ControlNet), millions of parameters.
    ``compiled_loop``: the request runs the engine's compiled loop where the family has one (SD1.5's txt2img
    with Euler under --fast auto on a GPU), so resident is priced as that loop runs."""
    r = request_for(spec, width, height, batch, steps=steps, ram_gb=ram_gb, vram_gb=vram_gb, card=card,
                    extra_params_M=extra_params_M, compiled_loop=compiled_loop)
    return Plan(strategy, strategy.value.estimate_fn(r), r.spec.id, r.width, r.height, r.batch, r.vram_gb,
                r.ram_gb, r.card.name, r.extra_params_M, r.compiled_loop)


def estimate_all(spec, width, height, batch=1, vram_gb=None, ram_gb=None, card=None, steps=None,
                 extra_params_M: float = 0.0, compiled_loop: bool = False) -> list[Plan]:
    return [plan_for(s, spec, width, height, batch, vram_gb, ram_gb, card, steps, extra_params_M, compiled_loop)
            for s in Strategy]


def choose(spec, width, height, batch=1, budget_gb=None, ram_gb=None, card=None, steps=None,
           exclude: tuple[Strategy, ...] = (), device: str = "cuda", extra_params_M: float = 0.0,
           compiled_loop: bool = False) -> Plan:
    """The fastest plan predicted to fit (with the margin in plan_model.VRAM_MARGIN_*).

    Raises DoesNotFit, saying what the least demanding plan needs and what to change."""
    plans = [p for p in estimate_all(spec, width, height, batch, budget_gb, ram_gb, card, steps, extra_params_M,
                                     compiled_loop)
             if p.strategy not in exclude]
    fitting = [p for p in plans if p.estimate.fits and usable(p.strategy, device, automatic=True)]
    if fitting:
        return min(fitting, key=lambda p: p.estimate.sec_per_image)
    raise does_not_fit(plans)


def plan_key(plan: Plan) -> tuple:
    """Two plans with the same key place the weights the same way. The VAE's modes (tiling, its tile side,
    slicing) are not placement: the engine switches them per request, so they never force a reload."""
    placement = {k: v for k, v in plan.options.items() if k not in VAE_MODES + ("fallback",)}
    return plan.name, repr(sorted(placement.items()))


def excluded_for(fast: str) -> tuple[Strategy, ...]:
    """Plans the planner may not pick with the engine's speed path in mode ``fast``: fp8 compute unless the
    speed path compiles it (its estimate is priced compiled; eager, its per-layer quantization kernels make it
    slower than bf16), and it is not bf16's numbers. The engine and `lightdiff fit` share this rule."""
    return () if fast == "auto" else (Strategy.FP8_COMPUTE,)


def usable(strategy: Strategy, device: str, automatic: bool = False) -> bool:
    """Can ``strategy`` run on ``device`` (and, when ``automatic``, may choose pick it)?"""
    if automatic and not strategy.value.auto:
        return False
    return not (strategy.value.cuda_only and not str(device).startswith("cuda"))


def cheaper(plan: Plan, tried: set | None = None, steps=None, device: str = "cuda",
            exclude: tuple[Strategy, ...] = ()) -> Plan | None:
    """After an OOM: the next plan to try, or None when none is left.

    Candidates are the automatic strategies predicted to need no more VRAM than ``plan`` (each also
    re-sized for 85% of its peak, so group offloading can stream more blocks), not tried before;
    the fastest one predicted to fit goes first."""
    tried = set(tried or ()) | {plan_key(plan)}
    limit = plan.estimate.peak_vram_gb + 1e-9
    shrunk = _need_vram(plan.estimate.peak_vram_gb * 0.85)
    budgets = [plan.vram_gb, shrunk] if plan.vram_gb is not None else [None, shrunk]
    candidates = {}
    for strategy in Strategy:
        if strategy in exclude or not usable(strategy, device, automatic=True):
            continue
        for vram in budgets:
            p = plan_for(strategy, plan.model, plan.width, plan.height, plan.batch, vram, plan.ram_gb, plan.card, steps,
                         plan.extra_params_M, plan.compiled_loop)
            if plan_key(p) in tried or p.estimate.peak_vram_gb > limit:
                continue
            p = replace(p, vram_gb=plan.vram_gb)  # judged against the real budget from here on
            candidates.setdefault(plan_key(p), p)
    if not candidates:
        return None
    return min(candidates.values(), key=lambda p: (not p.estimate.fits, p.estimate.sec_per_image))


def _pins_rounded(plan: Plan) -> bool:
    """Does the plan stream weights that diffusers pins (torch rounding each up to a power of two), in-place
    pinning being turned off?"""
    from lightdiff.runtime import pinned

    layout = plan.options.get("layout")
    streams = plan.options.get("text_encoder") == "streamed" or layout == "all streamed" or (
        isinstance(layout, dict) and layout.get("streamed", 0) > 0)
    return streams and not pinned.enabled()


def does_not_fit(plans: list[Plan], asked: Plan | None = None) -> DoesNotFit:
    """The error for a request no plan fits (or, with ``asked``, that the asked plan does not fit)."""
    p0 = asked or min(plans, key=_shortfall)
    e = p0.estimate
    size = f"{p0.model} at {p0.width}x{p0.height}" + (f", batch {p0.batch}" if p0.batch > 1 else "")
    need_vram, need_ram = _need_vram(e.peak_vram_gb), e.host_ram_gb + m.HOST_MARGIN_GIB
    parts = []
    if p0.vram_gb is not None and need_vram > p0.vram_gb:
        parts.append(f"{size} needs about {need_vram:.1f} GB with plan {p0.name}; the budget is {p0.vram_gb:.1f} GB.")
    if p0.ram_gb is not None and need_ram > p0.ram_gb:
        parts.append(("" if parts else f"{size} with plan {p0.name} ")
                     + f"needs about {need_ram:.1f} GB of host RAM; there is {p0.ram_gb:.1f} GB.")
    message = " ".join(parts) or f"{size} does not fit with plan {p0.name}: {e.reason}."
    fitting = [p for p in plans if p.estimate.fits and p is not asked]
    if asked is not None and fitting:
        best = min(fitting, key=lambda p: p.estimate.sec_per_image)
        hint = f"Use --plan {best.name} (or auto), a smaller size, or a larger --vram-budget."
    else:
        fixes = []
        if p0.vram_gb is not None and need_vram > p0.vram_gb:
            fixes.append(f"a card or --vram-budget of at least {math.ceil(need_vram)} GB")
            fixes.append(f"a smaller size than {p0.width}x{p0.height}" + (" or batch" if p0.batch > 1 else ""))
        if p0.ram_gb is not None and need_ram > p0.ram_gb:
            fixes.append(f"a machine with at least {math.ceil(need_ram)} GB of host RAM")
            if _pins_rounded(p0):
                fixes.append("LIGHTDIFF_PIN_IN_PLACE=1, the default (streamed weights pinned at their own size, "
                             "not rounded up to powers of two)")
        if p0.model.startswith("qwen"):
            fixes.append("a smaller model (sd15 needs under 4 GB of VRAM and RAM)")
        hint = f"With plan {p0.name}: use " + ", or ".join(fixes) + "."
    return DoesNotFit(message, hint, details={"model": p0.model, "width": p0.width, "height": p0.height,
                                              "batch": p0.batch, "plan": p0.name,
                                              "needs_vram_gb": round(need_vram, 1),
                                              "needs_ram_gb": round(need_ram, 1),
                                              "vram_budget_gb": p0.vram_gb, "ram_budget_gb": p0.ram_gb})


def _shortfall(p: Plan) -> float:
    """How far a plan is from fitting: the larger of needed/available, for VRAM and for host RAM."""
    e = p.estimate
    vram = _need_vram(e.peak_vram_gb) / p.vram_gb if p.vram_gb else 0.0
    ram = (e.host_ram_gb + m.HOST_MARGIN_GIB) / p.ram_gb if p.ram_gb else 0.0
    return max(vram, ram)
