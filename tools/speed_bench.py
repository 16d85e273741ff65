"""Speed path benchmark (issue: speed): each technique alone and together, against plain diffusers,
in one process per model, on one card. Writes JSONL rows with the env stamp, FLOPs and share of peak.

    python tools/speed_bench.py sd15 -o rows.jsonl          # eager, compile, graph-loop, batches
    python tools/speed_bench.py sd15-warm -o rows.jsonl     # a second process: compile-cache start time
    python tools/speed_bench.py sd15 -o rows.jsonl --sd15-mode max-autotune --profile p.txt  # autotuned step
    python tools/speed_bench.py qwen -o rows.jsonl          # eager, attention backends, CFG batched, compiled
    python tools/speed_bench.py qwen -o rows.jsonl --budget 24  # ... then the 24 GB plan, CFG two-call vs batched
    python tools/speed_bench.py qwen-fp8 -o rows.jsonl --budget 24 --profile p.txt  # fp8 compute compiled
    python tools/speed_bench.py qwen-fp8 -o rows.jsonl --skip-bf16-compile --cudagraphs --budget 24  # + CUDA graphs,
                                            # then under 24 GB with diffusers' VAE tiles against half tiles
    python tools/speed_bench.py qwen-fp8 -o rows.jsonl --skip-bf16-compile --cudagraphs --cudagraphs-only \
        --fast-accum --budget 24            # row-wise fp8 with CUDA graphs, then with fast accumulation

Synthetic real-size weights: FLOPs and memory are those of the real models; images are noise.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time


def timed(fn, runs: int):
    import torch

    out, secs = None, []
    for _ in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    return out, secs


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def pixels(images):
    import numpy as np

    return np.stack([np.asarray(im, dtype=np.float32) for im in images])


def rel_l2(image, reference) -> float:
    """Relative L2 distance of an image (array) to the reference run's, rounded as the rows report it."""
    import numpy as np

    return round(float(np.linalg.norm(image - reference) / np.linalg.norm(reference)), 4)


def failed_row(out, status: str, model: str, variant: str, error, stamp) -> None:
    """A run that failed (``status`` "oom" or "error") is a result: its row says so."""
    out.write(json.dumps({"schema": 1, "kind": "speed", "status": status, "model": model, "variant": variant,
                          "error": str(error)[:600], "env": stamp}) + "\n")
    out.flush()


