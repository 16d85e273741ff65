"""`lightdiff run`: run a workflow template (JSON), or reproduce an image from its PNG metadata."""

NAME = "run"
HELP = "Run a workflow template (a shipped name or a JSON file), or reproduce an image with --from IMAGE.png."


def add_arguments(p):
    from lightdiff import settings

    p.add_argument("template", nargs="?", help="a shipped template name (see --list) or a path to a JSON request")
    p.add_argument("--from", dest="from_png", metavar="IMAGE.png",
                   help="reproduce this image from the request stored in its PNG metadata")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a request field; the value is read as JSON, else as text "
                        "(--set steps=30 --set prompt=\"a cat\")")
    p.add_argument("--list", action="store_true", help="list the shipped templates")
    p.add_argument("--show", action="store_true", help="print the final request as JSON and exit")
    p.add_argument("-o", "--output-dir", default=settings.get("output_dir"))
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--vram-budget", type=float, help="GB: behave like a card of this size")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="allow .ckpt/.pt/.bin checkpoints (pickle can run code: only for files you trust)")


def request_from_args(args) -> dict:
    from lightdiff import outputs
    from lightdiff.errors import InvalidRequest
    from lightdiff.workflows import _templates

    if args.from_png and args.template:
        raise InvalidRequest("template", f"Both a template ({args.template}) and --from {args.from_png} are given.",
                             "Give one: a template to run, or an image to reproduce.")
    if args.from_png:
        request = outputs.read_metadata(args.from_png).get("request")
        if not isinstance(request, dict):
            raise InvalidRequest("image", f"{args.from_png} has lightdiff metadata but no request in it.",
                                 "Only images written by lightdiff 0.1 or later can be reproduced.")
    elif args.template:
        request, _ = _templates.read(args.template)
    else:
        raise InvalidRequest("template", "No template given.",
                             "Run `lightdiff run TEMPLATE` (see `lightdiff run --list`) or "
                             "`lightdiff run --from IMAGE.png`.")
    return _templates.apply_sets(request, args.set)


def list_templates() -> int:
    from lightdiff.workflows import _templates

    for name in _templates.names():
        _, description = _templates.read(name)
        print(f"{name:<20} {description}")
    return 0


def run(args) -> int:
    import json

    if args.list:
        return list_templates()
    request = request_from_args(args)
    if args.show:
        print(json.dumps(request, indent=2, ensure_ascii=False))
        return 0

    from lightdiff.commands.generate import run_with_progress
    from lightdiff.workflows.engine import Engine

    engine = Engine(device=args.device, vram_budget_gb=args.vram_budget,
                    allow_unsafe_pickle=args.allow_unsafe_pickle or None)
    engine.parse(request)  # validate (images decoded, sizes checked) before loading anything
    result = run_with_progress(engine, request)
    paths = engine.save(result, args.output_dir)
    for w in result.warnings:
        print(f"warning: {w}")
    if result.metadata and result.metadata[0].get("synthetic"):
        meta = result.metadata[0]
        print(f"note: {meta['model']} ran with {meta['weights']} weights (random values): the images are noise.")
    print(f"{len(paths)} image(s) in {result.timings.get('generate_s', 0):.2f} s on {engine.device}:")
    for p in paths:
        print(f"  {p}")
    for m in result.missing:
        print(f"missing: image {m['index']} (seed {m['seed']}): {m['reason']}")
    return 1 if result.missing else 0
