"""The `lightdiff` command: parse arguments, call the library, print short errors."""

from __future__ import annotations

import argparse
import os
import sys

from lightdiff import __version__
from lightdiff.errors import LightdiffError


def build_parser() -> argparse.ArgumentParser:
    from lightdiff.commands import command_modules

    parser = argparse.ArgumentParser(
        prog="lightdiff",
        description="Run, serve, benchmark and compare text-to-image models under a VRAM budget.",
    )
    parser.add_argument("--version", action="version", version=f"lightdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # transformers warns at import about optional image backends we never use; keep the CLI readable.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except LightdiffError as e:
        print(f"error [{e.code}]: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
