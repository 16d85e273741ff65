"""`lightdiff rate`: serve the blind rating page for an eval folder."""

NAME = "rate"
HELP = "Serve a blind rating page (pairwise or 1-10 scores) for an eval folder; ratings go to ratings.sqlite."


def add_arguments(p):
    p.add_argument("run_dir", help="the eval folder written by `lightdiff eval`")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default %(default)s: this machine only)")
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--repeat-every", type=int, default=10,
                   help="show an already judged pair again every N tasks, to measure consistency (default 10)")
    p.add_argument("--export", metavar="JSONL", help="write the ratings collected so far to a JSONL file and exit")


def run(args) -> int:
    from pathlib import Path

    if args.export:
        from lightdiff.evals.run import load_manifest
        from lightdiff.evals.store import RatingStore

        load_manifest(args.run_dir)  # a clear error for a folder that is not an eval folder
        print(f"wrote {RatingStore(Path(args.run_dir) / 'ratings.sqlite').export(args.export)}")
        return 0

    import uvicorn

    from lightdiff.evals.rate_app import create_rate_app

    app = create_rate_app(args.run_dir, repeat_every=args.repeat_every)
    print(f"rating page: http://{args.host}:{args.port}/  (Ctrl-C to stop)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
