"""`lightdiff eval`: generate a quality-evaluation set (resumable), or write its report (--report)."""

NAME = "eval"
HELP = ("Generate every prompt x seed x model of a suite for blind rating and statistics "
        "(resumes where it stopped); with --report FOLDER, write the quality report.")


def add_arguments(p):
    p.add_argument("--models", help="comma-separated model ids, e.g. sd15,qwen-image-2512")
    p.add_argument("--suite", default="article5", help="suite name or JSON path (default %(default)s)")
    p.add_argument("--seeds", type=int, default=4, help="seeds 0..N-1 per prompt (default %(default)s)")
    p.add_argument("--lang", default="en", choices=["en", "zh", "both"], help="prompt language(s)")
    p.add_argument("--identical", default="",
                   help="settings fixed for every model, e.g. steps=20,guidance=7 (default: each model's own)")
    p.add_argument("--weights", default="auto", help="auto, twin, synthetic, hub, ... (as for generate)")
    p.add_argument("--limit", type=int, help="only the first N prompts (quick runs)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--vram-budget", type=float, help="GB: behave like a card of this size")
    p.add_argument("--clip", help="folder of a transformers CLIP model: adds clip_score to every image")
    p.add_argument("--pickscore", help="folder of the PickScore CLIP model")
    p.add_argument("--imagereward", help="ImageReward.pt checkpoint (needs the image-reward package)")
    p.add_argument("--hps", help="HPS v2 checkpoint (reported as skipped: not wired up yet)")
    p.add_argument("--report", metavar="EVALRUN", help="write the report of this eval folder instead of generating")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap resamples for the report's intervals")
    p.add_argument("-o", "--output-dir", required=True, help="the eval folder (or the report folder with --report)")


def _config(args):
    from lightdiff.errors import InvalidRequest
    from lightdiff.evals.run import EvalConfig, parse_identical, parse_languages
    from lightdiff.evals.suites import load_suite

    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    if not models:
        raise InvalidRequest("models", "no models given.", "Pass --models sd15,qwen-image-2512.")
    if len(set(models)) != len(models):
        raise InvalidRequest("models", f"--models {args.models} names a model twice.", "List each model once.")
    if args.seeds < 1:
        raise InvalidRequest("seeds", f"--seeds {args.seeds} must be at least 1.", "Use --seeds 4.")
    if args.limit is not None and args.limit < 1:
        raise InvalidRequest("limit", f"--limit {args.limit} must be at least 1.", "Use --limit 2 or leave it out.")
    return EvalConfig(models=models, suite=load_suite(args.suite), seeds=list(range(args.seeds)),
                      languages=parse_languages(args.lang), identical=parse_identical(args.identical),
                      weights=args.weights, limit=args.limit)


def run(args) -> int:
    if args.report:
        from lightdiff.evals.report import render_eval_report

        written = render_eval_report(args.report, args.output_dir, n_boot=args.boot, n_resamples=args.boot)
        print(f"wrote {written.markdown} and {written.html}")
        return 0

    from lightdiff.evals.learned import score_run, scorers
    from lightdiff.evals.run import run_eval
    from lightdiff.workflows.engine import Engine

    config = _config(args)
    found, status = scorers(args.clip, args.pickscore, args.imagereward, args.hps, device="cpu")
    engine = Engine(device=args.device, vram_budget_gb=args.vram_budget)
    summary = run_eval(config, args.output_dir, engine=engine, progress=lambda line: print(line, flush=True))
    print(f"{summary.generated} image(s) made, {summary.skipped} already there; "
          f"{len(summary.sheets)} contact sheet(s) in {args.output_dir}/sheets")
    score_run(args.output_dir, found, status)
    for name, state in status.items():
        print(f"  {name}: {state}")
    print(f"next: `lightdiff rate {args.output_dir}`, then `lightdiff eval --report {args.output_dir} -o REPORT`")
    return 0
