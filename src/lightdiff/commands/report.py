"""`lightdiff report`: benchmark JSONL files in, report.md and a self-contained report.html out."""

NAME = "report"
HELP = "Write a Markdown and self-contained HTML report (tables, charts, claims vs measurement) from bench JSONL."


def add_arguments(p):
    p.add_argument("results", nargs="+", metavar="RESULTS.jsonl", help="benchmark rows from `lightdiff bench`")
    p.add_argument("-o", "--output", default="report", metavar="DIR",
                   help="folder for report.md, report.html and the chart PNGs (default: report/)")
    p.add_argument("--claims", metavar="FILE",
                   help="claims JSON to judge (default: the article's figures shipped with lightdiff)")
    p.add_argument("--no-charts", action="store_true", help="skip the charts (no matplotlib needed)")


def run(args) -> int:
    from lightdiff.reports.render import render_report

    written = render_report(args.results, args.output, claims_path=args.claims, charts=not args.no_charts)
    print(f"wrote {written.markdown}")
    print(f"wrote {written.html}")
    for p in written.charts:
        print(f"wrote {p}")
    return 0
