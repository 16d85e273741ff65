"""`lightdiff generate`: txt2img from the command line, with a progress bar."""

NAME = "generate"
HELP = "Generate images from a prompt (txt2img) and save PNGs with full metadata."


def add_generation_arguments(p):
    from lightdiff import settings

    p.add_argument("prompt", nargs="?", help="the prompt (or use --prompt)")
    p.add_argument("--prompt", dest="prompt_opt", help=argparse_suppress())
    p.add_argument("-m", "--model", default=settings.get("default_model"),
                   help="model id (see `lightdiff models`); default %(default)s")
    p.add_argument("--weights", default="auto",
                   help="auto, hub, hub:org/name, synthetic, twin, a diffusers folder or a .safetensors file")
    p.add_argument("-n", "--negative-prompt", default=None)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--size", type=int, help="square size: sets width and height")
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", "--cfg", type=float, dest="guidance")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch", type=int, default=1, dest="batch_size", help="images per prompt")
    p.add_argument("--scheduler")
    p.add_argument("--step-cache", choices=["fbc", "taylorseer"],
                   help="reuse denoiser work across steps (diffusers' First Block Cache or TaylorSeer; "
                        "transformer models such as qwen-image): faster, and a different image; off by default")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--vram-budget", type=float, help="GB: behave like a card of this size")
    p.add_argument("--ram-budget", type=float, help="GB of host RAM the offload plans may use")
    p.add_argument("--plan", default="auto",
                   help="memory plan: auto (the fastest that fits; see `lightdiff fit`) or a plan name")
    p.add_argument("-o", "--output-dir", default=settings.get("output_dir"))
    p.add_argument("--fast", default="auto", choices=["auto", "off", "eager"],
                   help="speed path: auto uses the graph-captured SD1.5 Euler loop on CUDA where it applies")
    p.add_argument("--runs", type=int, default=1,
                   help="generate N times with the same request and print each run's time (the first run "
                        "includes warm-up); images are saved once")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow .ckpt/.pt/.bin checkpoints (pickle can run code: only for files you trust)")


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def add_arguments(p):
    add_generation_arguments(p)
    p.add_argument("--context-parallel", type=int, metavar="N",
                   help="split ONE image over N GPUs of this host (diffusers context parallelism, qwen-image): "
                        "lower latency, every GPU holds the whole model; for throughput use "
                        "`lightdiff batch --devices`")
    p.add_argument("--cp-mode", choices=["ulysses", "ring"],
                   help="with --context-parallel: ulysses (all-to-all of heads, default) or ring attention")


def request_from_args(args) -> dict:
    prompt = args.prompt_opt if args.prompt_opt is not None else args.prompt
    if prompt is None:
        from lightdiff.errors import InvalidRequest

        raise InvalidRequest("prompt", "No prompt given.", 'Run e.g. `lightdiff generate "a red circle"`.')
    req = {"workflow": "txt2img", "model": args.model, "weights": args.weights, "prompt": prompt,
           "batch_size": args.batch_size}
    if args.size:
        req["width"] = req["height"] = args.size
    for key in ("negative_prompt", "width", "height", "steps", "guidance", "seed", "scheduler", "step_cache"):
        if getattr(args, key, None) is not None:
            req[key] = getattr(args, key)
    return req


def run_with_progress(engine, request: dict):
    from tqdm import tqdm

    bar = None

    def progress(event):
        nonlocal bar
        if event["stage"] == "loading":
            print(f"loading {event.get('model')} ...", flush=True)
        elif event["stage"] == "running":
            if bar is None:
                bar = tqdm(total=event["steps"], desc="denoising", unit="step")
            bar.update(event["step"] - bar.n)

    try:
        return engine.run(request, progress=progress)
    finally:
        if bar is not None:
            bar.close()


