"""Applying memory plans to a loaded pipeline, with diffusers' and accelerate's own tools (torch).

Each ``apply_*`` takes a LoadedModel (weights in host RAM, or already on ``device`` for the
resident plan), places its components as the plan says and installs the run-time helpers every
plan shares (``PlanState``): the prompt-embedding cache that runs the text encoder once per prompt,
and the VAE decode guard that catches NaN output (retrying the decode in float32 once for sd15).
"""

from __future__ import annotations

import contextlib
import inspect
from collections import OrderedDict

from lightdiff import settings
from lightdiff.errors import BadOutput, LightdiffError
from lightdiff.runtime import pinned, plan_model

PROMPT_CACHE_SIZE = 16


# --- the state every plan installs -------------------------------------------------------------


class PlanState:
    """Run-time companions of a plan: prompt-embedding cache, VAE guard, the stage now running."""

    def __init__(self, loaded, device: str, plan):
        self.plan = plan
        self.device = device
        self.family = loaded.spec.family
        self.stage = "idle"  # encode | denoise | decode: where an OOM happened
        self.vae_fp32 = False
        self.events: list[str] = []  # fallbacks taken inside a run (e.g. "vae-fp32"), read by the engine
        self.embeddings: OrderedDict = OrderedDict()
        self.encoder_runs = 0

    def attach(self, pipe) -> None:
        """Give a pipeline (the txt2img one or one derived from it) the cached prompt encoder."""
        if getattr(pipe, "_lightdiff_cached_encode", False) or not hasattr(pipe, "encode_prompt"):
            return
        original = pipe.encode_prompt
        signature = inspect.signature(original)
        qualname = type(pipe).encode_prompt.__qualname__

        def encode_prompt(*args, **kwargs):
            self.stage = "encode"
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            key = _cache_key(qualname, bound.arguments)
            if key is None:  # embeddings passed in, or unhashable arguments: no caching
                return original(*args, **kwargs)
            if key in self.embeddings:
                self.embeddings.move_to_end(key)
                return self.embeddings[key]
            out = original(*args, **kwargs)
            self.encoder_runs += 1
            self.embeddings[key] = out
            while len(self.embeddings) > PROMPT_CACHE_SIZE:
                self.embeddings.popitem(last=False)
            self.stage = "denoise"
            return out

        pipe.encode_prompt = encode_prompt
        pipe._lightdiff_cached_encode = True

    def guard_vae(self, vae) -> None:
        """Check every decode for NaN/inf; for sd15 retry it once in float32, then raise BadOutput."""
        if getattr(vae, "_lightdiff_guarded", False):
            return
        import torch

        original = vae.decode

        def decode(z, *args, **kwargs):
            self.stage = "decode"
            if torch.is_floating_point(z) and z.dtype != vae.dtype:
                z_in = z.to(vae.dtype)  # the VAE may have been upcast to float32 after a bad decode
            else:
                z_in = z
            out = original(z_in, *args, **kwargs)
            sample = out[0] if isinstance(out, tuple) else out.sample
            if bool(torch.isfinite(sample).all()):
                return out
            if self.family == "sd15" and not self.vae_fp32:
                self.vae_fp32 = True
                self.events.append("vae-fp32")
                vae.to(torch.float32)
                return decode(z, *args, **kwargs)
            raise BadOutput(
                f"The VAE decode produced NaN or infinite pixels ({self.family}, VAE in "
                f"{str(vae.dtype).replace('torch.', '')}"
                + (", already retried in float32)." if self.vae_fp32 else ")."),
                "The latents were already broken: try another seed or scheduler, or --plan resident "
                "(no fp8 storage); if it persists, check the weights.")

        vae.decode = decode
        vae._lightdiff_guarded = True


def _freeze(value):
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


