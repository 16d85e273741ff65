"""`lightdiff bench`: measure models on this machine, one JSONL row per case (docs/bench-rows.md)."""

NAME = "bench"
HELP = "Benchmark models: startup, seconds per image, VRAM, batch stability, OOM boundary, FLOPs (JSONL rows)."

PREDICTION_CARDS = ("RTX 4090D", "RTX 3090", "RTX A6000")


def _ints(text: str) -> list[int]:
    from lightdiff.errors import InvalidRequest

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidRequest("sizes", f"{text!r} is not a comma-separated list of whole numbers.",
                             "Write it like 512,768,1024.") from None


def add_arguments(p):
    p.add_argument("--models", default="sd15", help="comma-separated model ids (see `lightdiff models`)")
    p.add_argument("--sizes", default="512", help="square sizes, e.g. 512,768,1024 (each at batch 1)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batches", default="1", help="batch sizes measured at the first size, e.g. 1,2,4")
    p.add_argument("--full-batch-grid", action="store_true", help="measure every batch size at every size")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's (CFG 7 sd15, true CFG 4 Qwen)")
    p.add_argument("--vram-budget", default=None,
                   help="GB the allocator may use (behave like a smaller card); a list runs each: none,24")
    p.add_argument("--weights", default="synthetic-disk",
                   help="synthetic-disk (default: random real-size weights saved once as safetensors and loaded "
                        "from disk, so loading is timed), synthetic (built on the device, no disk read), twin, "
                        "twin-disk, auto, hub, hub:org/name, a diffusers folder or a .safetensors file")
    p.add_argument("--baseline", action="store_true",
                   help="also run every case with plain diffusers (pipeline.to(device), no planner): ratios")
    p.add_argument("--batch-test", nargs="?", const="10x2", default=None, metavar="NxB",
                   help="N images at batch size B with OOM back-off (default 10x2)")
    p.add_argument("--boundary", action="store_true",
                   help="search the largest batch (at the first size) and the largest size (at batch 1) that fit")
    p.add_argument("--workflows", default="", help="also measure workflows, e.g. controlnet,hires_fix")
    p.add_argument("--runs", type=int, default=3, help="warm runs after the first call (median, min, max)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds a case may go without a result")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--plan", default=None, help="force a memory plan for the lightdiff variant (default: planner)")
    p.add_argument("--fast", choices=["off", "eager", "auto"], default="off",
                   help="lightdiff's speed path, as the engine applies it (auto: compiled and CUDA graphs on CUDA; "
                        "compile time lands in first_s). Off by default: the checked-in rows measure the memory "
                        "plan alone, and the speed path is measured by tools/speed_bench.py")
    p.add_argument("--step-cache", choices=["fbc", "taylorseer"], default=None,
                   help="lightdiff rows with diffusers' step cache (transformer models): it changes the image, "
                        "and a speed-up on synthetic weights is no evidence of its quality; rows and report say so")
    p.add_argument("--isolate", action="store_true",
                   help="one fresh process per case (default: one per model, variant and budget; the first case "
                        "of each process carries the cold start)")
    p.add_argument("--prompt", default=None, help="the prompt of every speed case")
    p.add_argument("--no-flops", action="store_true", help="skip FLOP counting (achieved TFLOP/s stays empty)")
    p.add_argument("--no-predictions", action="store_true",
                   help=f"skip planner predictions for cards not measured ({', '.join(PREDICTION_CARDS)})")
    p.add_argument("--disk-read-gb", type=float, default=2.0, help="size of the file read to measure the disk")
    p.add_argument("--logs", default=None, help="folder for case logs (default: <output>.logs/)")
    p.add_argument("-o", "--output", default="results.jsonl", help="JSONL file; rows are appended")
    p.add_argument("--dry-run", action="store_true", help="print the cases and exit")


def grid_from_args(args):
    from lightdiff.bench.cases import DEFAULT_PROMPT, Grid, parse_batch_test, parse_budgets

    return Grid(
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        sizes=_ints(args.sizes), steps=args.steps, batches=_ints(args.batches),
        budgets=parse_budgets(args.vram_budget), weights=args.weights, device=args.device, runs=args.runs,
        baseline=args.baseline, batch_test=parse_batch_test(args.batch_test) if args.batch_test else None,
        boundary=args.boundary, workflows=[w.strip() for w in args.workflows.split(",") if w.strip()],
        full_batch_grid=args.full_batch_grid, isolate=args.isolate,
        plan=None if args.plan in (None, "auto") else args.plan, guidance=args.guidance,
        prompt=args.prompt or DEFAULT_PROMPT, fast=args.fast, step_cache=args.step_cache,
    )


def run(args) -> int:
    from pathlib import Path

    from lightdiff.bench import planner
    from lightdiff.bench.cases import build_groups
    from lightdiff.bench.runner import Runner, RunOptions

    grid = grid_from_args(args)
    groups = build_groups(grid)
    # the planner picks each lightdiff case's plan here, before any process starts (torch-free)
    groups, refused = planner.assign_plans(groups, planner.Hardware.detect(args.device))
    n_items = sum(len(g.items) for g in groups) + len(refused)
    print(f"{n_items} case(s) in {len(groups)} process group(s) -> {args.output}")
    if args.dry_run:
        for g in groups:
            print(f"  {g.label()}{' plan ' + g.plan if g.plan else ''}: " + ", ".join(it.label() for it in g.items))
        for r in refused:
            print(f"  {r.group.label()}: {r.item.label()} refused ({r.reason[:120]})")
        return 0
    out = Path(args.output)
    opts = RunOptions(out=out, timeout_s=args.timeout, logs_dir=Path(args.logs) if args.logs else None,
                      count_flops=not args.no_flops, disk_read_gb=args.disk_read_gb)
    runner = Runner(opts)
    summary = runner.run(groups, refused)
    if not args.no_predictions:
        from lightdiff.bench.rows import light_env

        env = light_env()
        for row in planner.prediction_rows(grid, PREDICTION_CARDS, env):
            runner.writer.write(row)
            summary.rows.append(row)
    counts = ", ".join(f"{summary.count(s)} {s}" for s in ("ok", "oom", "error", "timeout") if summary.count(s))
    print(f"{len(summary.rows)} row(s) appended to {out} in {summary.seconds:.0f} s ({counts or 'none'}); "
          f"case logs in {runner.logs_dir}")
    return 0
