"""`lightdiff batch`: a job file (JSONL or CSV) of requests -> images, resumable, on local devices or Ray."""

NAME = "batch"
HELP = ("Make every image a job file (JSONL/CSV of requests) asks for, into OUTDIR/images/, tracked in "
        "OUTDIR/manifest.sqlite; rerun to resume. --ray runs it on a Ray cluster.")


def add_arguments(p):
    p.add_argument("jobs", nargs="?", help="a .jsonl or .csv file of requests (with --status: the output folder)")
    p.add_argument("-o", "--output-dir", help="where images/ and manifest.sqlite go (a folder or an fsspec URL)")
    p.add_argument("--manifest", help="the manifest file (default OUTDIR/manifest.sqlite; needed for URL outputs)")
    p.add_argument("--status", action="store_true", help="print the manifest's summary and what could not be made")
    p.add_argument("--devices", help="comma-separated, e.g. cuda:0,cuda:1 (default: every visible GPU, else cpu)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a local cluster, or the one at ADDRESS (e.g. auto, ray://host:10001)")
    p.add_argument("--ray-workers", type=int, help="CPU actors to start (default: one actor per GPU of the cluster)")
    p.add_argument("--max-attempts", type=int, default=3, help="tries per image before it is failed (default 3)")
    p.add_argument("--retry-failed", action="store_true", help="give failed images a fresh set of attempts")
    p.add_argument("--limit", type=int, help="make at most N images in this run (rerun to go on)")
    p.add_argument("--lease", type=float, default=600.0,
                   help="seconds a claimed image stays with a worker that stops renewing it (default 600)")
    p.add_argument("--vram-budget", type=float, help="GB per device: behave like a card of this size")
    p.add_argument("--plan", default="auto", help="memory plan for every worker: auto or a plan name")


def _manifest_path(args, out: str) -> str:
    from pathlib import Path

    from lightdiff.errors import InvalidRequest
    from lightdiff.pipeline.store import has_scheme

    if args.manifest:
        return args.manifest
    if has_scheme(out):
        raise InvalidRequest("manifest", f"The output {out} is a URL; the SQLite manifest needs a local file.",
                             "Add --manifest PATH/manifest.sqlite (keep it for reruns).")
    return str(Path(out) / "manifest.sqlite")


def show_status(args) -> int:
    from pathlib import Path

    from lightdiff.errors import InvalidRequest
    from lightdiff.pipeline.manifest import Manifest

    out = args.output_dir or args.jobs
    if not out and not args.manifest:
        raise InvalidRequest("output_dir", "--status needs the output folder.", "Run `lightdiff batch --status OUTDIR`.")
    path = _manifest_path(args, out or "")
    if not Path(path).is_file():
        raise InvalidRequest("manifest", f"There is no manifest at {path}.",
                             "Give the folder a `lightdiff batch JOBS -o OUTDIR` run wrote.")
    manifest = Manifest(path)
    print(manifest.summary())
    line = throughput_line(manifest.throughput())
    if line:
        print(line)
    c = manifest.counts()
    return 0 if c["done"] == sum(c.values()) else 1


def check_args(args) -> None:
    from lightdiff.errors import InvalidRequest

    if not args.jobs:
        raise InvalidRequest("jobs", "No job file given.", "Run `lightdiff batch jobs.jsonl -o OUTDIR`.")
    if not args.output_dir:
        raise InvalidRequest("output_dir", "No output folder given.", "Add -o OUTDIR (a folder or an fsspec URL).")
    for name in ("max_attempts", "limit", "ray_workers"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise InvalidRequest(name, f"--{name.replace('_', '-')} {value} must be at least 1.",
                                 f"Use --{name.replace('_', '-')} 1 or more.")
    if args.lease <= 0:
        raise InvalidRequest("lease", f"--lease {args.lease} must be positive.", "Use e.g. --lease 600.")
    if args.ray is None and args.ray_workers:
        raise InvalidRequest("ray_workers", "--ray-workers is given without --ray.", "Add --ray, or use --devices.")


def throughput_line(t: dict) -> str:
    """How fast the images came: over the whole run (loads included) and in steady state."""
    if not t["images"]:
        return ""
    parts = []
    if t["images_per_s"] is not None:
        parts.append(f"{t['images']} images in {t['wall_s']:.1f} s: {t['images_per_s']:.3f} img/s with model loads")
    if t["steady_images_per_s"] is not None:
        parts.append(f"steady state {t['steady_images_per_s']:.3f} img/s over {t['workers']} worker(s) "
                     f"(after each worker's first image)")
    return "throughput: " + "; ".join(parts) if parts else ""


def run(args, on_image=None) -> int:
    if args.status:
        return show_status(args)
    check_args(args)
    import time

    from tqdm import tqdm

    from lightdiff.pipeline import jobs as jobfile
    from lightdiff.pipeline.manifest import Manifest
    from lightdiff.pipeline.store import Store

    if args.ray is not None:
        from lightdiff.pipeline.ray_runner import import_ray

        import_ray()  # say Ray is missing before validating thousands of lines
    images = jobfile.expand_file(args.jobs)  # every line validated before anything runs
    store = Store(args.output_dir)
    manifest = Manifest(_manifest_path(args, args.output_dir))
    new = manifest.add(images)
    unique = len({j.key for j in images})
    reset = manifest.prepare_rerun(store.exists, args.max_attempts, args.retry_failed)
    c = manifest.counts()
    todo = c["pending"] + c["running"]
    print(f"{len(images)} images asked for ({unique} distinct, {new} new); {c['done']} already done, "
          f"{todo} to make" + (f", {reset['missing_files']} whose file was missing" if reset["missing_files"] else "")
          + (f" (at most {args.limit} this run)" if args.limit else "") + ".", flush=True)
    engine_kwargs = {"vram_budget_gb": args.vram_budget, "plan": args.plan}
    started = time.time()
    total = min(todo, args.limit) if args.limit else todo
    with tqdm(total=total, desc="images", unit="img", disable=total == 0) as bar:
        if args.ray is not None:
            from lightdiff.pipeline.ray_runner import run_ray

            run_ray(manifest, store, address=args.ray or None, workers=args.ray_workers, engine_kwargs=engine_kwargs,
                    max_attempts=args.max_attempts, lease_s=args.lease, limit=args.limit, bar=bar, on_image=on_image)
        else:
            from lightdiff.pipeline.local import default_devices, run_local

            devices = [d.strip() for d in args.devices.split(",") if d.strip()] if args.devices else default_devices()
            run_local(manifest, store, devices, engine_kwargs, args.max_attempts, args.lease, args.limit, bar)
    print(manifest.summary())
    line = throughput_line(manifest.throughput(since=started))
    if line:
        print(line)
    c = manifest.counts()
    return 0 if c["done"] == sum(c.values()) else 1