def _cache_key(qualname: str, arguments: dict):
    import torch

    items = []
    for name, value in sorted(arguments.items()):
        if name in ("device", "self"):
            continue
        if isinstance(value, torch.Tensor):
            return None
        value = _freeze(value)
        try:
            hash(value)
        except TypeError:
            return None
        items.append((name, value))
    return (qualname, tuple(items))


# --- shared placement ------------------------------------------------------------------------


def denoiser(loaded):
    return getattr(loaded.pipe, plan_model.PROFILES[loaded.spec.family].denoiser)


def _is_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def _place_others(loaded, device: str, plan) -> None:
    """VAE on the device, the text encoder where the plan says, VAE tiling/slicing as chosen."""
    pipe = loaded.pipe
    pipe.vae.to(device)
    _place_text_encoder(loaded, device, plan.options.get("text_encoder", "device"))
    _vae_modifiers(pipe, plan.options)


def _pin(loaded, part: str, module, owner=None) -> None:
    """Pin ``module``'s host weights in place (runtime/pinned.py) and record what happened in plan_info, so a
    fallback to diffusers' own pinning (or no CUDA: nothing pinned) shows in every image's metadata and the
    benchmark rows."""
    loaded.pinned[part] = pinned.pin_module(module, owner=owner)


def _place_text_encoder(loaded, device: str, mode: str) -> None:
    te = getattr(loaded.pipe, "text_encoder", None)
    if te is None or mode in ("none", "managed"):
        return
    if mode == "device":
        te.to(device)
        return
    # weights stay in host RAM; each leaf layer visits the GPU while a prompt is encoded (diffusers group
    # offloading, leaf level). "streamed": from pinned memory, with a CUDA stream to prefetch the next layer;
    # "paged": from pageable memory, copied in and out synchronously, for hosts without RAM for the pinned copy
    # (torch rounds each pinned tensor up to a power of two: plan_model.PINNED_ROUNDING).
    from diffusers.hooks import apply_group_offloading

    te.to("cpu")
    stream = _is_cuda(device) and mode == "streamed"
    if mode == "streamed" and pinned.enabled():  # one exact-size pinned buffer, not diffusers' per-tensor pinning
        _pin(loaded, "text_encoder", te)
    apply_group_offloading(te, onload_device=device, offload_device="cpu", offload_type="leaf_level",
                           use_stream=stream, record_stream=stream)


def _vae_modifiers(pipe, options: dict) -> None:
    if options.get("vae_tiling"):
        _enable_tiling(pipe.vae, options.get("vae_tile_px"))
    if options.get("vae_slicing"):
        pipe.vae.enable_slicing()


# the tile attributes of diffusers' Qwen-Image (and Wan) VAE, which takes any tile size
_TILE_ATTRS = ("tile_sample_min_height", "tile_sample_min_width", "tile_sample_stride_height",
               "tile_sample_stride_width")


def _enable_tiling(vae, tile_px: int | None = None) -> None:
    """diffusers' tiling; with ``tile_px`` (the planner's half tiles) square tiles of that side at a stride of
    ``plan_model.half_tile_stride``. Without it the VAE's own default tiles, restored if a request before
    had set others (diffusers' enable_tiling keeps the last sizes it was given)."""
    from lightdiff.runtime.plan_model import half_tile_stride

    if not all(hasattr(vae, a) for a in _TILE_ATTRS):  # AutoencoderKL: its own tile size only
        vae.enable_tiling()
        return
    defaults = vae.__dict__.setdefault("_lightdiff_default_tiles", {a: getattr(vae, a) for a in _TILE_ATTRS})
    if tile_px:
        stride = half_tile_stride(tile_px)
        vae.enable_tiling(tile_sample_min_height=tile_px, tile_sample_min_width=tile_px,
                          tile_sample_stride_height=stride, tile_sample_stride_width=stride)
    else:
        vae.enable_tiling(**defaults)


