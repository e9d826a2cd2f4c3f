"""The `polyvis` command.

Each module in this package that defines `register(subparsers)` adds its sub-commands, so a new
command is one new file. Heavy imports (torch, transformers) happen inside the command functions,
which keeps `polyvis --help` fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from polyvis import __version__
from polyvis.errors import PolyVisError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyvis", description="Vision-language models with several visual encoders."
    )
    parser.add_argument("--version", action="version", version=f"polyvis {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except PolyVisError as err:
        # Expected failures (bad config, bad data) are one line, not a traceback.
        print(f"polyvis: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyvis: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
