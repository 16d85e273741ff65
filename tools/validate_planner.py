"""Check the memory planner against a real GPU: predicted vs measured peak VRAM and seconds per image.

For each model and VRAM budget, a fresh subprocess builds the model with synthetic (random,
real-size) weights, lets lightdiff's Engine choose and apply the plan for the budget (the CUDA
allocator capped at the budget), and runs each size largest first: a 2-step warm-up (which loads
the model and encodes the prompts), then ``--runs`` timed 20-step runs. One JSONL row per
(model, budget, size) with the plan, its prediction, the measured peak (max_memory_allocated over
the warm-up and the timed runs), the median seconds per image, the fallbacks used, and the status
(ok, does_not_fit, oom, error, timeout). A summary table and the budget bars follow.

  python tools/validate_planner.py --out planner.jsonl                  # on a CUDA machine, ~8 min on an H100
  python tools/validate_planner.py --tiny --out /tmp/planner-tiny.jsonl # the same code path on CPU, tiny twins

Does one engine keep its model (and its compiled, graphed blocks) when the size changes? ``--in-order --sizes
1024 768 512 1024 --fail-on-reload`` runs the sizes in the order given and makes a reload fail the size
at once instead of rebuilding the weights (H100, 2026-11-27: a 768 request after a 1024 one under 24 GB
reloaded qwen-image-2512, fixed in ``plan.plan_key``).

Synthetic weights are built on the GPU before the cap is set (seconds, where building 20 B random
parameters on the CPU takes minutes), then moved to host RAM, which is where lightdiff loads weights
for every plan but resident; the Engine then places them as its plan says.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
BUDGETS = {"sd15": [80, 24, 16, 12, 8, 4], "qwen-image-2512": [80, 24, 16, 12]}
TWINS = {"sd15": "tiny-sd15", "qwen-image-2512": "tiny-qwen-image"}
# seconds per child; sd15: a cold compile of the step and the decoder; qwen: a 60 s build, compiles for 3 sizes
TIMEOUT_S = {"sd15": 240, "qwen-image-2512": 480}


def child(args) -> None:
    import psutil
    import torch

    from lightdiff.errors import LightdiffError
    from lightdiff.runtime import loader
    from lightdiff.runtime.device import GiB
    from lightdiff.runtime.fastpath import compile_stats
    from lightdiff.workflows.engine import Engine

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    model = TWINS[args.model] if args.tiny else args.model
    weights = "twin" if args.tiny else "synthetic"
    t0 = time.perf_counter()
    prebuilt = [loader.load(model, weights, device=device)]  # fast on the GPU, before any cap
    if cuda:
        prebuilt[0].pipe.to("cpu")
        prebuilt[0].device = "cpu"
        torch.cuda.empty_cache()
    build_s = time.perf_counter() - t0

    def load_once(spec, weights_, device="cpu", dtype=None, allow_unsafe_pickle=None):
        if prebuilt:  # the first load takes the prebuilt model; a reload after a fallback builds anew
            loaded = prebuilt.pop()
            if device != "cpu":
                loaded.pipe.to(device)
                loaded.device = device
            return loaded
        if args.fail_on_reload:
            raise RuntimeError(f"the engine asked to reload {spec.id} (a fallback plan or a placement change)")
        # a reload (a fallback plan, or a placement the pool did not match) rebuilds the synthetic weights; for
        # a 20B model on the CPU that takes minutes, so say so where a timed-out case's log will show it
        print(f"reloading {spec.id} on {device} (a new placement); rebuilding synthetic weights", file=sys.stderr,
              flush=True)
        return loader.load(spec, weights_, device=device, dtype=dtype)

    if args.no_sd15_prepare:  # the baseline of that step: the graph loop on the pipeline as loaded
        from lightdiff.runtime import fastpath

        fastpath.prepare_sd15_modules = lambda pipe, **_: None
    engine = Engine(device=device, vram_budget_gb=args.budget, fast=args.fast, cuda_graph_blocks=args.cuda_graph_blocks,
                    precompiled=args.precompiled, ram_budget_gb=args.ram_budget)
    engine.pool.load_fn = load_once
    first_size = True
    for size in args.sizes if args.in_order else sorted(args.sizes, reverse=True):
        row = {"model": args.model, "run_as": model, "weights": weights, "device": device,
               "gpu": torch.cuda.get_device_name(0) if cuda else None, "budget_gb": args.budget,
               "ram_budget_gb": args.ram_budget, "size": size,
               "steps": args.steps, "build_s": round(build_s, 2), "fast": args.fast,
               "precompiled": args.precompiled, **({"sd15_prepare": False} if args.no_sd15_prepare else {})}
        request = {"model": model, "weights": weights, "prompt": PROMPT, "width": size, "height": size,
                   "steps": args.steps, "seed": 7}
        try:
            plan, warnings = engine.plan_for(request)
            row.update(plan=plan.name, predicted=plan.estimate.to_dict(), warnings=warnings)
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            warm = profiled(args.profile_warmup if first_size else None, engine.run, {**request, "steps": 2})
            # ^ loads the model (first size) and encodes the prompts
            # a new size compiles and records its graphs here: an out-of-memory fallback shows up here first
            row.update(warmup_s=round(time.perf_counter() - t0, 2),
                       warmup_fallbacks=warm.metadata[0].get("fallbacks", []))
            times, result = [], None
            for _ in range(args.runs):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                result = engine.run(request)
                if cuda:
                    torch.cuda.synchronize()
                times.append(round(time.perf_counter() - t0, 3))
            if args.profile_run:  # one more run, untimed: where the host's share of a warm image goes
                profiled(args.profile_run, engine.run, request)
                if cuda:
                    torch.cuda.synchronize()
            loaded = engine.pool.peek(model, weights)
            row.update(status="ok", plan=loaded.plan, sec_per_image=statistics.median(times), times=times,
                       fallbacks=result.metadata[0].get("fallbacks", []), load_s=round(loaded.load_s, 2),
                       warmup_precompiled=warm.metadata[0].get("precompiled"),
                       plan_info=loaded.plan_info, compile_stats=compile_stats())
            # host RAM the process holds now (the planner predicts the loaded model's share: host_ram_gb)
            row["host_rss_gb"] = round(psutil.Process().memory_info().rss / GiB, 2)
            if first_size:  # the warm start: from the weights placed (and quantized) to the first image done
                row["ready_after_load_s"] = round(row["warmup_s"] - loaded.load_s, 2)
            if cuda:
                row["measured_peak_gb"] = round(torch.cuda.max_memory_allocated() / GiB, 3)
                row["measured_reserved_gb"] = round(torch.cuda.max_memory_reserved() / GiB, 3)
                row["encode_prompt_s"] = encode_seconds(loaded.pipe, device)  # what a new prompt adds
        except LightdiffError as e:
            row.update(status={"does_not_fit": "does_not_fit", "out_of_memory": "oom"}.get(e.code, "error"),
                       error=e.to_dict())
        except Exception as e:  # recorded as data: the next size still runs
            import traceback

            row.update(status="error", error=f"{type(e).__name__}: {e}"[:500],
                       traceback=traceback.format_exc(limit=-8)[-3000:])  # where: an assert carries no message
        first_size = False
        print("ROW " + json.dumps(row, default=str), flush=True)


def profiled(path, fn, *args):
    """``fn(*args)``; with a ``path``, under cProfile, its 100 costliest calls by cumulative time and 40 by own time
    appended there (where a warm start's seconds go besides compiling)."""
    if path is None:
        return fn(*args)
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    try:
        return prof.runcall(fn, *args)
    finally:
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("cumulative").print_stats(100)
        stats.sort_stats("tottime").print_stats(40)
        with open(path, "a") as f:
            f.write(text.getvalue())


def encode_seconds(pipe, device: str, runs: int = 3) -> float | None:
    """Median seconds to encode a new prompt as the plan placed the text encoder (what a request with a prompt
    not in the engine's prompt cache adds; the timed runs repeat one prompt, so they hit that cache); None for
    a pipeline whose encode_prompt takes more than (prompt, device) (SD1.5's)."""
    import inspect

    import torch

    if "do_classifier_free_guidance" in inspect.signature(type(pipe).encode_prompt).parameters:
        return None
    secs = []
    for i in range(runs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():
            pipe.encode_prompt(f"{PROMPT}, variation {i}", device=device)
        torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
    return round(statistics.median(secs), 3)


def parent(args) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows, t_start = [], time.perf_counter()
    for model in args.models:
        budgets = args.budgets or BUDGETS[model]
        for budget in budgets:
            cmd = [sys.executable, __file__, "--child", "--model", model, "--budget", str(budget),
                   "--sizes", *map(str, args.sizes), "--steps", str(args.steps), "--runs", str(args.runs),
                   "--fast", args.fast]
            if args.tiny:
                cmd.append("--tiny")
            if not args.cuda_graph_blocks:
                cmd.append("--no-cuda-graph-blocks")
            if not args.precompiled:
                cmd.append("--no-precompiled")
            if args.profile_warmup:
                cmd += ["--profile-warmup", args.profile_warmup]
            if args.profile_run:
                cmd += ["--profile-run", args.profile_run]
            if args.ram_budget:
                cmd += ["--ram-budget", str(args.ram_budget)]
            cmd += [flag for flag, on in (("--in-order", args.in_order), ("--fail-on-reload", args.fail_on_reload),
                                          ("--no-sd15-prepare", args.no_sd15_prepare)) if on]
            t0 = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S[model])
                got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
                if proc.returncode != 0 or not got:
                    got.append({"model": model, "budget_gb": budget, "status": "error",
                                "error": (proc.stderr or "")[-1500:]})
            except subprocess.TimeoutExpired as e:
                got = [json.loads(line[4:]) for line in (e.stdout or b"").decode().splitlines()
                       if line.startswith("ROW ")]
                err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
                got.append({"model": model, "budget_gb": budget, "status": "timeout",
                            "error": f"case took over {TIMEOUT_S[model]} s", "stderr_tail": err[-1500:]})
            print(f"{model} @ {budget} GB: {len(got)} rows in {time.perf_counter() - t0:.0f} s", flush=True)
            rows.extend(got)
            with out.open("w") as f:
                for row in rows:
                    f.write(json.dumps(row, default=str) + "\n")
    print(f"total {time.perf_counter() - t_start:.0f} s; rows in {out}")
    summary(rows)
    return 0


def summary(rows: list[dict]) -> None:
    base = {(r["model"], r.get("size")): r["sec_per_image"] for r in rows
            if r.get("status") == "ok" and r.get("budget_gb") == 80}
    print(f"{'model':16} {'GB':>4} {'size':>5} {'plan':18} {'pred GB':>8} {'meas GB':>8} {'err':>6} "
          f"{'pred s':>7} {'meas s':>7} {'x80GB':>6} {'ready s':>7} status")
    for r in rows:
        pred = r.get("predicted", {})
        meas = r.get("measured_peak_gb")
        err = (f"{(pred['peak_vram_gb'] - meas) / meas:+.0%}" if meas and pred else "")
        ratio = (f"{r['sec_per_image'] / base[(r['model'], r.get('size'))]:.2f}"
                 if r.get("sec_per_image") and (r["model"], r.get("size")) in base else "")
        print(f"{r['model']:16} {r.get('budget_gb', ''):>4} {r.get('size', ''):>5} {r.get('plan', ''):18} "
              f"{pred.get('peak_vram_gb', ''):>8} {meas or '':>8} {err:>6} {pred.get('sec_per_image', ''):>7} "
              f"{r.get('sec_per_image', ''):>7} {ratio:>6} {r.get('ready_after_load_s', ''):>7} {r.get('status')} "
              f"{r.get('fallbacks') or ''}")
    bars = [("qwen-image-2512", 1024, 24, 1.2), ("qwen-image-2512", 1024, 12, None),
            ("sd15", 512, 8, 1.1), ("sd15", 512, 4, 1.1)]
    for model, size, budget, limit in bars:
        row = next((r for r in rows if r["model"] == model and r.get("size") == size
                    and r.get("budget_gb") == budget), None)
        if row is None or row.get("status") != "ok" or (model, size) not in base:
            why = "not run" if row is None else (f"status {row.get('status')}" if row.get("status") != "ok"
                                                 else "no 80 GB row of this size to compare with")
            print(f"bar {model} {size} @ {budget} GB: no ratio ({why})")
            continue
        ratio = row["sec_per_image"] / base[(model, size)]
        verdict = "" if limit is None else (" PASS" if ratio <= limit else f" FAIL (bar {limit}x)")
        print(f"bar {model} {size} @ {budget} GB: {ratio:.2f}x the 80 GB time{verdict}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny twins on CPU: checks the script, not the GPU")
    p.add_argument("--out", default="planner-validation.jsonl")
    p.add_argument("--models", nargs="+", default=list(BUDGETS))
    p.add_argument("--budgets", nargs="+", type=float, help="override the per-model budgets (GB)")
    p.add_argument("--sizes", nargs="+", type=int, default=[512, 768, 1024])
    p.add_argument("--ram-budget", type=float, metavar="GB",
                   help="plan as if the host had this much RAM (a streamed text encoder that does not fit is paged)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--fast", choices=["auto", "off"], default="auto",
                   help="the engine's speed path (off: no compile, no batched CFG, no fp8 compute)")
    p.add_argument("--cuda-graph-blocks", action=argparse.BooleanOptionalAction, default=True,
                   help="with --fast auto: the engine's compiled transformer blocks also replay as CUDA graphs "
                        "(default, as the engine; --no-cuda-graph-blocks measures without)")
    p.add_argument("--precompiled", action=argparse.BooleanOptionalAction, default=True,
                   help="SD1.5's loop and Qwen-Image's blocks from precompiled artifacts (the engine's default); --no-precompiled: "
                        "torch.compile's CUDA-graph loop, traced in every process")
    p.add_argument("--profile-warmup", metavar="PATH",
                   help="append a cProfile table (40 costliest calls) of each process's first warm-up to PATH")
    p.add_argument("--profile-run", metavar="PATH",
                   help="after each size's timed runs, one more run under cProfile, its table appended to PATH "
                        "(the host's share of a warm image: time waiting on the GPU shows in the copy back)")
    p.add_argument("--no-sd15-prepare", action="store_true",
                   help="SD1.5's graph loop without its channels_last UNet and compiled VAE decoder "
                        "(fastpath.prepare_sd15_modules): that step's baseline")
    p.add_argument("--in-order", action="store_true",
                   help="run the sizes in the order given (default: sorted, largest first)")
    p.add_argument("--fail-on-reload", action="store_true",
                   help="a reload of the model fails the size at once instead of rebuilding the weights")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