def row(out, model, variant, secs, batch, flops, stamp, **extra):
    import torch

    from lightdiff.specs.cards import find_card

    med = statistics.median(secs[1:] if len(secs) > 1 else secs)
    peak = find_card(stamp["gpu"]).bf16_tflops * 1e12
    r = {"schema": 1, "kind": "speed", "status": "ok", "model": model, "variant": variant, "batch_size": batch,
         "first_s": round(secs[0], 4), "sec_per_call": {"median": round(med, 4), "min": round(min(secs), 4),
                                                         "max": round(max(secs), 4), "runs": [round(s, 4) for s in secs]},
         "sec_per_image": round(med / batch, 4), "images_per_s": round(batch / med, 2),
         "flops_per_image": flops / batch if flops else None,
         "achieved_tflops": round(flops / med / 1e12, 1) if flops else None,
         "peak_share": round(flops / med / peak, 3) if flops else None,
         "peak_vram": {"allocated_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)},
         "synthetic": True, "weights": "synthetic", "env": stamp, **extra}
    out.write(json.dumps(r) + "\n")
    out.flush()
    print(f"{model:16} {variant:34} b{batch:<3} {med:.4f} s/call  {batch / med:7.2f} img/s  "
          f"first {secs[0]:.2f} s  " + (f"{r['peak_share']:.1%} of peak" if flops else ""), flush=True)
    return r


def sd15(args, out, stamp, warm_only=False):
    import diffusers
    import torch

    from lightdiff.runtime import fastpath, loader
    from lightdiff.workflows.base import generators

    fastpath.persist_compile_cache()
    lm = loader.load("sd15", "synthetic", device="cuda")
    pipe = lm.pipe
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(lm.scheduler_config)
    kw = dict(prompt="a lighthouse at dusk", negative_prompt="", width=512, height=512, num_inference_steps=20,
              guidance_scale=7.0)

    def eager(b=1):
        return pipe(**kw, num_images_per_prompt=b, generator=generators(1, b)).images

    # as the engine builds it: channels_last, the VAE decoder compiled (after the eager rows below ran)
    loop = fastpath.SD15GraphLoop(pipe, compiled=True, mode=args.sd15_mode, prepare=False,
                                  precompiled=args.sd15_precompiled)
    label = "graph-loop" + ("" if args.sd15_mode == "reduce-overhead" else f" ({args.sd15_mode})") + \
        (" precompiled" if args.sd15_precompiled else "")

    def fast(b=1):
        return loop(kw["prompt"], kw["negative_prompt"], 512, 512, 20, 7.0, generators(1, b), num_images_per_prompt=b)

    def batch_rows():
        for b in args.batches:
            first, secs = timed(lambda: fast(b), args.runs + 1)  # a new batch size compiles and records: first_s
            row(out, "sd15", f"{label} + compiled VAE", secs, b, batch_flops[b], stamp,
                max_abs_pixel_diff_vs_eager=float(abs(pixels(first) - pixels(batch_images[b])).max()),
                precompiled=dict(loop.precompiled_notes) or None)
            if args.profile and b == max(args.batches):  # the throughput end: which kernel class bounds it
                profile_to(args.profile, f"sd15 {label} + compiled VAE, 20 steps, batch {b}", lambda: fast(b), rows=40)

    flops, batch_flops, batch_images = None, {}, {}
    if not warm_only:  # every eager row first: preparing the loop changes the pipeline's UNet and decoder
        if not args.batches_only:
            flops = count_flops(lambda: eager(1))
            ref, secs = timed(eager, args.runs)
            row(out, "sd15", "baseline (diffusers eager)", secs, 1, flops, stamp)
        for b in args.batches:
            batch_flops[b] = count_flops(lambda: eager(b))
            batch_images[b], secs = timed(lambda: eager(b), 2)
            row(out, "sd15", "baseline (diffusers eager)", secs, b, batch_flops[b], stamp)
    torch._dynamo.utils.counters.clear()
    t0 = time.perf_counter()
    if not args.ab:  # with --ab the levers go on a second loop, compared in this process (sd15_ab)
        label += tune(args, pipe)
    if args.sd15_fp8:  # the UNet's linear layers (27% of its FLOPs) in fp8 with fast accumulation: changes pixels
        from lightdiff.runtime import fp8

        done = fp8.quantize_denoiser(pipe.unet, fast_accum=True)
        label += f" + fp8 linears ({done['layers']})"
        print(f"sd15 fp8: {done}", flush=True)
    fastpath.prepare_sd15_modules(pipe, compile_decoder=not args.sd15_precompiled)
    if args.batches_only:  # throughput alone: the first batch size compiles with static shapes
        return batch_rows()
    first, secs = timed(fast, max(3, args.runs))
    compile_s = time.perf_counter() - t0 - sum(secs[1:])
    stats = fastpath.compile_stats()
    if warm_only:
        row(out, "sd15", f"{label} + compiled VAE (warm compile cache)", secs, 1, None, stamp,
            compile_s=round(compile_s, 1), compile_stats=stats)
        return
    dev = float(abs(pixels(first) - pixels(ref)).max())
    row(out, "sd15", f"{label} + compiled VAE", secs, 1, flops, stamp, compile_s=round(compile_s, 1),
        max_abs_pixel_diff_vs_eager=dev, compile_stats=stats)
    if args.profile:  # what bounds the graphed loop at batch 1: launches, kernels, the VAE
        profile_to(args.profile, f"sd15 {label} + compiled VAE, 20 steps, batch 1", fast, rows=40)
    if args.ab:
        return sd15_ab(args, out, stamp, pipe, fast, kw, flops, ref)
    batch_rows()


def sd15_ab(args, out, stamp, pipe, fast_a, kw, flops, ref):
    """Batch 1 in one process: the graph loop as built (A) against a second loop (B) on a copy of the UNet with
    the levers asked for (--fuse-qkv, --cudnn-benchmark, --inductor-tuning: set after A compiled and recorded, so A
    keeps its code and convolution algorithms), timed alternately so both see the same machine state."""
    import copy
    import functools

    import torch

    from lightdiff.runtime import fastpath
    from lightdiff.workflows.base import generators

    unet_b = copy.deepcopy(pipe.unet)
    label_b = tune(args, unet=unet_b)  # A has compiled and recorded already: global options reach B only
    loop_b = fastpath.SD15GraphLoop(pipe, compiled=True, mode=args.sd15_mode, prepare=False)
    loop_b.step = torch.compile(functools.partial(fastpath.euler_cfg_step, unet_b,
                                                  prediction_type=loop_b.prediction_type),
                                mode=args.sd15_mode, fullgraph=True)

    def fast_b():
        return loop_b(kw["prompt"], kw["negative_prompt"], 512, 512, 20, 7.0, generators(1, 1))

    t0 = time.perf_counter()
    first_b = fast_b()
    compile_b = time.perf_counter() - t0
    fast_b()  # graph recording
    secs_a, secs_b = [], []
    for _ in range(max(5, args.runs)):
        secs_a += timed(fast_a, 1)[1]
        secs_b += timed(fast_b, 1)[1]
    row(out, "sd15", "A/B: graph-loop + compiled VAE", secs_a, 1, flops, stamp, ab="A", ab_levers=label_b.strip(" +"))
    row(out, "sd15", f"A/B: graph-loop{label_b} + compiled VAE", secs_b, 1, flops, stamp, ab="B",
        first_s_compile=round(compile_b, 1),
        max_abs_pixel_diff_vs_eager=float(abs(pixels(first_b) - pixels(ref)).max()))


# Inductor options diffusers documents for diffusion models ("Accelerate inference of text-to-image diffusion
# models"): 1x1 convolutions as matmuls (their epilogues fuse), each generated Triton kernel's launch config tuned by
# coordinate descent at compile time. Not in the engine: SD1.5's step had not compiled with them after 330 s (H100,
# 2026-11-27, 97 s without).
INDUCTOR_TUNING = {"conv_1x1_as_mm": True, "coordinate_descent_tuning": True,
                   "coordinate_descent_check_all_directions": True, "epilogue_fusion": False}


def tune(args, pipe=None, unet=None) -> str:
    """The opt-in levers under measurement, applied before anything compiles (fused QKV to the pipeline's UNet and
    VAE, or to ``unet`` alone); returns their label suffix."""
    import torch

    label = ""
    if args.fuse_qkv and (pipe is not None or unet is not None):  # Q, K, V (self-attention), K, V (cross): one matmul
        if unet is None:
            pipe.fuse_qkv_projections()
        else:  # what pipe.fuse_qkv_projections() does to the UNet
            from diffusers.models.attention_processor import FusedAttnProcessor2_0

            unet.fuse_qkv_projections()
            unet.set_attn_processor(FusedAttnProcessor2_0())
        label += " + fused QKV"
    if args.inductor_tuning:
        import torch._inductor.config as inductor_config

        for name, value in INDUCTOR_TUNING.items():
            setattr(inductor_config, name, value)
        label += " + inductor tuning"
    if args.cudnn_benchmark:  # cuDNN times its convolution algorithms per shape instead of its heuristics
        torch.backends.cudnn.benchmark = True
        label += " + cudnn.benchmark"
    return label


def qwen_setup(args):
    """qwen-image-2512 (synthetic) on the GPU, prompts encoded once, text encoder moved off; returns the
    loaded model and ``call(steps=20)``: one true-CFG image from the kept embeddings."""
    import torch

    from lightdiff.runtime import fastpath, loader
    from lightdiff.workflows.base import generators

    fastpath.persist_compile_cache()
    lm = loader.load("qwen-image-2512", "synthetic", device="cuda")
    pipe = lm.pipe
    prompt = "a lighthouse at dusk"
    pe, pm = pipe.encode_prompt(prompt, device="cuda")
    ne, nm = pipe.encode_prompt(" ", device="cuda")
    pipe.text_encoder.to("cpu")  # embeddings kept: the text encoder is not needed for denoising
    torch.cuda.empty_cache()
    size = args.size

    def call(steps=20):
        return pipe(prompt_embeds=pe, prompt_embeds_mask=pm, negative_prompt_embeds=ne, negative_prompt_embeds_mask=nm,
                    true_cfg_scale=4.0, width=size, height=size, num_inference_steps=steps,
                    generator=generators(1, 1), output_type="np").images

    return lm, call


def uncompile_blocks(transformer) -> None:
    """Undo compile_repeated_blocks, so what follows runs (or compiles) anew."""
    import torch

    for block in transformer.transformer_blocks:
        block._compiled_call_impl = None
    torch._dynamo.reset()


def profile_to(path, label, fn, rows: int = 18) -> None:
    """Append torch.profiler's top CUDA and CPU rows for one call of ``fn`` to ``path`` (what bounds it)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    table = prof.key_averages()
    with open(path, "a") as f:
        f.write(f"## {label}\n{table.table(sort_by='cuda_time_total', row_limit=rows)}\n"
                f"{table.table(sort_by='cpu_time_total', row_limit=10)}\n"
                f"{kernel_class_table(prof.events())}\n")


# GPU kernels by what they do, from their names (cuBLAS/cuDNN/flash/Triton naming): which floor is furthest
KERNEL_CLASSES = [  # first match wins: Inductor's kernels carry the ops they fused in their names
    ("triton reduction", r"^triton_(red|per)_"),
    ("triton pointwise", r"^triton_"),
    ("attention", r"flash|fmha|attention|sdpa|_attn"),
    ("convolution", r"conv|fprop|dgrad|implicit_gemm|winograd"),
    ("matmul (fp8)", r"e4m3|f8f8|fp8|nvjet_sm\d+_qq"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|Kernel2"),
    ("copy/memset", r"memcpy|memset|copy_kernel|CatArrayBatched|nchwToNhwc|nhwcToNchw"),
]


def kernel_class(name: str) -> str:
    for cls, pattern in KERNEL_CLASSES:
        if re.search(pattern, name, re.IGNORECASE):
            return cls
    return "other"


def kernel_class_table(events) -> str:
    """Kernel time summed by class (``kernel_class``) over a profile's GPU events, largest first."""
    import torch

    sums: dict[str, list] = {}
    for e in events:
        if e.device_type == torch.autograd.DeviceType.CUDA:
            s = sums.setdefault(kernel_class(e.name), [0.0, 0])
            s[0] += e.time_range.elapsed_us()
            s[1] += 1
    total = sum(s[0] for s in sums.values()) or 1.0
    lines = ["kernel class         ms      share  kernels"]
    for cls, (us, n) in sorted(sums.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"{cls:18} {us / 1e3:8.2f} {us / total:8.1%} {n:8}")
    return "\n".join(lines)


def qwen_fp8(args, out, stamp):
    """fp8 compute (runtime/fp8.py) compiled, against bf16 eager and compiled in this
    process; a profile of 2 steps eager in each dtype; then the fp8 run with the allocator capped."""
    import torch

    from lightdiff.runtime import fastpath, fp8
    from lightdiff.runtime.device import cap_vram

    lm, call = qwen_setup(args)
    pipe, size = lm.pipe, args.size
    flops = count_flops(call)
    torch.cuda.reset_peak_memory_stats()
    ref, secs = timed(call, 2)
    row(out, "qwen-image-2512", "baseline (diffusers eager, embeddings given)", secs, 1, flops, stamp, width=size)
    if args.profile:
        profile_to(args.profile, "bf16 eager, 2 steps", lambda: call(2))
    if not args.skip_bf16_compile:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        first, secs = timed(call, 3)
        row(out, "qwen-image-2512", "compile_repeated_blocks", secs[1:], 1, flops, stamp, width=size,
            compile_s=round(secs[0] - statistics.median(secs[1:]), 1),
            max_abs_diff_vs_eager=float(abs(first - ref).max()))
        uncompile_blocks(pipe.transformer)
    tuned = tune(args)  # Inductor's options for the compiled rows below (label suffix)
    t0 = time.perf_counter()
    done = fp8.quantize_denoiser(pipe.transformer, fast_accum=False)  # row-wise first; --fast-accum then switches
    quantize_s = round(time.perf_counter() - t0, 1)
    print(f"fp8 in {quantize_s} s: {done}", flush=True)
    torch.cuda.empty_cache()
    if args.profile:
        profile_to(args.profile, "fp8 compute eager, 2 steps", lambda: call(2))
    variant, mode, fp8_first = "fp8 compute + compile_repeated_blocks", None, None
    if not args.cudagraphs_only:
        pipe.transformer.compile_repeated_blocks(fullgraph=True)
        torch._dynamo.utils.counters.clear()
        torch.cuda.reset_peak_memory_stats()
        fp8_first, secs = timed(call, args.runs + 1)
        graphs = dict(torch._dynamo.utils.counters["stats"])
        row(out, "qwen-image-2512", f"fp8 compute ({done['layers']} linears) + compile_repeated_blocks", secs[1:], 1,
            flops, stamp, width=size, compile_s=round(secs[0] - statistics.median(secs[1:]), 1),
            quantize_s=quantize_s, rel_l2_vs_bf16=rel_l2(fp8_first, ref),
            max_abs_diff_vs_bf16=float(abs(fp8_first - ref).max()), fp8=done,
            dynamo_stats={k: int(v) for k, v in graphs.items()})
        if args.profile:
            profile_to(args.profile, "fp8 compute compiled, 2 steps", lambda: call(2))
    if args.cudagraphs:  # the same blocks compiled with CUDA graphs: one recording per block (its own weights)
        uncompile_blocks(pipe.transformer)
        fastpath.compile_blocks(pipe.transformer, cuda_graphs=True)  # as the engine's cuda_graph_blocks
        torch.cuda.reset_peak_memory_stats()
        try:
            first, secs = timed(call, args.runs + 2)  # warm-up, then recording
            variant, mode, fp8_first = "fp8 compute + compile_repeated_blocks (reduce-overhead: CUDA graphs)" + \
                tuned, "reduce-overhead", first
            row(out, "qwen-image-2512", variant, secs[2:], 1, flops, stamp, width=size,
                compile_s=round(secs[0] + secs[1] - 2 * statistics.median(secs[2:]), 1),
                rel_l2_vs_bf16=rel_l2(first, ref), fp8=done)
            if args.profile:
                profile_to(args.profile, "fp8 compute compiled with CUDA graphs, 2 steps", lambda: call(2))
        except Exception as e:  # a result, not a crash: the rows say it failed
            print(f"cudagraphs: {type(e).__name__}: {e}"[:600], flush=True)
            failed_row(out, "error", "qwen-image-2512", "fp8 compute + compile_repeated_blocks (reduce-overhead)",
                       f"{type(e).__name__}: {e}", stamp)
            uncompile_blocks(pipe.transformer)
            fastpath.compile_blocks(pipe.transformer)  # and its step-mark hook removed
    if args.fast_accum:  # the same fp8 values and scales, the matmul with fast accumulation (runtime/fp8.py)
        fp8.set_fast_accum(pipe.transformer, True)
        uncompile_blocks(pipe.transformer)
        fastpath.compile_blocks(pipe.transformer, cuda_graphs=mode is not None)
        torch.cuda.reset_peak_memory_stats()
        warm = 2 if mode else 1
        first, secs = timed(call, args.runs + warm)
        variant += " + fast accumulation"
        row(out, "qwen-image-2512", variant, secs[warm:], 1, flops, stamp, width=size,
            compile_s=round(sum(secs[:warm]) - warm * statistics.median(secs[warm:]), 1),
            rel_l2_vs_bf16=rel_l2(first, ref),
            rel_l2_vs_fp8_rowwise=None if fp8_first is None else rel_l2(first, fp8_first))
        if args.profile:
            profile_to(args.profile, f"{variant}, 2 steps", lambda: call(2), rows=40)
        if args.qwen_attn:  # lightdiff's processor (runtime/qwen_attention.py), then with fused projections
            qwen_attention_rows(args, out, stamp, pipe, call, flops, ref, first, variant, mode, warm, size)
    if args.cfg_batched:  # true CFG's two forwards as one of batch 2 (runtime/cfg_batch.py), compiled
        from lightdiff.runtime import cfg_batch

        hook = cfg_batch.enable(pipe.transformer)
        first, secs = timed(call, args.runs + 1)  # the first run recompiles the blocks for batch 2
        row(out, "qwen-image-2512", "fp8 compute + compile_repeated_blocks + cfg batched", secs[1:], 1, flops, stamp,
            width=size, compile_s=round(secs[0] - statistics.median(secs[1:]), 1), batched_steps=hook.batched_steps,
            rel_l2_vs_bf16=rel_l2(first, ref))
        cfg_batch.disable(pipe.transformer)
    if args.budget:
        torch.cuda.empty_cache()
        cap_vram(args.budget, "cuda")
        note = "weights, VAE and the kept embeddings on the GPU; text encoder in host RAM; VAE tiled"
        # diffusers' default tiles (256 px, stride 192: 36 tiles at 1024) against halves (size/2 + 64 px,
        # stride size/2: 4 tiles, each pixel decoded about once)
        for tiles, kw in (("default tiles", {}),
                          ("half tiles", dict(tile_sample_min_height=size // 2 + 64, tile_sample_min_width=size // 2 + 64,
                                              tile_sample_stride_height=size // 2, tile_sample_stride_width=size // 2))):
            pipe.vae.enable_tiling(**kw)  # as the planner does at 1024 under 24 GB (untiled ran out of memory there)
            label = f"{variant} under {args.budget:g} GB, VAE {tiles}"
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            try:
                decode_s = vae_decode_seconds(pipe, size)
                _, secs = timed(call, 2)
            except torch.OutOfMemoryError as e:  # a result: say so in the rows
                failed_row(out, "oom", "qwen-image-2512", label, e, stamp)
                continue
            row(out, "qwen-image-2512", label, secs, 1, flops, stamp, width=size, vram_budget_gb=args.budget,
                note=note, vae_decode_s=decode_s, vae_tiling={"sample_px": pipe.vae.tile_sample_min_height,
                                                              "stride_px": pipe.vae.tile_sample_stride_height})


LONG_ROWS = 16384  # Qwen-Image's fp8 activation rows are 3,072 and 12,288 wide


def persistent_long_rows(_):
    """Inductor generates a reduction over a row as one pass with the row in registers ("persistent") only up to
    1,024 elements; longer rows loop, reading the row again for each dependent reduction (a norm's statistics,
    then the fp8 scale's amax, then the quantized write). This allows rows up to LONG_ROWS, through Inductor's
    documented hook for its heuristics (``V.set_choices_handler``); the config entry puts it in the cache key."""
    import torch._inductor.config as inductor_config
    from torch._inductor.choices import InductorChoices
    from torch._inductor.runtime.hints import ReductionHint
    from torch._inductor.virtualized import V

    class LongRowsPersistent(InductorChoices):
        @staticmethod
        def should_use_persistent_reduction(features, cooperative_reduction):
            if (inductor_config.triton.persistent_reductions and not cooperative_reduction
                    and features.get_reduction_hint() == ReductionHint.INNER
                    and V.graph.sizevars.statically_known_leq(features.reduction_numel, LONG_ROWS)):
                return True
            return InductorChoices.should_use_persistent_reduction(features, cooperative_reduction)

        def uuid(self):
            return f"lightdiff-persistent-rows-{LONG_ROWS}"

    inductor_config.inductor_choices_class = LongRowsPersistent
    V.set_choices_handler(LongRowsPersistent())
    return f"persistent reductions up to {LONG_ROWS}"


def qwen_attention_rows(args, out, stamp, pipe, call, flops, ref, before, variant, mode, warm, size):
    """The variant just timed, again with the rotary embeddings in real arithmetic (runtime/qwen_attention.py),
    then with each stream's q/k/v projections fused: same process, same card, recompiled each time."""
    import torch

    from lightdiff.runtime import fastpath, qwen_attention

    def inductor_option(section, name, value):  # a stage that sets one of Inductor's options before compiling
        def change(_):
            import torch._inductor.config as inductor_config

            setattr(getattr(inductor_config, section) if section else inductor_config, name, value)
            return f"{section}.{name}" if section else name
        return change

    den = pipe.transformer
    stages = [(" + real rotary", qwen_attention.install), (" + fused qkv", qwen_attention.fuse_projections)]
    if args.then_blockwise:  # 1 x 128 / 128 x 128 block scales: short, local reductions (runtime/fp8.py)
        from lightdiff.runtime import fp8

        stages.append((" + block scales (requantized from row-wise fp8)", lambda d: fp8.set_scaling(d, "blockwise")))
    if args.then_persistent:
        stages.append((f" + persistent reductions up to {LONG_ROWS}", persistent_long_rows))
    if args.then_multi_kernel:  # reductions up to 16x longer rows also generated persistent; the faster one picked
        stages.append((" + inductor multi-kernel", inductor_option("triton", "multi_kernel", 1)))
    if args.then_tuning:  # Inductor times its Triton kernels' launch configurations (the reductions among them)
        stages.append((" + inductor coordinate descent", inductor_option(None, "coordinate_descent_tuning", True)))
    for label, change in stages:
        done = change(den)
        uncompile_blocks(den)
        torch.cuda.empty_cache()
        fastpath.compile_blocks(den, cuda_graphs=mode is not None)
        torch.cuda.reset_peak_memory_stats()
        variant += label
        try:
            first, secs = timed(call, args.runs + warm)
        except Exception as e:  # a result, not a crash: the row says it failed, with the traceback's last frames
            import traceback

            print(traceback.format_exc()[-3000:], flush=True)
            failed_row(out, "error", "qwen-image-2512", variant, f"{type(e).__name__}: {e}", stamp)
            return
        row(out, "qwen-image-2512", variant, secs[warm:], 1, flops, stamp, width=size,
            compile_s=round(sum(secs[:warm]) - warm * statistics.median(secs[warm:]), 1), changed=done,
            rel_l2_vs_bf16=rel_l2(first, ref), rel_l2_vs_previous_row=rel_l2(first, before),
            max_abs_diff_vs_previous_row=float(abs(first - before).max()))
        before = first
        if args.profile:
            profile_to(args.profile, f"{variant}, 2 steps", lambda: call(2), rows=40)


def vae_decode_seconds(pipe, size: int, runs: int = 3) -> float:
    """Median seconds of the VAE decode of one image's latents (as the pipeline calls it)."""
    import torch

    vae = pipe.vae
    z = torch.randn(1, vae.config.z_dim, 1, size // 8, size // 8, device="cuda", dtype=vae.dtype)
    with torch.no_grad():  # as in the pipeline
        _, secs = timed(lambda: vae.decode(z, return_dict=False)[0], runs)
    return round(statistics.median(secs), 3)


def qwen(args, out, stamp):
    import torch

    from lightdiff.runtime import cfg_batch, fastpath

    lm, call = qwen_setup(args)
    pipe, size = lm.pipe, args.size
    flops = count_flops(call)
    torch.cuda.reset_peak_memory_stats()
    ref, secs = timed(call, args.runs)
    row(out, "qwen-image-2512", "baseline (diffusers eager, embeddings given)", secs, 1, flops, stamp, width=size)
    for backend in args.attention:
        try:
            fastpath.apply_attention_backend(pipe, backend)
            _, secs = timed(call, 2)
            row(out, "qwen-image-2512", f"attention={backend}", secs, 1, flops, stamp, width=size)
        except Exception as e:  # a backend this build lacks is a result, not a crash
            print(f"attention {backend}: {type(e).__name__}: {e}"[:300], flush=True)
    fastpath.apply_attention_backend(pipe, "native")
    # true CFG: the two forwards of a step as one of batch 2 (runtime/cfg_batch.py), eager
    hook = cfg_batch.enable(pipe.transformer)
    torch.cuda.reset_peak_memory_stats()
    first, secs = timed(call, args.runs)
    row(out, "qwen-image-2512", "cfg batched (eager)", secs, 1, flops, stamp, width=size,
        batched_steps=hook.batched_steps, max_abs_diff_vs_eager=float(abs(first - ref).max()))
    cfg_batch.disable(pipe.transformer)
    pipe.transformer.compile_repeated_blocks(fullgraph=True)
    torch.cuda.reset_peak_memory_stats()
    first, secs = timed(call, args.runs + 1)
    row(out, "qwen-image-2512", "compile_repeated_blocks", secs[1:], 1, flops, stamp, width=size,
        compile_s=round(secs[0] - statistics.median(secs[1:]), 1),
        max_abs_diff_vs_eager=float(abs(first - ref).max()))
    cfg_batch.enable(pipe.transformer)
    torch.cuda.reset_peak_memory_stats()
    first, secs = timed(call, args.runs + 1)  # the first run recompiles the blocks for batch 2
    row(out, "qwen-image-2512", "compile_repeated_blocks + cfg batched", secs[1:], 1, flops, stamp, width=size,
        compile_s=round(secs[0] - statistics.median(secs[1:]), 1),
        max_abs_diff_vs_eager=float(abs(first - ref).max()))
    cfg_batch.disable(pipe.transformer)
    if args.budget:
        under_budget(args, out, stamp, lm, call, flops, ref, size)


def under_budget(args, out, stamp, lm, call, flops, ref, size):
    """The same pipeline and embeddings moved to host RAM, the allocator capped at --budget GB, the planner's
    plan applied (as the engine would), then two calls per step against batched CFG, in this one process."""
    import torch

    from lightdiff.runtime import cfg_batch
    from lightdiff.runtime import plan as plans
    from lightdiff.runtime.device import cap_vram

    pipe = lm.pipe
    uncompile_blocks(pipe.transformer)  # the plan's hooks go on
    pipe.to("cpu")
    lm.device = "cpu"
    torch.cuda.empty_cache()
    cap_vram(args.budget, "cuda")
    plan = plans.choose(lm.spec, size, size, 1, args.budget, None, None, 20, device="cuda",
                        exclude=(plans.Strategy.FP8_COMPUTE,))
    plan.strategy.apply(lm, "cuda", plan=plan)
    print(f"under {args.budget} GB: plan {plan.name} {plan.options}", flush=True)
    for batched in (False, True):
        hook = cfg_batch.enable(pipe.transformer) if batched else None
        torch.cuda.reset_peak_memory_stats()
        first, secs = timed(call, args.runs)
        row(out, "qwen-image-2512", f"{plan.name} under {args.budget:g} GB" + (" + cfg batched" if batched else ""),
            secs, 1, flops, stamp, width=size, vram_budget_gb=args.budget, plan=plan.name,
            predicted=plan.estimate.to_dict(), max_abs_diff_vs_resident_eager=float(abs(first - ref).max()),
            **({"batched_steps": hook.batched_steps} if hook else {}))
        if batched:
            cfg_batch.disable(pipe.transformer)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["sd15", "sd15-warm", "qwen", "qwen-fp8"])
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",") if x], default=[4, 8, 16])
    p.add_argument("--sd15-precompiled", action="store_true",
                   help="sd15: the graph loop from precompiled artifacts, as the engine runs it (runtime/precompiled.py)")
    p.add_argument("--batches-only", action="store_true",
                   help="sd15: only the --batches rows (no batch-1 rows; the first batch size compiles static)")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--attention", type=lambda s: [b for b in s.split(",") if b],
                   default=["_native_cudnn", "_native_flash"], help="backends to try; '' for none")
    p.add_argument("--skip-bf16-compile", action="store_true", help="qwen-fp8: no compiled bf16 row")
    p.add_argument("--cfg-batched", action="store_true", help="qwen-fp8: then fp8 compiled with CFG batched")
    p.add_argument("--cudagraphs", action="store_true",
                   help="qwen-fp8: then the fp8 blocks compiled with mode='reduce-overhead' (CUDA graphs)")
    p.add_argument("--cudagraphs-only", action="store_true",
                   help="qwen-fp8 with --cudagraphs: no fp8 row compiled without CUDA graphs first")
    p.add_argument("--fast-accum", action="store_true",
                   help="qwen-fp8: then the fp8 matmuls with fast accumulation (runtime/fp8.set_fast_accum), "
                        "compiled as the row before; the budget rows use it")
    p.add_argument("--qwen-attn", action="store_true",
                   help="qwen-fp8 with --fast-accum: then lightdiff's attention processor, then fused projections")
    p.add_argument("--then-tuning", action="store_true",
                   help="with --qwen-attn: then Inductor's coordinate-descent tuning of the same blocks")
    p.add_argument("--then-blockwise", action="store_true",
                   help="with --qwen-attn: then the fp8 layers requantized with 1 x 128 input and 128 x 128 weight "
                        "block scales (runtime/fp8.set_scaling; cuBLAS on Hopper)")
    p.add_argument("--then-persistent", action="store_true",
                   help="with --qwen-attn: then reductions over rows up to 16,384 elements in one pass (persistent)")
    p.add_argument("--then-multi-kernel", action="store_true",
                   help="with --qwen-attn: then Inductor's multi-kernel (persistent reductions for rows up to 16,384)")
    p.add_argument("--profile", help="qwen-fp8: append torch.profiler tables (2 steps each way) to this file; "
                                     "sd15: a table of one graphed 20-step image")
    p.add_argument("--sd15-mode", default="reduce-overhead", choices=["reduce-overhead", "max-autotune"],
                   help="sd15: torch.compile mode of the graphed Euler step (both replay CUDA graphs)")
    p.add_argument("--ab", action="store_true",
                   help="sd15: batch 1 only, the --fuse-qkv/--cudnn-benchmark levers on a second loop in this "
                        "process, timed alternately with the first (a cross-process spread hides a few percent)")
    p.add_argument("--fuse-qkv", action="store_true", help="sd15: the fast rows with diffusers' fused QKV projections")
    p.add_argument("--sd15-fp8", action="store_true",
                   help="sd15: the fast rows with the UNet's linear layers in fp8 compute (runtime/fp8.py, fast "
                        "accumulation; Hopper/Ada): their pixel difference to eager says what it costs")
    p.add_argument("--inductor-tuning", action="store_true",
                   help="the compiled rows with INDUCTOR_TUNING (diffusers' documented Inductor options)")
    p.add_argument("--cudnn-benchmark", action="store_true", help="the compiled rows with torch.backends.cudnn.benchmark")
    p.add_argument("--budget", type=float, help="qwen: then cap the allocator at this many GB, apply the "
                                                "planner's plan and measure CFG two-call vs batched")
    args = p.parse_args()
    from lightdiff.runtime.device import env_stamp

    stamp = {k: v for k, v in env_stamp().items() if k not in ("gpus", "host_ram")}
    with open(args.out, "a") as out:
        if args.what == "qwen":
            qwen(args, out, stamp)
        elif args.what == "qwen-fp8":
            qwen_fp8(args, out, stamp)
        else:
            sd15(args, out, stamp, warm_only=args.what == "sd15-warm")
    return 0


if __name__ == "__main__":
    sys.exit(main())