def _timed_runs(engine, request: dict, runs: int):
    """Run the request ``runs`` times; return the first result and each run's seconds and peak VRAM."""
    import time

    from lightdiff.runtime.device import memory_snapshot

    if runs > 1 and request.get("seed") is None:
        import secrets

        request = {**request, "seed": secrets.randbelow(2**32)}
    result, timings = None, []
    for i in range(runs):
        if engine.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        res = run_with_progress(engine, request) if i == 0 else engine.run(request)
        if engine.device.startswith("cuda"):
            torch.cuda.synchronize()
        timings.append({"run": i + 1, "s": round(time.perf_counter() - t0, 3), **memory_snapshot(engine.device)})
        result = result or res
    return result, timings


def run(args) -> int:
    from lightdiff.errors import InvalidRequest
    from lightdiff.workflows.engine import Engine

    if args.runs < 1:
        raise InvalidRequest("runs", f"--runs {args.runs} must be at least 1.", "Use --runs 3 to time warm runs.")
    request = request_from_args(args)
    if getattr(args, "context_parallel", None) is not None:
        return run_parallel(args, request)
    if getattr(args, "cp_mode", None):
        raise InvalidRequest("cp_mode", f"--cp-mode {args.cp_mode} is given without --context-parallel.",
                             "Add --context-parallel N (N GPUs for one image), or leave --cp-mode out.")
    engine = Engine(device=args.device, vram_budget_gb=args.vram_budget, ram_budget_gb=args.ram_budget,
                    plan=args.plan, fast=args.fast, allow_unsafe_pickle=args.allow_unsafe_pickle or None)
    engine.parse(request)  # validate before loading anything
    result, timings = _timed_runs(engine, request, args.runs)
    paths = engine.save(result, args.output_dir)
    for w in result.warnings:
        print(f"warning: {w}")
    meta = result.metadata[0]
    if meta.get("synthetic"):
        print(f"note: {meta['model']} ran with {meta['weights']} weights (random values): the images are noise.")
    info = meta.get("plan_info") or {}
    speed = [f"{k} {info[k]}" for k in ("compiled", "cfg") if info.get(k)]
    print(f"{len(paths)} image(s) in {result.timings.get('generate_s', 0):.2f} s on {engine.device}, plan "
          f"{info.get('strategy', '?')}" + (f" ({', '.join(speed)})" if speed else "") + ":")
    for p in paths:
        print(f"  {p}")
    if args.runs > 1 or engine.device.startswith("cuda"):
        for t in timings:
            mem = (f", peak VRAM {t['peak_allocated_gb']:.2f} GiB allocated / {t['peak_reserved_gb']:.2f} GiB reserved"
                   if "peak_allocated_gb" in t else "")
            print(f"run {t['run']}: {t['s']:.3f} s{mem}" + (" (includes warm-up)" if t["run"] == 1 else ""))
    return 0


def run_parallel(args, request: dict) -> int:
    """--context-parallel N: one request over N GPUs (runtime/parallel.py); rank 0 writes the images."""
    from lightdiff.runtime import parallel

    def started(launch):
        print(f"loading {request['model']} on {', '.join(launch.devices())} ({launch.mode}) ...", flush=True)

    out = parallel.generate(request, args.context_parallel, args.cp_mode or "ulysses", device=args.device,
                            out_dir=args.output_dir, runs=args.runs, plan=args.plan, vram_budget_gb=args.vram_budget,
                            allow_unsafe_pickle=args.allow_unsafe_pickle or None, on_start=started)
    for w in out["warnings"]:
        print(f"warning: {w}")
    meta, cp = out["metadata"][0], out["context_parallel"]
    if meta.get("synthetic"):
        print(f"note: {meta['model']} ran with {meta['weights']} weights (random values): the images are noise.")
    print(f"{len(out['paths'])} image(s) split over {'+'.join(cp['devices'])} ({cp['mode']}, {cp['split']} split of "
          f"{cp['tokens']['image']} image tokens; loaded in {out['load_s']:.1f} s):")
    for p in out["paths"]:
        print(f"  {p}")
    for t in out["timings"]:
        mem = f", peak VRAM {t['peak_allocated_gb']:.2f} GiB allocated on rank 0" if "peak_allocated_gb" in t else ""
        print(f"run {t['run']}: {t['s']:.3f} s{mem}" + (" (includes warm-up)" if t["run"] == 1 else ""))
    return 0
