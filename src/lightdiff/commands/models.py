"""`lightdiff models`: the registry as a table."""

NAME = "models"
HELP = "List known models (built-in and your own), their defaults and sizes."


def add_arguments(p):
    p.add_argument("--models-file", help="an extra TOML/YAML file of your own model entries")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args) -> int:
    import json

    from lightdiff import specs

    if args.models_file:
        specs.reload_user_models(args.models_file)
    rows = []
    for s in specs.all_specs():
        rows.append({
            "id": s.id, "family": s.family, "params_B": round(s.params_M() / 1000, 2),
            "default_size": f"{s.defaults.width}x{s.defaults.height}", "steps": s.defaults.steps,
            "guidance": s.defaults.guidance, "source": s.hub_repo or s.source,
            "twin": s.twin or ("(is a twin)" if s.is_twin else ""), "description": s.description,
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    cols = ["id", "family", "params_B", "default_size", "steps", "guidance", "source", "twin"]
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
    print("  ".join(c.ljust(widths[c]) for c in cols))
    for r in rows:
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols))
    return 0
