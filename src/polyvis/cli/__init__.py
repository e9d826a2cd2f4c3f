"""The `polyvis` command.

Each module in this package that defines `register(subparsers)` adds its sub-commands, so a new
command is one new file. Heavy imports (torch, transformers) happen inside the command functions,
which keeps `polyvis --help` fast.

transformers' own tqdm bars ("Loading weights", "Writing model shards") are off while a command
runs, unless `polyvis --verbose`; polyvis's own progress bars are not affected.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import sys
import warnings
from collections.abc import Iterator
from types import ModuleType

from polyvis import __version__
from polyvis.errors import PolyVisError
from polyvis.malloc import keep_freed_memory


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="polyvis", description="Vision-language models with several visual encoders."
    )
    parser.add_argument("--version", action="version", version=f"polyvis {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show transformers' progress bars (Loading weights, Writing model shards)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


# huggingface_hub reads this when it is first imported, and transformers' bars start from it; set
# before any command imports them, it costs no import here and reaches worker subprocesses too.
_HF_BARS_ENV = "HF_HUB_DISABLE_PROGRESS_BARS"


def _set_hf_bars(hf_logging: ModuleType, enabled: bool) -> None:
    with warnings.catch_warnings():  # huggingface_hub warns when its env var forbids enabling
        warnings.simplefilter("ignore")
        (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()


@contextlib.contextmanager
def transformers_progress_bars(enabled: bool) -> Iterator[None]:
    """transformers' tqdm bars on or off for a block (one command), restored after it."""
    old_env = os.environ.get(_HF_BARS_ENV)
    os.environ[_HF_BARS_ENV] = "0" if enabled else "1"
    before = None
    if "huggingface_hub" in sys.modules:  # imported already (an in-process caller): switch now
        from transformers.utils import logging as hf_logging

        before = hf_logging.is_progress_bar_enabled()
        _set_hf_bars(hf_logging, enabled)
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(_HF_BARS_ENV, None)
        else:
            os.environ[_HF_BARS_ENV] = old_env
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:  # back to the state before, or the default of the old env
            default = (old_env or "").upper() not in {"1", "ON", "YES", "TRUE"}
            _set_hf_bars(hf_logging, default if before is None else before)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with transformers_progress_bars(args.verbose):
            return int(args.func(args) or 0)
    except PolyVisError as err:
        # Expected failures (bad config, bad data) are one line, not a traceback.
        print(f"polyvis: error: {err}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError) as err:
        # a path given on the command line that is the wrong kind of thing (an --out that is a
        # file, an unwritable folder): the OS says which and why, in one line
        print(f"polyvis: error: {err.filename}: {err.strerror}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("polyvis: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `polyvis` command and `python -m polyvis`: `main` in a process of polyvis's own, which
    keeps freed memory (polyvis.malloc). Calling `main` from Python leaves the allocator alone."""
    keep_freed_memory()
    sys.exit(main())


if __name__ == "__main__":
    entry()