def set_vae_tiling(loaded, on: bool, tile_px: int | None = None) -> None:
    """Decode in tiles (of ``tile_px`` where the plan says, else the VAE's default), one image at a time (a
    request's plan, or the OOM back-off's cheap step), or whole images again for a request whose plan does not
    tile after an earlier, larger one did."""
    vae = loaded.pipe.vae
    if on:
        _enable_tiling(vae, tile_px)
        vae.enable_slicing()
    else:
        vae.disable_tiling()
        vae.disable_slicing()
    loaded.plan_info = {**loaded.plan_info, "vae_tiling": on, "vae_tile_px": tile_px if on else None}


def _finish(loaded, device: str, plan) -> None:
    state = PlanState(loaded, device, plan)
    state.attach(loaded.pipe)
    state.guard_vae(loaded.pipe.vae)
    for derived in loaded._derived.values():
        state.attach(derived)
    loaded.plan_state = state
    loaded.plan = plan.name
    loaded.plan_info = plan.info()
    if loaded.pinned:
        loaded.plan_info["pinned"] = dict(loaded.pinned)
    loaded.device = device


# --- the strategies' apply functions ---------------------------------------------------------------


def apply_resident(loaded, device: str, plan) -> None:
    denoiser(loaded).to(device)
    _place_others(loaded, device, plan)
    _finish(loaded, device, plan)


def apply_fp8_storage(loaded, device: str, plan) -> None:
    import torch

    den = denoiser(loaded)
    # diffusers layerwise casting: weights stored in fp8, each layer cast to the compute dtype for its
    # forward. Norms, embeddings and proj_in/out stay in the compute dtype (diffusers' default skip list).
    den.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=loaded.dtype)
    den.to(device)
    _place_others(loaded, device, plan)
    _finish(loaded, device, plan)


def apply_fp8_compute(loaded, device: str, plan) -> None:
    from lightdiff.runtime import fp8

    reason = fp8.unsupported_reason(device)
    if reason:
        raise LightdiffError(f"Plan fp8-compute cannot run on {device}: {reason}.",
                             "Use --plan auto (it picks fp8-storage or offloading instead).",
                             code="plan_unavailable")
    den = denoiser(loaded)
    scaling = settings.choice("fp8_scaling", fp8.SCALINGS)
    # layer by layer: the bf16 model never sits on the GPU whole
    done = fp8.quantize_denoiser(den, device=device, scaling=scaling)
    if not done["layers"]:  # nothing in fp8: the plan's memory prediction would be wrong, so refuse it
        raise LightdiffError(f"Plan fp8-compute converted no layer on {device}: the GPU refused fp8 matmuls for "
                             f"every shape ({', '.join(done['min_rows'])}).",
                             "Use --plan fp8-storage (fp8 weights, bf16 matmuls) or --plan auto.",
                             code="plan_unavailable")
    den.to(device)
    _place_others(loaded, device, plan)
    _finish(loaded, device, plan)
    loaded.plan_info = {**loaded.plan_info, "fp8": done}


def apply_int8_weight(loaded, device: str, plan) -> None:
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise LightdiffError("Plan int8-weight needs torchao, which is not installed.",
                             "pip install torchao (matching your torch), or use --plan fp8-storage.",
                             code="plan_unavailable") from None
    den = denoiser(loaded)
    quantize_(den, Int8WeightOnlyConfig())
    den.to(device)
    _place_others(loaded, device, plan)
    _finish(loaded, device, plan)


def apply_group_offload(loaded, device: str, plan) -> None:
    _group_offload(loaded, device, plan)


def apply_fp8_group_offload(loaded, device: str, plan) -> None:
    _group_offload(loaded, device, plan)


def apply_model_offload(loaded, device: str, plan) -> None:
    loaded.pipe.enable_model_cpu_offload(device=device)
    _vae_modifiers(loaded.pipe, plan.options)
    _finish(loaded, device, plan)


def apply_sequential_offload(loaded, device: str, plan) -> None:
    loaded.pipe.enable_sequential_cpu_offload(device=device)
    _vae_modifiers(loaded.pipe, plan.options)
    _finish(loaded, device, plan)


