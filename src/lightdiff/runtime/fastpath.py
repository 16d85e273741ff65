"""The speed path: stock PyTorch/diffusers techniques the engine applies (``--fast``), each measured alone and
together (tools/speed_bench.py).

- compile: the engine compiles a transformer's repeated blocks (regional compilation); Inductor's caches
  persist across processes under ``<LIGHTDIFF_HOME>/inductor`` so compilation is paid once. Qwen-Image's block is
  precompiled instead (runtime/precompiled_blocks.py: kept on disk, no tracing in a later process, the block stack
  one CUDA graph; H100: ready 3.8-4.9 s after load, against 11-12 s).
- graph loop (SD1.5, Euler): one denoising step (CFG batch, UNet, guidance, Euler update) is a single
  compiled function captured as a CUDA graph, so a step is one graph replay with no host work and no host
  synchronisation between steps. diffusers' loop does several small launches and Python work per step,
  which is what bounds SD1.5 at batch 1 (launch-bound, ~6% of peak). No well-kept library captures the
  whole step, so this loop is ours; it reproduces diffusers' Euler step exactly (a test compares them). The
  engine runs it precompiled (runtime/precompiled.py): step and decoder kept on disk per shape, so a later process
  starts without Dynamo's tracing (H100: ready 5.3-6.4 s after load, against 19.1 s re-tracing).
- fp8 compute and int8 weights are memory plans (runtime/fp8.py, runtime/plan_apply.py), picked by the planner.
- attention: a diffusers attention-dispatcher backend (e.g. _native_cudnn, _native_flash), chosen by
  measurement on the card.
- step caches (First Block Cache, TaylorSeer): change the output; off unless a request asks (``step_cache``).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from lightdiff import settings


PGO_JOB_ID = "lightdiff"


def persist_compile_cache() -> str:
    """Keep Inductor's FX-graph and autotuning caches in the lightdiff home, so a second process reuses them; and
    Dynamo's profile of which input sizes vary (its "automatic dynamic" PGO, kept beside them), so a second process
    traces such a function once, dynamic from the start, instead of static first and again dynamic when the size
    changes (Qwen-Image's blocks see the prompt's and the negative prompt's text lengths in every step: 3 traces
    a warm start, H100, 2026-11-27). torch keeps that profile only for a named job (``torch.compiler.config.job_id``);
    a job id the user set is left alone."""
    import torch

    path = str(settings.home() / "inductor")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", path)
    os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "1")
    os.environ.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "1")
    if torch.compiler.config.job_id is None:
        torch.compiler.config.job_id = PGO_JOB_ID
    return os.environ["TORCHINDUCTOR_CACHE_DIR"]


# What compiling or loading compiled code first imports: Inductor registers its primitives and custom ops at import,
# which took ~4 s of qwen-image-2512's 12.9 s warm start under cProfile (H100, 2026-11-27, validate_planner
# --profile-warmup), after the weights were placed. Not torch._inductor.cudagraph_trees: its import keeps the graph
# trees' state in the importing thread's local storage, and compiled code on the main thread then fails an assertion
# (H100, 2026-11-27: every reduce-overhead compile failed that way until it was taken off this list)
COMPILER_MODULES = ("torch._dynamo", "torch._inductor.inductor_prims", "torch._inductor.compile_fx",
                    "torch._inductor.codecache", "torch._inductor.async_compile", "torch._functorch.aot_autograd",
                    "triton")


def import_compiler_in_background():
    """Import the compile stack on a daemon thread, so it overlaps with loading the weights (pinning host memory and
    copying to the GPU release the GIL) instead of delaying the first image. Returns the thread; an import that
    fails here fails again, with its message, where the code first needs it."""
    import importlib
    import threading

    def run():
        for name in COMPILER_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # e.g. no triton on this machine: compiling says so itself
                pass

    thread = threading.Thread(target=run, name="lightdiff-import-compiler", daemon=True)
    thread.start()
    return thread


def compile_stats(top: int = 10) -> dict:
    """How this process's compilations split (a warm start's time, phase by phase): Inductor's and AOTAutograd's
    cache hits and misses, the graphs Dynamo captured, and the ``top`` slowest compile phases in seconds summed
    over calls (phases nest: a compile's total includes its backend's)."""
    import torch

    counters = torch._dynamo.utils.counters
    caches = {f"{group}.{name}": int(n) for group in ("inductor", "aot_autograd")
              for name, n in counters[group].items() if "cache" in name}
    names, totals = torch._dynamo.utils.compile_times(repr="csv", aggregate=True)
    phases = sorted(((n, round(float(t), 2)) for n, t in zip(names, totals)), key=lambda p: -p[1])[:top]
    return {"graphs": int(counters["stats"].get("unique_graphs", 0)), "caches": caches, "phases_s": dict(phases)}


def denoiser_of(pipe):
    return getattr(pipe, "transformer", None) or pipe.unet


def mark_graph_steps(den, on: bool) -> None:
    """With ``on``, each denoiser call first marks a new CUDA-graph step, so the outputs of true CFG's two calls in
    one denoising step are both kept (without the mark, the second call's graph replays would find the first's
    outputs still live); without, a mark hook left by an earlier compile is removed."""
    import torch

    mark = getattr(den, "_lightdiff_step_mark", None)
    if on and mark is None:
        den._lightdiff_step_mark = den.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())
    elif not on and mark is not None:
        mark.remove()
        den._lightdiff_step_mark = None


def compile_blocks(den, cuda_graphs: bool = False) -> str:
    """Compile a transformer's repeated blocks (regional compilation); with ``cuda_graphs`` each compiled block
    also replays as a CUDA graph (torch.compile's reduce-overhead), each denoiser call marking a new graph step
    (``mark_graph_steps``). Returns what it did."""
    mark_graph_steps(den, cuda_graphs)
    if cuda_graphs:
        den.compile_repeated_blocks(fullgraph=True, mode="reduce-overhead")
        return "repeated blocks, CUDA graphs"
    den.compile_repeated_blocks(fullgraph=True)
    return "repeated blocks"


def precompile_blocks(den, cuda_graphs: bool = False) -> str:
    """Qwen-Image's blocks from one artifact kept on disk (runtime/precompiled_blocks.py): a later process skips
    Dynamo's tracing; with ``cuda_graphs`` (CUDA) the whole stack of blocks replays as one graph; any failure
    compiles them regionally instead (``compile_blocks``). Other transformers are compiled regionally. Returns what
    it did."""
    from lightdiff.runtime import precompiled_blocks

    if not precompiled_blocks.supported(den):
        return compile_blocks(den, cuda_graphs)
    mark_graph_steps(den, False)  # the stack graphs are ours, not torch's graph trees: no steps to mark
    precompiled_blocks.PrecompiledBlocks(den, cuda_graphs=cuda_graphs)
    return "repeated blocks precompiled, CUDA graphs" if cuda_graphs else "repeated blocks precompiled"


def rewrite_attention(den) -> str | None:
    """Before compiling Qwen-Image's blocks: lightdiff's joint-attention processor with fused q/k/v projections
    (runtime/qwen_attention.py), unless ``LIGHTDIFF_QWEN_ATTENTION=0``. Returns what it did (None: nothing).
    qwen-image-2512 1024, fp8 fast accumulation, compiled blocks with CUDA graphs: 4.362 s per image with diffusers'
    processor, 4.303 s with real-arithmetic rotary embeddings (the same image to the bit), 4.288 s with the
    projections fused too (H100, 2026-11-28, one process; docs/benchmarks/2026-11-28b-h100); on two more H100s
    4.315 / 4.253 / 4.191 s and 4.328 / 4.267 / 4.219 s; through the engine under 24 GB 4.315 s with diffusers'
    processor, 4.242 s with this."""
    from lightdiff import settings
    from lightdiff.runtime import qwen_attention

    if not settings.flag("qwen_attention") or not qwen_attention.install(den):
        return None
    qwen_attention.fuse_projections(den)
    return "lightdiff joint attention: real rotary, fused qkv"


def has_cuda_graph_blocks(loaded) -> bool:
    return "CUDA graphs" in str(getattr(loaded, "plan_info", {}).get("compiled", ""))


def reset_cuda_graphs(den=None) -> None:
    """Drop every recorded CUDA graph, with its memory pool, and the compiled code that replays them.

    torch records the blocks' graphs once per input shape and keeps each shape's pool, so under a tight budget
    a second image size can run out of memory beside the first's graphs. The engine's out-of-memory back-off
    calls this first; the blocks compile (from Inductor's cache) or load (precompiled, from disk) and record again
    on their next call."""
    import torch

    torch._dynamo.reset()  # also resets the CUDA-graph trees (their pools), which the old compiled code holds
    blocks = getattr(den, "_lightdiff_precompiled", None)
    if blocks is not None:
        blocks.reset()


def apply_attention_backend(pipe, backend: str) -> None:
    denoiser_of(pipe).set_attention_backend(backend)


# Step caches (diffusers' cache hooks) reuse denoiser work across steps: faster, and a different image. Off
# unless a request asks (``step_cache``); every image that used one says so. MagCache is not offered: diffusers
# needs per-model ratios calibrated on real weights for it, which no machine here has.
STEP_CACHES = ("fbc", "taylorseer")
STEP_CACHE_WARNING = ("step_cache={kind!r} reuses denoiser work across steps and changes the image; a speed-up "
                      "measured on synthetic weights says nothing about its quality on real ones.")


def check_step_cache(kind: str | None, spec) -> None:
    """Before anything loads: an unknown cache, or one for a UNet (diffusers' cache hooks are for
    transformer denoisers), is a clear error naming the value and the fix."""
    from lightdiff.errors import InvalidRequest
    from lightdiff.runtime.plan_model import PROFILES

    if kind is None:
        return
    if kind not in STEP_CACHES:
        raise InvalidRequest("step_cache", f"step_cache={kind!r} is not a step cache lightdiff offers.",
                             f"Use one of: {', '.join(STEP_CACHES)}; or leave it out (the default: no caching).")
    profile = PROFILES.get(spec.family)
    if profile is None or profile.denoiser != "transformer":
        raise InvalidRequest("step_cache", f"step_cache={kind!r} needs a transformer denoiser; {spec.id} "
                             f"({spec.family}) has a UNet, which diffusers' cache hooks do not support.",
                             "Leave step_cache out for this model.")


@contextmanager
def step_cache(pipe, kind: str | None):
    """The denoiser with ``kind``'s cache hooks for the duration (none for None), removed afterwards, so the
    next request computes every step again."""
    if kind is None:
        yield
        return
    if kind == "fbc":
        from diffusers.hooks import FirstBlockCacheConfig

        config = FirstBlockCacheConfig(threshold=0.08)
    else:
        from diffusers import TaylorSeerCacheConfig

        config = TaylorSeerCacheConfig()
    den = denoiser_of(pipe)
    den.enable_cache(config)
    try:
        with uncompiled_blocks(den):
            yield
    finally:
        den.disable_cache()


@contextmanager
def uncompiled_blocks(den):
    """The denoiser's compiled modules (``compile_blocks``) run eager for the duration: diffusers' cache hooks
    wrap each block in code torch.compile will not trace (TaylorSeer's is ``torch.compiler.disable``d, so the
    fullgraph compile fails: H100, 2026-11-27), and a cache keeps block outputs across calls that CUDA-graph
    replays would overwrite. Their compiled code (and its graphs) comes back afterwards."""
    modules = [m for m in den.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    saved = [m._compiled_call_impl for m in modules]
    for m in modules:
        m._compiled_call_impl = None
    try:
        yield
    finally:
        for m, compiled in zip(modules, saved):
            m._compiled_call_impl = compiled


# --- SD1.5: one compiled, graph-captured Euler step ------------------------------------------------


def euler_cfg_step(unet, latents, t, sigma, sigma_next, embeds, guidance, prediction_type: str = "epsilon"):
    """One Euler step with classifier-free guidance, exactly as diffusers' StableDiffusionPipeline with
    EulerDiscreteScheduler computes it (scale_model_input, one UNet call on [uncond, cond], guidance, step).
    All scalars are 0-d tensors on the device, so the step never reads a value back to the host."""
    import torch

    x_in = latents / torch.sqrt(sigma * sigma + 1)
    x_in = torch.cat([x_in, x_in]).to(unet.dtype)
    out = unet(x_in, t, encoder_hidden_states=embeds, return_dict=False)[0]
    uncond, cond = out.chunk(2)
    out = uncond + guidance * (cond - uncond)
    sample = latents.to(torch.float32)
    out = out.to(torch.float32)
    if prediction_type == "v_prediction":
        denoised = out * (-sigma / torch.sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1)
    else:
        denoised = sample - sigma * out
    derivative = (sample - denoised) / sigma
    return (sample + derivative * (sigma_next - sigma)).to(latents.dtype)


def prepare_sd15_modules(pipe, compile_decoder: bool = True) -> None:
    """The UNet and the VAE decoder in channels_last (cuDNN's NHWC convolutions), the decoder compiled.

    The decoder is compiled without CUDA graphs: a graph's memory pool would stay reserved for every batch size
    and image size decoded, and every workflow sharing the loaded pipeline (img2img, hires fix) decodes through
    it. Its images match the eager decoder's within the graph loop's tolerance (a GPU test compares them).
    Measured through the engine (H100, 2026-11-27, 512, batch 1, same call): 0.164-0.167 s per image with this
    step, 0.196-0.197 s without."""
    import torch

    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.decoder.to(memory_format=torch.channels_last)
    if compile_decoder:
        pipe.vae.decoder.compile(fullgraph=True)


def model_config(model) -> dict:
    """A model's config as a precompiled artifact's key sees it: diffusers' private entries (such as the unordered
    list of defaulted fields) left out, so the same model gives the same key in every process."""
    return {k: v for k, v in model.config.items() if not k.startswith("_")}


def decode_latents(vae, latents):
    """AutoencoderKL.decode without tiling or slicing (diffusers' ``_decode``), from the loop's latents."""
    z = latents.to(vae.dtype) / vae.config.scaling_factor
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    return vae.decoder(z)


def images_to_pil(processor, images) -> list:
    """diffusers' ``VaeImageProcessor.postprocess(images, output_type="pil")``, the same pixels, with the arithmetic
    on the images' device and a uint8 copy back: a quarter of the bytes, and no float32 passes over every pixel in
    NumPy after the GPU is done (host time no GPU work hides)."""
    import torch
    from PIL import Image

    if processor.config.do_normalize:
        images = processor.denormalize(images)  # in the decoder's dtype, as diffusers does it
    # float32 before scaling and rounding (half to even), as NumPy does it in diffusers
    pixels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    if pixels.shape[-1] == 1:
        return [Image.fromarray(p.squeeze(-1)) for p in pixels]  # a 2-D uint8 array is mode L
    return [Image.fromarray(p) for p in pixels]


def runs_graph_loop(fast: str, device, workflow: str, family: str, scheduler: str, guidance: float) -> bool:
    """Does a request run SD1.5's compiled graph loop: txt2img on the speed path (--fast auto) on a GPU, where the
    loop reproduces diffusers'? The engine's txt2img and the planner's timing both follow this."""
    return (fast == "auto" and str(device).startswith("cuda") and workflow == "txt2img"
            and SD15GraphLoop.supports(family, scheduler, guidance))


STEP_FN, DECODE_FN = "sd15-euler-cfg-step", "sd15-vae-decode"  # the precompiled functions' names (artifact files)

# torch.compile modes that replay CUDA graphs (max-autotune does too; max-autotune-no-cudagraphs does not)
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


class SD15GraphLoop:
    """txt2img for SD1.5 with Euler and CFG, each step one captured graph. Output matches diffusers."""

    def __init__(self, pipe, compiled: bool = True, mode: str = "reduce-overhead", prepare: bool = True,
                 precompiled: bool = False):
        import functools

        import torch

        self.pipe = pipe
        self.prediction_type = pipe.scheduler.config.get("prediction_type", "epsilon")
        step = functools.partial(euler_cfg_step, pipe.unet, prediction_type=self.prediction_type)
        self.step = torch.compile(step, mode=mode, fullgraph=True) if compiled else step
        self.graphed = compiled and mode in CUDA_GRAPH_MODES
        # precompiled: the step and the decoder AOT-compiled per shape and kept on disk (runtime/precompiled.py), the
        # step replayed as a CUDA graph of our own; a second process loads them without Dynamo's tracing. Falls
        # back to torch.compile (self.step) if this torch cannot; ``precompiled_notes`` says what happened.
        self.precompiled = compiled and precompiled
        self.precompiled_notes: dict[str, str] = {}  # function -> "loaded", "compiled" or why not
        self._precompiled: dict = {}  # (what, shapes, weights) -> callable
        self._precompile_failed: set[str] = set()
        if compiled and prepare:
            prepare_sd15_modules(pipe, compile_decoder=not self.precompiled)

    @staticmethod
    def supports(family: str, scheduler: str, guidance: float) -> bool:
        """Does this loop reproduce diffusers' for such a request (the planner prices it by this too)?"""
        return family == "sd15" and scheduler == "euler" and guidance > 1.0

    def __call__(self, prompt: str, negative_prompt: str | None, width: int, height: int, steps: int,
                 guidance: float, generator, num_images_per_prompt: int = 1, callback=None):
        import torch

        with torch.no_grad():
            return self._run(prompt, negative_prompt, width, height, steps, guidance, generator,
                             num_images_per_prompt, callback)

    def _run(self, prompt, negative_prompt, width, height, steps, guidance, generator,
             num_images_per_prompt, callback):
        import torch

        pipe = self.pipe
        scheduler = pipe.scheduler  # the caller sets it (an EulerDiscreteScheduler)
        # the UNet's device: diffusers' _execution_device walks every module of every component (about 4 ms of
        # host time per image for SD1.5, while the GPU waits); this loop runs only where nothing is offloaded
        device = next(pipe.unet.parameters()).device
        cond, uncond = pipe.encode_prompt(prompt, device, num_images_per_prompt, True, negative_prompt)
        embeds = torch.cat([uncond, cond])
        scheduler.set_timesteps(steps, device=device)
        latents = pipe.prepare_latents(num_images_per_prompt, pipe.unet.config.in_channels, height, width,
                                       cond.dtype, device, generator)
        # prepare_latents already scaled by init_noise_sigma; latents stay in the UNet's dtype, as in diffusers
        sigmas = scheduler.sigmas.to(device=device, dtype=torch.float32)
        timesteps = scheduler.timesteps.to(device)
        g = torch.tensor(guidance, device=device, dtype=torch.float32)
        step = self._precompiled_step((pipe.unet, latents, timesteps[0], sigmas[0], sigmas[1], embeds, g,
                                       self.prediction_type)) if self.precompiled else None
        if step is not None:
            for i in range(steps):  # each call copies its inputs into the graph's and replays it
                latents = step(pipe.unet, latents, timesteps[i], sigmas[i], sigmas[i + 1], embeds, g,
                               self.prediction_type)
                if callback is not None:
                    callback(pipe, i, timesteps[i], {})
            return images_to_pil(pipe.image_processor, self._decode(latents.clone()))
        for i in range(steps):
            if self.graphed:
                # each replay writes the same static output buffer: mark the step and keep a copy of the
                # latents, which the next replay reads
                torch.compiler.cudagraph_mark_step_begin()
                latents = self.step(latents, timesteps[i], sigmas[i], sigmas[i + 1], embeds, g).clone()
            else:
                latents = self.step(latents, timesteps[i], sigmas[i], sigmas[i + 1], embeds, g)
            if callback is not None:
                callback(pipe, i, timesteps[i], {})
        return images_to_pil(pipe.image_processor, self._decode(latents))

    def _precompiled_fn(self, name: str, fn, args: tuple, extra, graphed: bool = False, weights=None):
        """``fn`` loaded or AOT-compiled for these shapes (once per process and shape; ``extra()``, what the key
        stands for besides the tensors, is only read then), replayed as a CUDA graph when ``graphed``; None after
        a failure, which turns precompiling ``name`` off for this loop and says why in ``precompiled_notes``.
        ``weights`` names the weights it serves (dtype, storage): others get a function of their own."""
        import torch

        from lightdiff.runtime import precompiled

        shapes = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        if (name, shapes, weights) in self._precompiled:
            return self._precompiled[(name, shapes, weights)]
        if name in self._precompile_failed:
            return None
        try:
            fn, how = precompiled.load_or_compile(fn, args, precompiled.artifact_key(name, args, extra()))
            if graphed:
                fn = precompiled.GraphedCall(fn, args)
        except Exception as e:  # PrecompileFailed, or the capture: the caller's torch.compile path serves
            self._precompile_failed.add(name)
            self.precompiled_notes[name] = f"not precompiled: {type(e).__name__}: {e}"[:400]
            return None
        self.precompiled_notes[name] = how
        self._precompiled[(name, shapes, weights)] = fn
        return fn

    def _precompiled_step(self, args: tuple):
        """The precompiled step for ``args`` (unet, latents, ...), or None: then torch.compile's loop serves, with
        the compiled decoder prepare_sd15_modules leaves to this path."""
        import torch

        unet = self.pipe.unet

        def extra():  # what the trace depended on beyond its tensors' shapes: the key stands for these guards
            return {"config": model_config(unet),
                    "processors": sorted({type(p).__name__ for p in unet.attn_processors.values()}),
                    "channels_last": unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)}

        step = self._precompiled_fn(STEP_FN, euler_cfg_step, args, extra, graphed=args[1].is_cuda)
        decoder = self.pipe.vae.decoder
        if step is None and decoder._compiled_call_impl is None:
            decoder.compile(fullgraph=True)
        return step

    def _decode(self, latents):
        """The precompiled decoder where the VAE decodes whole images; the pipeline's (tiled, sliced) otherwise. Keyed
        by the weights' dtype and storage: the engine's NaN fallback moves the VAE to float32, and code traced for
        half-precision weights must not be handed those. Not a CUDA graph: replaying the decoder as one measured no
        faster (0.139-0.140 s per image either way, H200, 2026-11-28), the step's graphs keep the GPU's queue full."""
        vae = self.pipe.vae
        decode = None
        if self.precompiled and not (getattr(vae, "use_tiling", False) or getattr(vae, "use_slicing", False)):
            weight = next(vae.parameters())
            decode = self._precompiled_fn(DECODE_FN, decode_latents, (vae, latents),
                                          lambda: {"config": model_config(vae), "dtype": str(weight.dtype)},
                                          weights=(weight.dtype, weight.data_ptr()))
            if decode is None and vae.decoder._compiled_call_impl is None:
                vae.decoder.compile(fullgraph=True)  # what serves where precompiling is off
        if decode is None:
            return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return decode(vae, latents)