# --- group offloading with partial residency ----------------------------------------------------------


def _group_offload(loaded, device: str, plan) -> None:
    """Stream part of the denoiser's blocks from pinned host RAM; keep the rest (and its small
    top-level layers) on the GPU. fp8 storage, where the layout asks for it, is diffusers' layerwise
    casting applied to those blocks only."""
    import torch
    from diffusers.hooks import apply_group_offloading, apply_layerwise_casting

    den = denoiser(loaded)
    cuda = _is_cuda(device)
    offload_kwargs = dict(onload_device=device, offload_device="cpu", offload_type="block_level",
                          num_blocks_per_group=1, use_stream=cuda, record_stream=cuda)
    layout = plan.options.get("layout")
    attr = plan_model.PROFILES[loaded.spec.family].blocks_attr
    if not isinstance(layout, dict) or attr is None:  # no block list: stream every block group
        if plan.options.get("storage") == "fp8":
            den.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=loaded.dtype)
        den.to("cpu")
        if pinned.enabled():
            _pin(loaded, "denoiser", den)
        den.enable_group_offload(**offload_kwargs)
    else:
        blocks = getattr(den, attr)
        lay = plan_model.BlockLayout(layout["blocks"], layout["streamed"], layout["resident_fp8"],
                                     layout["streamed_dtype"])
        if lay.n != len(blocks):
            raise ValueError(f"plan layout is for {lay.n} blocks; {type(den).__name__}.{attr} has {len(blocks)}")
        streamed = lay.streamed_indices()
        fp8 = set(lay.fp8_resident_indices()) | (set(streamed) if lay.streamed_dtype == "fp8" else set())
        for i in sorted(fp8):
            apply_layerwise_casting(blocks[i], storage_dtype=torch.float8_e4m3fn, compute_dtype=loaded.dtype,
                                    skip_modules_pattern="auto")
        # resident blocks and the small top-level layers go to the GPU; streamed blocks stay in host RAM
        for name, child in den.named_children():
            if name != attr:
                child.to(device)
        for tensor in [*den._parameters.values(), *den._buffers.values()]:
            if tensor is not None:
                tensor.data = tensor.data.to(device)
        for i, block in enumerate(blocks):
            if i not in set(streamed):
                block.to(device)
        if streamed:
            if pinned.enabled():  # the streamed blocks in one pinned buffer, released with the denoiser
                _pin(loaded, "denoiser_blocks", torch.nn.ModuleList([blocks[i] for i in streamed]), owner=den)
            with _only_children(den, attr, [blocks[i] for i in streamed]):
                apply_group_offloading(den, **offload_kwargs)
    _place_others(loaded, device, plan)
    _finish(loaded, device, plan)


@contextlib.contextmanager
def _only_children(module, attr: str, streamed: list):
    """Show diffusers a view of ``module`` whose children are just the streamed blocks and one tiny
    layer, then restore it.

    diffusers' block-level group offloading streams every ModuleList child of the module it is given
    and puts the other children in one group that is copied in synchronously at every forward. To
    stream only some blocks and keep the rest resident we hand it this view. The one tiny layer kept
    in the view (the smallest child with weights) becomes that synchronous group, which is also where
    diffusers attaches the hook that learns the block order and starts each block's prefetch. Written
    here because diffusers has no "these blocks only" option (0.42); the hooks themselves are its own.
    """
    import torch

    children = dict(module._modules)
    with_params = [(sum(p.numel() for p in c.parameters()), name) for name, c in children.items()
                   if name != attr and c is not None and any(True for _ in c.parameters())]
    anchor = min(with_params)[1] if with_params else None
    try:
        module._modules.clear()
        module._modules[attr] = torch.nn.ModuleList(streamed)
        if anchor is not None:
            module._modules[anchor] = children[anchor]
            children[anchor].to("cpu")
        yield
    finally:
        module._modules.clear()
        module._modules.update(children)
